#include "model/expand.h"

#include <cstring>
#include <string>
#include <vector>

#include "base/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/lineage.h"
#include "model/llama.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ScratchDir;

// --- Planning --------------------------------------------------------------------

TEST(PlanTest, InterleavedAddsACopyOfEachGroupsTopBlockAfterIt) {
  // The paper: LLaMA-2-7B, 32 blocks, 8 groups -> 40 blocks.
  auto plan = PlanExpansion(32, {.layout = ExpansionLayout::kInterleaved, .add_blocks = 8});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->target_layers(), 40);
  EXPECT_EQ(plan->groups, 8);
  EXPECT_THAT(plan->new_blocks, ElementsAre(4, 9, 14, 19, 24, 29, 34, 39));
  EXPECT_THAT(plan->copied_from, ElementsAre(3, 7, 11, 15, 19, 23, 27, 31));
  EXPECT_EQ(plan->source_of[5], 4);
}

TEST(PlanTest, InterleavedWithSeveralBlocksPerGroup) {
  auto plan = PlanExpansion(4, {.add_blocks = 4, .groups = 2});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->source_of, ElementsAre(0, 1, 1, 1, 2, 3, 3, 3));
  EXPECT_THAT(plan->new_blocks, ElementsAre(2, 3, 6, 7));
}

TEST(PlanTest, TopBottomAndPositionsLayouts) {
  auto top = PlanExpansion(3, {.layout = ExpansionLayout::kTop, .add_blocks = 2});
  ASSERT_TRUE(top.ok());
  EXPECT_THAT(top->source_of, ElementsAre(0, 1, 2, 2, 2));
  EXPECT_THAT(top->new_blocks, ElementsAre(3, 4));
  auto bottom = PlanExpansion(3, {.layout = ExpansionLayout::kBottom, .add_blocks = 1});
  ASSERT_TRUE(bottom.ok());
  EXPECT_THAT(bottom->source_of, ElementsAre(0, 0, 1, 2));
  EXPECT_THAT(bottom->new_blocks, ElementsAre(0));
  auto positions =
      PlanExpansion(4, {.layout = ExpansionLayout::kPositions, .positions = {2, 0, 2}});
  ASSERT_TRUE(positions.ok());
  EXPECT_THAT(positions->source_of, ElementsAre(0, 0, 1, 2, 2, 2, 3));
  EXPECT_THAT(positions->new_blocks, ElementsAre(1, 4, 5));
}

TEST(PlanTest, UnevenSplitsAreRefusedListingTheValidChoices) {
  auto plan = PlanExpansion(32, {.add_blocks = 5});
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()),
              HasSubstr("cannot split 32 blocks into 5 equal groups; valid group counts "
                        "(--add-blocks) for 32 blocks: 1, 2, 4, 8, 16, 32"));
  EXPECT_THAT(std::string(PlanExpansion(12, {.groups = 5}).status().message()),
              HasSubstr("(--groups) for 12 blocks: 1, 2, 3, 4, 6, 12"));
  EXPECT_THAT(std::string(PlanExpansion(8, {.add_blocks = 6, .groups = 4}).status().message()),
              HasSubstr("not a multiple of --groups 4"));
  EXPECT_THAT(std::string(PlanExpansion(8, {}).status().message()), HasSubstr("--add-blocks N"));
  EXPECT_THAT(
      std::string(PlanExpansion(8, {.layout = ExpansionLayout::kPositions, .positions = {8}})
                      .status()
                      .message()),
      HasSubstr("valid positions are 0..7"));
  EXPECT_FALSE(PlanExpansion(8, {.layout = ExpansionLayout::kTop, .groups = 2}).ok());
  EXPECT_FALSE(PlanExpansion(8, {.layout = ExpansionLayout::kTop}).ok());
}

// --- Expansion of real files -------------------------------------------------------

ExpandOptions Options(const std::string& in, const std::string& out, ExpansionSpec spec) {
  ExpandOptions options;
  options.model_dir = in;
  options.out_dir = out;
  options.spec = std::move(spec);
  return options;
}

std::vector<float> Logits(const std::string& dir, const std::vector<int32_t>& tokens,
                          int64_t batch) {
  auto config = LoadLlamaConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  auto reader = CheckpointReader::Open(dir);
  EXPECT_TRUE(reader.ok()) << reader.status();
  auto weights = LoadLlamaWeights(**reader, *config);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto logits =
      ForwardLogits(*config, *weights, tokens, batch, static_cast<int64_t>(tokens.size()) / batch);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return *logits;
}

