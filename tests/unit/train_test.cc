// The training engine end to end: frozen-aware gradients, accumulation,
// training runs, checkpoints and exact resume.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "data/ingest.h"
#include "data/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/expand.h"
#include "model/llama.h"
#include "model/llama_params.h"
#include "model/llama_train.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"
#ifdef LLAMAPRO_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::ScratchDir;

LlamaParams Load(const std::string& dir) { return testing::LoadParams(dir); }

TrainableSet AllTrainable(const LlamaParams& p) {
  return {.blocks = std::vector<bool>(p.blocks.size(), true),
          .embeddings = true,
          .final_norm = true,
          .lm_head = true};
}

std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> out(count);
  for (int32_t& t : out) t = token(rng);
  return out;
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

// A freshly expanded 4 -> 6 block model (f32 weights).
std::string ExpandedModel(const ScratchDir& dir, bool biases = false) {
  SynthSpec spec = testing::SmallSpec(4, 2, 1, false, biases, DType::kF32, 3);
  spec.vocab_size = 500;
  testing::WriteCheckpoint(spec, dir.Join("base"));
  ExpandOptions options;
  options.model_dir = dir.Join("base");
  options.out_dir = dir.Join("expanded");
  options.spec.add_blocks = 2;
  auto result = ExpandCheckpoint(options);
  EXPECT_TRUE(result.ok()) << result.status();
  return dir.Join("expanded");
}

TEST(TrainingPassTest, FirstStepOfAnExpandedModelMovesOnlyTheNewOutputProjections) {
  ScratchDir dir;
  LlamaParams params = Load(ExpandedModel(dir, /*biases=*/true));
  TrainableSet set{.blocks = {false, false, true, false, false, true}};
  ASSERT_TRUE(ApplyTrainableSet(set, &params).ok());
  TrainingPass pass(&params, 2, 12);
  EXPECT_EQ(pass.lowest_backward_block(), 2);
  auto loss = pass.ForwardBackward(RandomTokens(2 * 13, 500, 1), {}, 1.0f / 24);
  ASSERT_TRUE(loss.ok()) << loss.status();
  for (int64_t b : {2, 5}) {
    for (Parameter* p : params.blocks[b].All()) {
      const bool output = p == &params.blocks[b].o_proj || p == &params.blocks[b].down_proj ||
                          p == &params.blocks[b].o_bias || p == &params.blocks[b].down_bias;
      if (output) {
        EXPECT_GT(MaxAbs(p->grad), 1e-6) << p->name;
      } else {
        EXPECT_EQ(MaxAbs(p->grad), 0.0) << p->name << ": its branch output is still zero";
      }
    }
  }
  for (Parameter* p : params.All()) {
    if (!p->trainable) {
      EXPECT_TRUE(p->grad.empty()) << p->name << " has no gradient memory";
    }
  }
}

TEST(TrainingPassTest, FrozenAwareGradientsEqualThoseOfFullBackpropagation) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(4, 4, 2, false, true, DType::kF32, 5), dir.Join("m"));
  std::vector<int32_t> tokens = RandomTokens(3 * 10, 97, 2);
  LlamaParams all = Load(dir.Join("m"));
  ASSERT_TRUE(ApplyTrainableSet(AllTrainable(all), &all).ok());
  TrainingPass full(&all, 3, 9);
  auto full_loss = full.ForwardBackward(tokens, {}, 0.1f);
  ASSERT_TRUE(full_loss.ok());

  LlamaParams some = Load(dir.Join("m"));
  ASSERT_TRUE(
      ApplyTrainableSet({.blocks = {false, true, false, true}, .final_norm = true}, &some).ok());
  TrainingPass frozen(&some, 3, 9);
  EXPECT_EQ(frozen.lowest_backward_block(), 1);
  EXPECT_LT(frozen.flops_per_token().backward, full.flops_per_token().backward * 0.8);
  auto frozen_loss = frozen.ForwardBackward(tokens, {}, 0.1f);
  ASSERT_TRUE(frozen_loss.ok());
  EXPECT_EQ(frozen_loss->loss, full_loss->loss);
  std::vector<Parameter*> a = all.All(), b = some.All();
  for (size_t i = 0; i < a.size(); ++i) {
    if (!b[i]->trainable) continue;
    ASSERT_EQ(a[i]->grad.size(), b[i]->grad.size());
    for (size_t k = 0; k < a[i]->grad.size(); ++k) {
      ASSERT_NEAR(a[i]->grad[k], b[i]->grad[k], 1e-6 * (1 + std::abs(a[i]->grad[k])))
          << a[i]->name << "[" << k << "]";
    }
  }
}