struct ExactCase {
  std::string name;
  SynthSpec spec;
  ExpansionSpec expansion;
};

void PrintTo(const ExactCase& c, std::ostream* os) { *os << c.name; }

std::vector<ExactCase> ExactCases() {
  using testing::SmallSpec;
  std::vector<ExactCase> cases;
  const std::pair<const char*, SynthSpec> models[] = {
      {"Mha", SmallSpec(4, 3, 3, false, false)},
      {"GqaTied", SmallSpec(4, 4, 2, true, false)},
      {"MqaBiasesBf16", SmallSpec(4, 4, 1, false, true, DType::kBF16)},
      {"OddF16", SmallSpec(6, 2, 1, true, true, DType::kF16, 9)},
  };
  const std::pair<const char*, ExpansionSpec> layouts[] = {
      {"Interleaved", {.add_blocks = 2}},
      {"InterleavedTwoPerGroup", {.add_blocks = 4, .groups = 2}},
      {"Top", {.layout = ExpansionLayout::kTop, .add_blocks = 2}},
      {"Bottom", {.layout = ExpansionLayout::kBottom, .add_blocks = 1}},
      {"Positions", {.layout = ExpansionLayout::kPositions, .positions = {0, 3, 3}}},
  };
  for (const auto& [model_name, model] : models) {
    for (const auto& [layout_name, layout] : layouts) {
      cases.push_back({std::string(model_name) + layout_name, model, layout});
    }
  }
  return cases;
}

class ExpandExactTest : public ::testing::TestWithParam<ExactCase> {};

TEST_P(ExpandExactTest, PreservesLogitsBitForBit) {
  const ExactCase& c = GetParam();
  ScratchDir dir;
  testing::WriteCheckpoint(c.spec, dir.Join("in"));
  auto result = ExpandCheckpoint(Options(dir.Join("in"), dir.Join("out"), c.expansion));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(result->config.num_hidden_layers, c.spec.num_hidden_layers);

  std::vector<int32_t> tokens(2 * 13);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 97);
  std::vector<float> before = Logits(dir.Join("in"), tokens, 2);
  std::vector<float> after = Logits(dir.Join("out"), tokens, 2);
  ASSERT_EQ(before.size(), after.size());
  EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(ModelsAndLayouts, ExpandExactTest, ::testing::ValuesIn(ExactCases()),
                         [](const auto& info) { return info.param.name; });

TEST(ExpandTest, NewBlocksHoldTheSourceWeightsExceptZeroedOutputProjections) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(4, 2, 2, false, true, DType::kBF16), dir.Join("in"));
  auto result = ExpandCheckpoint(Options(dir.Join("in"), dir.Join("out"), {.add_blocks = 2}));
  ASSERT_TRUE(result.ok()) << result.status();
  auto in = CheckpointReader::Open(dir.Join("in"));
  auto out = CheckpointReader::Open(dir.Join("out"));
  ASSERT_TRUE(in.ok() && out.ok());
  const ExpansionPlan& plan = result->plan;
  int zeroed = 0, copied = 0;
  for (int64_t j = 0; j < plan.target_layers(); ++j) {
    for (const ExpectedTensor& t : ExpectedBlockTensors(result->config, j)) {
      auto parsed = ParseLayerTensorName(t.name);
      const std::string source = LayerTensorName(plan.source_of[j], parsed->second);
      auto a = (*in)->Find(source);
      auto b = (*out)->Find(t.name);
      ASSERT_TRUE(a && b) << t.name;
      ASSERT_EQ(a->info->NumBytes(), b->info->NumBytes());
      const auto* bytes = b->file->Data(*b->info);
      if (plan.is_new[j] && IsZeroedInNewBlock(parsed->second)) {
        for (uint64_t i = 0; i < b->info->NumBytes(); ++i) ASSERT_EQ(bytes[i], 0) << t.name;
        ++zeroed;
      } else {
        EXPECT_EQ(std::memcmp(a->file->Data(*a->info), bytes, a->info->NumBytes()), 0) << t.name;
        copied += plan.is_new[j] ? 1 : 0;
      }
    }
  }
  EXPECT_EQ(zeroed, 2 * 4);   // o_proj, o_proj.bias, down_proj, down_proj.bias per new block.
  EXPECT_EQ(copied, 2 * 12);  // Norms, q/k/v (+biases), gate/up (+biases): copied, not reset.
  // Non-block tensors are copied.
  for (const char* name : {kEmbedTokens, kFinalNorm, kLmHead}) {
    auto a = (*in)->Find(name);
    auto b = (*out)->Find(name);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(std::memcmp(a->file->Data(*a->info), b->file->Data(*b->info), a->info->NumBytes()),
              0);
  }
}

TEST(ExpandTest, WritesConfigRecordAndSideFilesAndSkipsStaleWeights) {
  ScratchDir dir;
  const std::string in = dir.Join("in");
  testing::WriteCheckpoint(testing::SmallSpec(4, 2, 2, false, false), in);
  auto config = nlohmann::ordered_json::parse(*ReadFile(JoinPath(in, "config.json")));
  config["my_custom_key"] = {{"nested", {1, 2, 3}}};
  ASSERT_TRUE(WriteFileAtomic(JoinPath(in, "config.json"), config.dump(2)).ok());
  testing::WriteBytes(JoinPath(in, "tokenizer.model"), "spm-bytes");
  testing::WriteBytes(JoinPath(in, "pytorch_model.bin"), "stale");

  auto result = ExpandCheckpoint(Options(in, dir.Join("out"), {.add_blocks = 2}));
  ASSERT_TRUE(result.ok()) << result.status();
  auto out_config = nlohmann::ordered_json::parse(*ReadFile(dir.Join("out/config.json")));
  EXPECT_EQ(out_config["num_hidden_layers"], 6);
  out_config["num_hidden_layers"] = 4;
  EXPECT_EQ(out_config, config) << "all other keys preserved verbatim";
  EXPECT_EQ(testing::ReadBytes(dir.Join("out/tokenizer.model")), "spm-bytes");
  EXPECT_TRUE(PathExists(dir.Join("out/generation_config.json")));
  EXPECT_FALSE(PathExists(dir.Join("out/pytorch_model.bin")));
  EXPECT_THAT(result->skipped_files, ElementsAre("pytorch_model.bin"));

  auto record = LoadExpansionRecord(dir.Join("out"), 6);
  ASSERT_TRUE(record.ok()) << record.status();
  ASSERT_TRUE(record->has_value());
  EXPECT_THAT((*record)->NewBlocks(), ElementsAre(2, 5));
  EXPECT_THAT((*record)->block_stage, ElementsAre(0, 0, 1, 0, 0, 1));
  ASSERT_EQ((*record)->lineage.size(), 1u);
  EXPECT_EQ((*record)->lineage[0].layout, "interleaved");
  EXPECT_EQ((*record)->lineage[0].source_model, AbsolutePath(in));
}

TEST(ExpandTest, ProgressiveExpansionAccumulatesLineageAndStaysExact) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(4, 2, 2, false, false), dir.Join("s0"));
  ASSERT_TRUE(ExpandCheckpoint(Options(dir.Join("s0"), dir.Join("s1"), {.add_blocks = 2})).ok());
  auto second = ExpandCheckpoint(
      Options(dir.Join("s1"), dir.Join("s2"), {.layout = ExpansionLayout::kTop, .add_blocks = 1}));
  ASSERT_TRUE(second.ok()) << second.status();
  auto record = LoadExpansionRecord(dir.Join("s2"), 7);
  ASSERT_TRUE(record.ok() && record->has_value()) << record.status();
  ASSERT_EQ((*record)->lineage.size(), 2u);
  EXPECT_EQ((*record)->lineage[0].target_layers, 6);
  EXPECT_EQ((*record)->lineage[1].source_layers, 6);
  EXPECT_EQ((*record)->lineage[1].layout, "top");
  EXPECT_THAT((*record)->block_stage, ElementsAre(0, 0, 1, 0, 0, 1, 2));
  EXPECT_THAT((*record)->NewBlocks(), ElementsAre(6));

  std::vector<int32_t> tokens = {3, 1, 4, 1, 5, 9, 2, 6};
  std::vector<float> a = Logits(dir.Join("s0"), tokens, 1);
  std::vector<float> b = Logits(dir.Join("s2"), tokens, 1);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(ExpandTest, VerifyPassesAndDtypeConversionIsVerifiedAgainstRoundedWeights) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 2, false, false, DType::kF32), dir.Join("in"));
  ExpandOptions options = Options(dir.Join("in"), dir.Join("out"), {.add_blocks = 1});
  options.verify = true;
  options.dtype = DType::kBF16;
  auto result = ExpandCheckpoint(options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->verify.has_value());
  EXPECT_TRUE(result->verify->identical());
  EXPECT_GT(result->verify->logits, 0);
  EXPECT_EQ(result->config.torch_dtype, DType::kBF16);
  auto out = CheckpointReader::Open(dir.Join("out"));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)->Find(kEmbedTokens)->info->dtype, DType::kBF16);
  auto config = nlohmann::json::parse(*ReadFile(dir.Join("out/config.json")));
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
}