TEST(TrainingPassTest, GradientsMatchFiniteDifferencesOfTheLoss) {
  ScratchDir dir;
  SynthSpec spec = testing::SmallSpec(2, 2, 1, true, true, DType::kF32, 7);
  spec.architecture = Architecture::kLlama;
  testing::WriteCheckpoint(spec, dir.Join("m"));
  LlamaParams params = Load(dir.Join("m"));
  ASSERT_TRUE(ApplyTrainableSet(AllTrainable(params), &params).ok());
  std::vector<int32_t> tokens = RandomTokens(2 * 7, 97, 3);
  std::vector<uint8_t> mask(tokens.size(), 1);
  mask[3] = 0;  // A masked target: excluded from the loss and its gradient.
  const int checked =
      testing::ExpectGradientsMatchFiniteDifferences(&params, tokens, mask, 2, 6, 3);
  EXPECT_GT(checked, 30);
}

TEST(TrainingPassTest, FourMicroBatchesEqualOneBatchFourTimesTheSize) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(3, 2, 2, false, false, DType::kF32, 9),
                           dir.Join("m"));
  std::vector<int32_t> tokens = RandomTokens(8 * 17, 97, 4);
  LlamaParams big = Load(dir.Join("m"));
  ASSERT_TRUE(ApplyTrainableSet(AllTrainable(big), &big).ok());
  TrainingPass one(&big, 8, 16);
  ASSERT_TRUE(one.ForwardBackward(tokens, {}, 1.0f / 128).ok());
  LlamaParams small = Load(dir.Join("m"));
  ASSERT_TRUE(ApplyTrainableSet(AllTrainable(small), &small).ok());
  TrainingPass micro(&small, 2, 16);
  for (int m = 0; m < 4; ++m) {
    std::vector<int32_t> part(tokens.begin() + m * 2 * 17, tokens.begin() + (m + 1) * 2 * 17);
    ASSERT_TRUE(micro.ForwardBackward(part, {}, 1.0f / 128).ok());
  }
  std::vector<Parameter*> a = big.All(), b = small.All();
  for (size_t i = 0; i < a.size(); ++i) {
    double diff = 0, norm = 0;
    for (size_t k = 0; k < a[i]->grad.size(); ++k) {
      diff += std::pow(a[i]->grad[k] - b[i]->grad[k], 2);
      norm += std::pow(a[i]->grad[k], 2);
    }
    EXPECT_LE(std::sqrt(diff), 1e-6 * std::sqrt(norm) + 1e-12) << a[i]->name;
  }
}

// --- Runs -----------------------------------------------------------------------------

// A token store with one corpus of real text (this repository's documentation),
// tokenized with the test tokenizer, and a config training `model` on it.
struct TrainingSetup {
  std::string store;
  JobConfig config;
};

std::string RealText() {
  std::string text;
  for (const char* name : {"README.md", "docs/llamaproctl.md", "docs/data.md",
                           "docs/checkpoints.md", "docs/architecture.md", "docs/build.md"}) {
    auto content = ReadFile(std::string(LLAMAPRO_SOURCE_DIR) + "/" + name);
    EXPECT_TRUE(content.ok()) << content.status();
    text += *content + "\n";
  }
  return text;
}

struct SetupOptions {
  std::string tokenizer = testing::TestTokenizerPath();
  int64_t seq_len = 32;
  int64_t sequences = 8;
  int64_t micro_batch = 4;
  double lr = 3e-3;
};

TrainingSetup MakeSetup(const ScratchDir& dir, const std::string& model, int64_t steps,
                        const SetupOptions& options = {}) {
  TrainingSetup setup;
  setup.store = dir.Join("store");
  testing::WriteBytes(dir.Join("docs.txt"), RealText());
  IngestOptions ingest;
  ingest.store_dir = setup.store;
  ingest.corpus = "docs";
  ingest.tokenizer = options.tokenizer;
  ingest.inputs = {dir.Join("docs.txt")};
  ingest.input.split_lines = true;
  ingest.held_out = 0.1;
  EXPECT_TRUE(Ingest(ingest, nullptr).ok());
  const std::string yaml = absl::StrCat(
      "model: ", model, "\noutput_dir: ", dir.Join("run"), "\ndata: {store: ", setup.store,
      ", mixture: {docs: 1}, seq_len: ", options.seq_len, ", seed: 3}\n",
      "optimizer: {name: adamw, lr: ", options.lr, ", weight_decay: 0.01, clip_grad_norm: 1.0}\n",
      "schedule: {warmup_steps: 5, decay: cosine, min_lr: 1.0e-4}\n",
      "batch: {sequences: ", options.sequences, ", micro_batch: ", options.micro_batch, "}\n",
      "steps: ", steps, "\ncheckpoint: {interval: 0, keep: 2}\nthreads: 2\n");
  auto config = ParseJobConfig(yaml, "test.yaml");
  EXPECT_TRUE(config.ok()) << config.status();
  setup.config = *config;
  return setup;
}

std::string TinyModel(const ScratchDir& dir, const std::string& name, int layers,
                      int64_t vocab = 500) {
  SynthSpec spec;
  spec.vocab_size = vocab;
  spec.hidden_size = 64;
  spec.intermediate_size = 128;
  spec.num_hidden_layers = layers;
  spec.num_attention_heads = 4;
  spec.num_key_value_heads = 2;
  spec.dtype = DType::kBF16;
  spec.seed = 11;
  testing::WriteCheckpoint(spec, dir.Join(name));
  return dir.Join(name);
}

TEST(TrainerTest, TheLossOfATinyModelFallsSteadilyOnRealText) {
  ScratchDir dir;
  // A tokenizer for the text itself, like a real model's for its corpus.
  testing::WriteBytes(dir.Join("train.txt"), RealText());
  TokenizerTrainOptions tokenizer{.inputs = {dir.Join("train.txt")},
                                  .vocab_size = 1000,
                                  .out_dir = dir.Join("tok"),
                                  .threads = 1};
  ASSERT_TRUE(TrainTokenizer(tokenizer).ok());
  TrainingSetup setup = MakeSetup(
      dir, TinyModel(dir, "tiny", 2, 1000), 120,
      {.tokenizer = dir.Join("tok"), .seq_len = 64, .sequences = 16, .micro_batch = 8, .lr = 1e-2});
  std::vector<double> losses;
  TrainOptions options;
  options.on_step = [&](const TrainProgress& p) { losses.push_back(p.loss); };
  auto summary = RunTraining(setup.config, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(losses.size(), 120u);
  // Every 20 steps the mean loss is lower than in the 20 before.
  std::vector<double> means;
  for (int from = 0; from < 120; from += 20) {
    double s = 0;
    for (int i = from; i < from + 20; ++i) s += losses[i];
    means.push_back(s / 20);
  }
  for (size_t i = 1; i < means.size(); ++i) {
    EXPECT_LT(means[i], means[i - 1]) << "steps " << 20 * i << ".." << 20 * i + 19;
  }
  EXPECT_LT(means.back(), 0.75 * losses[0]) << "from " << losses[0];
  EXPECT_TRUE(PathExists(dir.Join("run/metrics.jsonl")));
}

std::map<std::string, std::string> DirectoryBytes(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    files[entry.path().filename().string()] = testing::ReadBytes(entry.path().string());
  }
  return files;
}

TEST(TrainerTest, ExpandedTrainingChangesOnlyTheNewBlocks) {
  ScratchDir dir;
  const std::string model = ExpandedModel(dir);
  TrainingSetup setup = MakeSetup(dir, model, 6);
  auto summary = RunTraining(setup.config, {});
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto before = CheckpointReader::Open(model);
  auto after = CheckpointReader::Open(summary->last_checkpoint);
  ASSERT_TRUE(before.ok() && after.ok());
  std::set<int64_t> changed_blocks;
  for (const std::string& name : (*before)->names()) {
    auto a = (*before)->Find(name);
    auto b = (*after)->Find(name);
    ASSERT_TRUE(b.has_value()) << name;
    const bool same =
        a->info->NumBytes() == b->info->NumBytes() &&
        std::memcmp(a->file->Data(*a->info), b->file->Data(*b->info), a->info->NumBytes()) == 0;
    auto layer = ParseLayerTensorName(name);
    const bool is_new = layer && (layer->first == 2 || layer->first == 5);
    if (!is_new) {
      EXPECT_TRUE(same) << name << " is frozen and must be byte-identical";
    } else if (!same) {
      changed_blocks.insert(layer->first);
    }
  }
  EXPECT_EQ(changed_blocks, (std::set<int64_t>{2, 5}));
  // The checkpoint is a complete model directory.
  for (const char* file : {"config.json", "llamapro.json", "trainer_state.json",
                           "optimizer.safetensors", "generation_config.json"}) {
    EXPECT_TRUE(PathExists(JoinPath(summary->last_checkpoint, file))) << file;
  }
}