TEST(ExpandTest, CompareLogitsDetectsADifferentFunction) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 2, false, false, DType::kF32, 1),
                           dir.Join("a"));
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 2, false, false, DType::kF32, 2),
                           dir.Join("b"));
  auto a = CheckpointReader::Open(dir.Join("a"));
  auto b = CheckpointReader::Open(dir.Join("b"));
  auto config = LoadLlamaConfig(dir.Join("a"));
  ASSERT_TRUE(a.ok() && b.ok() && config.ok());
  auto result = CompareLogits(**a, *config, **b, *config, std::nullopt);
  ASSERT_TRUE(result.ok());
  EXPECT_FALSE(result->identical());
  EXPECT_GT(result->max_abs_diff, 0);
}

TEST(ExpandTest, ShardedOutputHasAnIndexAndIsExact) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(4, 2, 2, false, false), dir.Join("in"));
  ExpandOptions options = Options(dir.Join("in"), dir.Join("out"), {.add_blocks = 2});
  options.shard_bytes = 10'000;
  auto result = ExpandCheckpoint(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(result->weight_files.size(), 2u);
  EXPECT_TRUE(PathExists(dir.Join("out/model.safetensors.index.json")));
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5};
  EXPECT_EQ(Logits(dir.Join("in"), tokens, 1), Logits(dir.Join("out"), tokens, 1));
}

TEST(ExpandTest, ExistingOutputIsRefusedUnlessForced) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 2, false, false), dir.Join("in"));
  ASSERT_TRUE(MakeDirs(dir.Join("out")).ok());
  testing::WriteBytes(dir.Join("out/keep.txt"), "precious");
  auto refused = ExpandCheckpoint(Options(dir.Join("in"), dir.Join("out"), {.add_blocks = 1}));
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("already exists (use --force"));
  EXPECT_EQ(testing::ReadBytes(dir.Join("out/keep.txt")), "precious");

  ExpandOptions forced = Options(dir.Join("in"), dir.Join("out"), {.add_blocks = 1});
  forced.force = true;
  ASSERT_TRUE(ExpandCheckpoint(forced).ok());
  EXPECT_FALSE(PathExists(dir.Join("out/keep.txt")));
  EXPECT_TRUE(PathExists(dir.Join("out/llamapro.json")));
  EXPECT_THAT(dir.Entries(), ElementsAre("in", "out"));

  EXPECT_FALSE(ExpandCheckpoint(Options(dir.Join("in"), dir.Join("in"), {.add_blocks = 1})).ok());
}

// --- Malformed input: a clear error, and nothing written -------------------------

struct Corruption {
  const char* name;
  void (*apply)(const std::string& model_dir);
  const char* message;  // Expected in the error.
};

void PrintTo(const Corruption& c, std::ostream* os) { *os << c.name; }

// Rewrites model.safetensors with `edit` applied to its header JSON.
void EditHeader(const std::string& model_dir,
                void (*edit)(nlohmann::ordered_json& header, std::string& data)) {
  const std::string path = JoinPath(model_dir, "model.safetensors");
  std::string bytes = testing::ReadBytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  auto header = nlohmann::ordered_json::parse(bytes.substr(8, n));
  std::string data = bytes.substr(8 + n);
  edit(header, data);
  testing::WriteBytes(path, testing::RawSafetensors(header.dump(), data));
}

constexpr char kQ1[] = "model.layers.1.self_attn.q_proj.weight";

// The tensor whose data comes last in the file.
std::string LastTensor(const nlohmann::ordered_json& header) {
  std::string last;
  uint64_t last_begin = 0;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const uint64_t begin = entry["data_offsets"][0];
    if (begin >= last_begin) {
      last_begin = begin;
      last = name;
    }
  }
  return last;
}