TEST(TrainerTest, StoppingAndResumingGivesByteIdenticalCheckpoints) {
  ScratchDir dir;
  const std::string model = ExpandedModel(dir);
  TrainingSetup setup = MakeSetup(dir, model, 8);
  setup.config.checkpoint.interval = 4;
  setup.config.output_dir = dir.Join("straight");
  auto straight = RunTraining(setup.config, {});
  ASSERT_TRUE(straight.ok()) << straight.status();

  setup.config.output_dir = dir.Join("resumed");
  auto first = RunTraining(setup.config, {.stop_after_steps = 4});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->final_step, 4);
  auto again = RunTraining(setup.config, {});
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("pass --resume"));
  auto second = RunTraining(setup.config, {.resume = true});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->final_step, 8);
  EXPECT_EQ(second->steps_run, 4);
  auto a = DirectoryBytes(straight->last_checkpoint);
  auto b = DirectoryBytes(second->last_checkpoint);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    EXPECT_TRUE(b[name] == bytes) << name << " differs between the runs";
  }
  EXPECT_EQ(*ReadFile(dir.Join("resumed/latest")), CheckpointName(8) + "\n");
  EXPECT_FALSE(PathExists(dir.Join("straight/" + CheckpointName(0))));

  // A resume with other data settings is refused, naming the key.
  setup.config.data.seq_len = 16;
  setup.config.steps = 12;
  auto changed = RunTraining(setup.config, {.resume = true});
  EXPECT_THAT(std::string(changed.status().message()), HasSubstr("data.seq_len"));
}

// LoRA (trainable: lora): only the adapters train; a checkpoint holds the
// merged model (or, with export: adapter, the base model and a PEFT adapter)
// and resumes exactly.
TEST(TrainerTest, LoraTrainsOnlyItsAdaptersAndCheckpointsTheMergedModel) {
  ScratchDir dir;
  const std::string model = ExpandedModel(dir);
  TrainingSetup setup = MakeSetup(dir, model, 6, {.lr = 3e-2});
  setup.config.trainable.mode = TrainableConfig::Mode::kLora;
  setup.config.trainable.explicit_ = true;
  setup.config.lora.rank = 4;
  setup.config.lora.alpha = 8;
  setup.config.lora.targets = {"q_proj", "v_proj", "down_proj"};
  setup.config.checkpoint.interval = 3;
  setup.config.output_dir = dir.Join("straight");
  std::vector<double> losses;
  TrainOptions options;
  options.on_step = [&](const TrainProgress& p) { losses.push_back(p.loss); };
  auto straight = RunTraining(setup.config, options);
  ASSERT_TRUE(straight.ok()) << straight.status();
  EXPECT_LT(losses.back(), losses.front());

  auto before = CheckpointReader::Open(model);
  auto after = CheckpointReader::Open(straight->last_checkpoint);
  auto masters = SafetensorsFile::Open(JoinPath(straight->last_checkpoint, kOptimizerStateFile));
  ASSERT_TRUE(before.ok() && after.ok() && masters.ok());
  auto master = [&](const std::string& name) {
    for (const TensorInfo& t : (*masters)->tensors()) {
      if (t.name == "master." + name) {
        const auto* data = reinterpret_cast<const float*>((*masters)->Data(t));
        return std::vector<float>(data, data + t.NumElements());
      }
    }
    ADD_FAILURE() << "no master value of " << name;
    return std::vector<float>();
  };
  int merged = 0;
  for (const std::string& name : (*before)->names()) {
    std::vector<float> base, saved;
    ASSERT_TRUE((*before)->ReadF32(name, &base).ok());
    ASSERT_TRUE((*after)->ReadF32(name, &saved).ok());
    const bool adapted = absl::EndsWith(name, "q_proj.weight") ||
                         absl::EndsWith(name, "v_proj.weight") ||
                         absl::EndsWith(name, "down_proj.weight");
    if (!adapted) {
      EXPECT_EQ(base, saved) << name << " is frozen";
      continue;
    }
    // saved = W + (alpha / rank) B A, from the adapters' exact values.
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    const std::vector<float> a = master(prefix + ".lora_A.weight");
    const std::vector<float> b = master(prefix + ".lora_B.weight");
    const int64_t in = static_cast<int64_t>(a.size()) / 4, out = static_cast<int64_t>(b.size()) / 4;
    ASSERT_EQ(static_cast<int64_t>(base.size()), in * out) << name;
    double err = 0, delta = 0;
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        double sum = 0;
        for (int64_t r = 0; r < 4; ++r) sum += static_cast<double>(b[o * 4 + r]) * a[r * in + i];
        const double want = base[o * in + i] + 2.0 * sum;
        err = std::max(err, std::abs(want - saved[o * in + i]));
        delta = std::max(delta, std::abs(2.0 * sum));
      }
    }
    EXPECT_LT(err, 1e-6) << name;
    // The new blocks' o_proj is zero and frozen, so no gradient reaches their
    // q and v: those adapters stay at B = 0. Every other one moved.
    const auto layer = ParseLayerTensorName(name)->first;
    if ((layer == 2 || layer == 5) && !absl::EndsWith(name, "down_proj.weight")) {
      EXPECT_EQ(delta, 0) << name;
    } else {
      EXPECT_GT(delta, 1e-5) << name << ": the adapter never moved";
    }
    ++merged;
  }
  EXPECT_EQ(merged, 3 * 6);  // 3 targets in each of the 6 blocks.

  // Stopped after 3 steps and resumed: the same bytes.
  setup.config.output_dir = dir.Join("resumed");
  ASSERT_TRUE(RunTraining(setup.config, {.stop_after_steps = 3}).ok());
  auto resumed = RunTraining(setup.config, {.resume = true});
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  auto x = DirectoryBytes(straight->last_checkpoint);
  auto y = DirectoryBytes(resumed->last_checkpoint);
  ASSERT_EQ(x.size(), y.size());
  for (const auto& [name, bytes] : x) EXPECT_TRUE(y[name] == bytes) << name << " differs";

  // export: adapter keeps the base weights and writes a PEFT adapter.
  setup.config.lora.merge = false;
  setup.config.output_dir = dir.Join("adapter");
  auto adapter = RunTraining(setup.config, {});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto kept = CheckpointReader::Open(adapter->last_checkpoint);
  ASSERT_TRUE(kept.ok());
  for (const std::string& name : (*before)->names()) {
    std::vector<float> base, saved;
    ASSERT_TRUE((*before)->ReadF32(name, &base).ok() && (*kept)->ReadF32(name, &saved).ok());
    EXPECT_EQ(base, saved) << name;
  }
  auto peft =
      SafetensorsFile::Open(JoinPath(adapter->last_checkpoint, "adapter_model.safetensors"));
  ASSERT_TRUE(peft.ok()) << peft.status();
  EXPECT_EQ((*peft)->tensors().size(), 2u * 3 * 6);
  EXPECT_TRUE((*peft)->Find("base_model.model.model.layers.5.mlp.down_proj.lora_B.weight"));
  auto config = ReadFile(JoinPath(adapter->last_checkpoint, "adapter_config.json"));
  ASSERT_TRUE(config.ok());
  EXPECT_THAT(*config, HasSubstr("\"peft_type\": \"LORA\""));
  EXPECT_THAT(*config, HasSubstr("\"r\": 4"));
}