std::vector<Corruption> Corruptions() {
  return {
      {"Truncated",
       [](const std::string& d) {
         const std::string path = JoinPath(d, "model.safetensors");
         std::string bytes = testing::ReadBytes(path);
         testing::WriteBytes(path, bytes.substr(0, bytes.size() - 100));
       },
       "run past the end of the data section"},
      {"HeaderLengthPastEnd",
       [](const std::string& d) {
         const std::string path = JoinPath(d, "model.safetensors");
         std::string bytes = testing::ReadBytes(path);
         bytes[5] = 1;  // Header length now > 2^40.
         testing::WriteBytes(path, bytes);
       },
       "runs past the end of the file"},
      {"OffsetsOutOfRange",
       [](const std::string& d) {
         EditHeader(d, [](nlohmann::ordered_json& h, std::string&) {
           // The last tensor in the data section, moved past its end.
           auto& offsets = h[LastTensor(h)]["data_offsets"];
           offsets = {offsets[0].get<uint64_t>() + 1000000, offsets[1].get<uint64_t>() + 1000000};
         });
       },
       "] run past the end of the data section"},
      {"OverlappingOffsets",
       [](const std::string& d) {
         EditHeader(d, [](nlohmann::ordered_json& h, std::string&) {
           auto offsets = h[kQ1]["data_offsets"];
           h[kQ1]["data_offsets"] = {offsets[0].get<uint64_t>() - 8,
                                     offsets[1].get<uint64_t>() - 8};
         });
       },
       "overlap"},
      {"ShapeTimesDtypeMismatch",
       [](const std::string& d) {
         EditHeader(d, [](nlohmann::ordered_json& h, std::string&) {
           h[kQ1]["shape"][0] = h[kQ1]["shape"][0].get<int64_t>() + 1;
         });
       },
       "tensor 'model.layers.1.self_attn.q_proj.weight': shape"},
      {"MissingTensor",
       [](const std::string& d) {
         EditHeader(d, [](nlohmann::ordered_json& h, std::string& data) {
           // Drop the last tensor in the data section and its bytes.
           const std::string last = LastTensor(h);
           data.resize(h[last]["data_offsets"][0].get<uint64_t>());
           h.erase(last);
         });
       },
       "is missing"},
      {"WrongShapeForConfig",
       [](const std::string& d) {
         auto config = nlohmann::ordered_json::parse(*ReadFile(JoinPath(d, "config.json")));
         config["intermediate_size"] = config["intermediate_size"].get<int64_t>() * 2;
         testing::WriteBytes(JoinPath(d, "config.json"), config.dump());
       },
       "but config.json implies"},
      {"MissingWeights",
       [](const std::string& d) { (void)RemoveAll(JoinPath(d, "model.safetensors")); },
       "no model.safetensors or model.safetensors.index.json"},
      {"BrokenConfig",
       [](const std::string& d) { testing::WriteBytes(JoinPath(d, "config.json"), "{\"vocab"); },
       "config.json: not valid JSON"},
      {"StaleExpansionRecord",
       [](const std::string& d) {
         testing::WriteBytes(JoinPath(d, "llamapro.json"),
                             R"({"format":"llamapro.expansion","version":1,"block_stage":[0,1],)"
                             R"("lineage":[{"stage":1,"source_num_hidden_layers":1,)"
                             R"("num_hidden_layers":2,"new_blocks":[1],"copied_from":[0]}]})");
       },
       "llamapro.json: describes 2 blocks but config.json has num_hidden_layers=4"},
  };
}

class MalformedInputTest : public ::testing::TestWithParam<Corruption> {};

TEST_P(MalformedInputTest, IsRefusedClearlyAndLeavesNoOutputBehind) {
  const Corruption& c = GetParam();
  ScratchDir dir;
  const std::string in = dir.Join("in");
  testing::WriteCheckpoint(testing::SmallSpec(4, 2, 2, false, false), in);
  c.apply(in);
  ExpandOptions options = Options(in, dir.Join("out"), {.add_blocks = 2});
  options.verify = true;
  auto result = ExpandCheckpoint(options);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(c.message));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(in)) << "the error names the file";
  EXPECT_THAT(dir.Entries(), ElementsAre("in")) << "no output or staging directory remains";
}

INSTANTIATE_TEST_SUITE_P(Cases, MalformedInputTest, ::testing::ValuesIn(Corruptions()),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace llamapro