// The MoE baseline end to end: checkpoints carry the experts and the flag in
// config.json, the training engine reloads them exactly, inference refuses them.
TEST(TrainerTest, MoeTrainsTheSecondExpertsAndItsCheckpointsReloadAndResumeExactly) {
  ScratchDir dir;
  TrainingSetup setup = MakeSetup(dir, TinyModel(dir, "tiny", 2), 6, {.lr = 1e-2});
  setup.config.trainable.mode = TrainableConfig::Mode::kMoe;
  setup.config.trainable.explicit_ = true;
  auto summary = RunTraining(setup.config, {});
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto config = LoadLlamaConfig(summary->last_checkpoint);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->moe_experts, 2);
  LlamaParams trained = Load(summary->last_checkpoint);
  LlamaParams base = Load(dir.Join("tiny"));
  ASSERT_TRUE(trained.blocks[1].moe());
  EXPECT_NE(trained.blocks[1].expert_mix.value, (std::vector<float>{0.0f, 0.0f}));
  EXPECT_EQ(trained.blocks[1].gate_proj.value, base.blocks[1].gate_proj.value);  // Frozen.
  EXPECT_NE(trained.blocks[1].expert_gate.value, base.blocks[1].gate_proj.value);
  // Stopped after 3 steps and resumed (the experts reload from the
  // checkpoint): the same bytes as the straight run.
  setup.config.output_dir = dir.Join("resumed");
  ASSERT_TRUE(RunTraining(setup.config, {.stop_after_steps = 3}).ok());
  auto resumed = RunTraining(setup.config, {.resume = true});
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  auto x = DirectoryBytes(summary->last_checkpoint);
  auto y = DirectoryBytes(resumed->last_checkpoint);
  ASSERT_EQ(x.size(), y.size());
  for (const auto& [name, bytes] : x) EXPECT_TRUE(y[name] == bytes) << name << " differs";
  // The inference forward pass has one MLP per block and says so.
  auto reader = CheckpointReader::Open(summary->last_checkpoint);
  ASSERT_TRUE(reader.ok());
  EXPECT_THAT(LoadLlamaWeights(**reader, *config).status().message(),
              HasSubstr("MoE-baseline checkpoint"));
}

TEST(TrainerTest, ConfigErrorsAgainstTheModelNameTheKey) {
  ScratchDir dir;
  const std::string plain = TinyModel(dir, "plain", 2);
  TrainingSetup setup = MakeSetup(dir, plain, 6);
  setup.config.trainable.mode = TrainableConfig::Mode::kExpanded;
  setup.config.trainable.explicit_ = true;
  EXPECT_THAT(std::string(RunTraining(setup.config, {}).status().message()),
              HasSubstr("trainable: 'expanded' needs an expanded model"));
  setup.config.trainable.mode = TrainableConfig::Mode::kLayers;
  setup.config.trainable.layers = {5};
  EXPECT_THAT(std::string(RunTraining(setup.config, {}).status().message()),
              HasSubstr("trainable.layers: block 5 does not exist"));
  setup.config.trainable.layers = {1};
  setup.config.data.seq_len = 100000;
  EXPECT_THAT(std::string(RunTraining(setup.config, {}).status().message()),
              HasSubstr("data.seq_len: 100000 exceeds"));
}

// The CUDA backend as seen from a machine without a GPU (CI): what it cannot
// run is refused naming the key before any device is touched, and a missing
// device is a clear error, not a crash. (On a GPU machine the cuda tests in
// tests/cuda/ run the backend itself.)
TEST(TrainerTest, CudaDeviceErrorsNameTheKeyOrTheDevice) {
  ScratchDir dir;
  const std::string plain = TinyModel(dir, "plain", 2);
  TrainingSetup setup = MakeSetup(dir, plain, 6);
  ASSERT_TRUE(SetDevice(&setup.config, "cuda:0").ok());
  EXPECT_EQ(setup.config.precision, Precision::kBf16);
#ifdef LLAMAPRO_HAVE_CUDA
  JobConfig sgd = setup.config;
  sgd.optimizer.name = "sgd";
  EXPECT_THAT(std::string(RunTraining(sgd, {}).status().message()),
              HasSubstr("optimizer.name: sgd on device cuda:0 (the CUDA backend runs"));
  JobConfig zero = setup.config;
  zero.parallel.zero1 = true;
  EXPECT_THAT(std::string(RunTraining(zero, {}).status().message()),
              HasSubstr("parallel.zero: ZeRO-1 on device cuda:0"));
  if (cuda::DeviceCount() == 0) {
    const absl::Status status = RunTraining(setup.config, {}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("CUDA device 0"));
  }
#else
  EXPECT_THAT(std::string(RunTraining(setup.config, {}).status().message()),
              HasSubstr("device: cuda:0: this build has no CUDA backend"));
#endif
  // Recompute is the CUDA backend's.
  setup.config.recompute = "full";
  EXPECT_THAT(SetDevice(&setup.config, "cpu").message(), HasSubstr("recompute: full"));
}

}  // namespace
}  // namespace llamapro
