#include "model/expand.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "base/version.h"
#include "model/lineage.h"
#include "model/llama.h"
#include "model/weights.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string Divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return absl::StrJoin(out, ", ");
}

void AddOriginal(ExpansionPlan* plan, int64_t source) {
  plan->source_of.push_back(source);
  plan->is_new.push_back(false);
}

void AddNew(ExpansionPlan* plan, int64_t source) {
  plan->new_blocks.push_back(plan->target_layers());
  plan->copied_from.push_back(source);
  plan->source_of.push_back(source);
  plan->is_new.push_back(true);
}

struct OutputTensor {
  TensorSpec spec;
  TensorRef source;
  bool zero = false;
};

// Output tensors in model order: embedding, blocks 0..N-1 (each block's
// tensors by name), then everything else (final norm, lm_head, ...) by name.
std::vector<OutputTensor> LayOutTensors(const CheckpointReader& reader, const ExpansionPlan& plan,
                                        std::optional<DType> dtype) {
  std::vector<std::string> front, back;
  std::map<int64_t, std::map<std::string, std::string>> layers;  // layer -> suffix -> name
  for (const std::string& name : reader.names()) {
    if (auto layer = ParseLayerTensorName(name)) {
      layers[layer->first][layer->second] = name;
    } else if (absl::StartsWith(name, "model.embed_tokens.")) {
      front.push_back(name);
    } else {
      back.push_back(name);
    }
  }
  std::sort(front.begin(), front.end());
  std::sort(back.begin(), back.end());
  auto spec_for = [&](const std::string& out_name, const TensorRef& ref) {
    TensorSpec spec{out_name, ref.info->dtype, ref.info->shape};
    if (dtype && IsModelFloat(spec.dtype)) spec.dtype = *dtype;
    return spec;
  };
  std::vector<OutputTensor> out;
  for (const std::string& name : front) {
    TensorRef ref = *reader.Find(name);
    out.push_back({spec_for(name, ref), ref, false});
  }
  for (int64_t j = 0; j < plan.target_layers(); ++j) {
    for (const auto& [suffix, name] : layers[plan.source_of[j]]) {
      TensorRef ref = *reader.Find(name);
      out.push_back({spec_for(LayerTensorName(j, suffix), ref), ref,
                     plan.is_new[j] && IsZeroedInNewBlock(suffix)});
    }
  }
  for (const std::string& name : back) {
    TensorRef ref = *reader.Find(name);
    out.push_back({spec_for(name, ref), ref, false});
  }
  return out;
}

class ProgressReporter {
 public:
  ProgressReporter(const ExpandProgressFn& fn, int64_t tensors, uint64_t bytes)
      : fn_(fn), start_(Clock::now()) {
    state_.phase = "write";
    state_.tensors_total = tensors;
    state_.bytes_total = bytes;
  }
  void Add(uint64_t bytes) {
    state_.bytes_done += bytes;
    Report(false);
  }
  void TensorDone() {
    ++state_.tensors_done;
    Report(state_.tensors_done == state_.tensors_total);
  }
  double seconds() const { return SecondsSince(start_); }

 private:
  void Report(bool force) {
    if (!fn_) return;
    auto now = Clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    state_.seconds = SecondsSince(start_);
    fn_(state_);
  }
  const ExpandProgressFn& fn_;
  ExpandProgress state_;
  Clock::time_point start_;
  Clock::time_point last_{};
};

absl::Status WriteTensor(const OutputTensor& t, CheckpointWriter* writer,
                         ProgressReporter* progress) {
  constexpr uint64_t kCopyChunk = 64ull << 20;
  constexpr size_t kConvertElements = 1u << 20;
  const uint64_t out_bytes = t.spec.NumBytes();
  if (t.zero) {
    LP_RETURN_IF_ERROR(writer->AppendZeros(out_bytes));
    progress->Add(out_bytes);
    return absl::OkStatus();
  }
  const SafetensorsFile& file = *t.source.file;
  const TensorInfo& info = *t.source.info;
  if (info.dtype == t.spec.dtype) {
    for (uint64_t done = 0; done < out_bytes; done += kCopyChunk) {
      const uint64_t n = std::min(kCopyChunk, out_bytes - done);
      LP_RETURN_IF_ERROR(writer->AppendFrom(file.mapped().file(), file.FileOffset(info) + done, n));
      progress->Add(n);
    }
    return absl::OkStatus();
  }
  // Convert through fp32 in chunks, releasing the source pages as we go.
  const size_t in_size = DTypeSize(info.dtype);
  const size_t out_size = DTypeSize(t.spec.dtype);
  const uint64_t elements = static_cast<uint64_t>(info.NumElements());
  std::vector<uint8_t> buffer(kConvertElements * out_size);
  const uint8_t* src = file.Data(info);
  for (uint64_t done = 0; done < elements; done += kConvertElements) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kConvertElements, elements - done));
    if (!ConvertFloat(src + done * in_size, info.dtype, n, t.spec.dtype, buffer.data())) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": tensor '", info.name, "' of dtype ", DTypeName(info.dtype),
                       " cannot be converted to ", DTypeName(t.spec.dtype)));
    }
    LP_RETURN_IF_ERROR(writer->Append(buffer.data(), n * out_size));
    file.mapped().DropPages(file.FileOffset(info) + done * in_size, n * in_size);
    progress->Add(n * out_size);
  }
  return absl::OkStatus();
}

std::string UtcNow() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
}

}  // namespace

absl::string_view LayoutName(ExpansionLayout layout) {
  switch (layout) {
    case ExpansionLayout::kInterleaved:
      return "interleaved";
    case ExpansionLayout::kTop:
      return "top";
    case ExpansionLayout::kBottom:
      return "bottom";
    case ExpansionLayout::kPositions:
      return "positions";
  }
  return "?";
}

absl::StatusOr<ExpansionLayout> ParseLayout(absl::string_view name) {
  for (ExpansionLayout layout : {ExpansionLayout::kInterleaved, ExpansionLayout::kTop,
                                 ExpansionLayout::kBottom, ExpansionLayout::kPositions}) {
    if (LayoutName(layout) == name) return layout;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown layout '", name, "'; choose interleaved, top, bottom or positions"));
}

absl::StatusOr<ExpansionPlan> PlanExpansion(int64_t source_layers, const ExpansionSpec& spec) {
  const int64_t l = source_layers;
  if (l <= 0) return absl::InvalidArgumentError("the model has no blocks to expand");
  if (spec.add_blocks < 0 || spec.groups < 0) {
    return absl::InvalidArgumentError("--add-blocks and --groups must be positive");
  }
  if (spec.layout != ExpansionLayout::kPositions && !spec.positions.empty()) {
    return absl::InvalidArgumentError("--positions requires --layout positions");
  }
  if (spec.layout != ExpansionLayout::kInterleaved && spec.groups != 0) {
    return absl::InvalidArgumentError("--groups applies to the interleaved layout only");
  }
  ExpansionPlan plan;
  plan.layout = spec.layout;
  plan.source_layers = l;
  switch (spec.layout) {
    case ExpansionLayout::kInterleaved: {
      const int64_t n = spec.add_blocks != 0 ? spec.add_blocks : spec.groups;
      const int64_t p = spec.groups != 0 ? spec.groups : spec.add_blocks;
      if (n == 0) {
        return absl::InvalidArgumentError(
            "say how many blocks to add: --add-blocks N (one per group) or --groups P");
      }
      if (l % p != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot split ", l, " blocks into ", p, " equal groups; valid group counts (",
            spec.groups != 0 ? "--groups" : "--add-blocks", ") for ", l, " blocks: ", Divisors(l)));
      }
      if (n % p != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--add-blocks ", n, " is not a multiple of --groups ", p,
                         ": every group gets the same number of new blocks"));
      }
      plan.groups = p;
      const int64_t size = l / p;
      for (int64_t g = 0; g < p; ++g) {
        for (int64_t i = 0; i < size; ++i) AddOriginal(&plan, g * size + i);
        for (int64_t c = 0; c < n / p; ++c) AddNew(&plan, g * size + size - 1);
      }
      break;
    }
    case ExpansionLayout::kTop:
    case ExpansionLayout::kBottom: {
      if (spec.add_blocks == 0) return absl::InvalidArgumentError("--add-blocks N is required");
      const bool top = spec.layout == ExpansionLayout::kTop;
      if (!top) {
        for (int64_t c = 0; c < spec.add_blocks; ++c) AddNew(&plan, 0);
      }
      for (int64_t i = 0; i < l; ++i) AddOriginal(&plan, i);
      if (top) {
        for (int64_t c = 0; c < spec.add_blocks; ++c) AddNew(&plan, l - 1);
      }
      break;
    }
    case ExpansionLayout::kPositions: {
      if (spec.positions.empty()) {
        return absl::InvalidArgumentError("--layout positions needs --positions i,j,...");
      }
      if (spec.add_blocks != 0 && spec.add_blocks != static_cast<int64_t>(spec.positions.size())) {
        return absl::InvalidArgumentError(absl::StrCat("--add-blocks ", spec.add_blocks,
                                                       " disagrees with the ",
                                                       spec.positions.size(), " --positions"));
      }
      std::vector<int64_t> positions = spec.positions;
      std::sort(positions.begin(), positions.end());
      for (int64_t p : positions) {
        if (p < 0 || p >= l) {
          return absl::InvalidArgumentError(absl::StrCat(
              "position ", p, " is not a block of the model: valid positions are 0..", l - 1));
        }
      }
      size_t next = 0;
      for (int64_t i = 0; i < l; ++i) {
        AddOriginal(&plan, i);
        while (next < positions.size() && positions[next] == i) {
          AddNew(&plan, i);
          ++next;
        }
      }
      break;
    }
  }
  return plan;
}

absl::StatusOr<VerifyResult> CompareLogits(const CheckpointReader& reference,
                                           const LlamaConfig& reference_config,
                                           const CheckpointReader& candidate,
                                           const LlamaConfig& candidate_config,
                                           std::optional<DType> round_through) {
  if (reference_config.vocab_size != candidate_config.vocab_size) {
    return absl::InvalidArgumentError("the two models have different vocabularies");
  }
  VerifyResult result;
  result.sequences = 2;
  result.seq_len = std::min<int64_t>(32, reference_config.max_position_embeddings);
  std::mt19937_64 rng(0x11a3a9f0);
  std::uniform_int_distribution<int32_t> token(
      0, static_cast<int32_t>(reference_config.vocab_size - 1));
  std::vector<int32_t> tokens(result.sequences * result.seq_len);
  for (int32_t& t : tokens) t = token(rng);
  LP_ASSIGN_OR_RETURN(std::vector<float> expected,
                      StreamingLogits(reference, reference_config, tokens, result.sequences,
                                      result.seq_len, round_through));
  LP_ASSIGN_OR_RETURN(
      std::vector<float> actual,
      StreamingLogits(candidate, candidate_config, tokens, result.sequences, result.seq_len));
  result.logits = static_cast<int64_t>(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    if (FloatBits(expected[i]) != FloatBits(actual[i])) {
      ++result.mismatches;
      result.max_abs_diff =
          std::max(result.max_abs_diff, std::abs(static_cast<double>(expected[i]) - actual[i]));
    }
  }
  return result;
}

absl::StatusOr<ExpandResult> ExpandCheckpoint(const ExpandOptions& options) {
  const std::string in_dir = AbsolutePath(options.model_dir);
  const std::string out_dir = AbsolutePath(options.out_dir);
  if (in_dir == out_dir) {
    return absl::InvalidArgumentError("--out must be a different directory than --model");
  }
  if (PathExists(out_dir) && !options.force) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, " already exists (use --force to replace it)"));
  }
  if (options.dtype && !IsModelFloat(*options.dtype)) {
    return absl::InvalidArgumentError("--dtype must be f32, bf16 or f16");
  }

  // Validate everything before writing anything.
  LP_ASSIGN_OR_RETURN(LlamaConfig config, LoadLlamaConfig(in_dir));
  if (config.moe_experts > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(in_dir, " is an MoE-baseline checkpoint: expansion copies plain blocks only"));
  }
  LP_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(in_dir));
  LP_RETURN_IF_ERROR(ValidateCheckpoint(config, *reader));
  LP_ASSIGN_OR_RETURN(std::optional<ExpansionRecord> previous,
                      LoadExpansionRecord(in_dir, config.num_hidden_layers));
  ExpandResult result;
  LP_ASSIGN_OR_RETURN(result.plan, PlanExpansion(config.num_hidden_layers, options.spec));
  const ExpansionPlan& plan = result.plan;

  result.config = config;
  result.config.num_hidden_layers = plan.target_layers();
  if (options.dtype) result.config.torch_dtype = *options.dtype;

  ExpansionRecord record;
  if (previous) {
    record.lineage = previous->lineage;
  }
  const int64_t stage = static_cast<int64_t>(record.lineage.size()) + 1;
  for (int64_t j = 0; j < plan.target_layers(); ++j) {
    record.block_stage.push_back(plan.is_new[j] ? stage
                                 : previous     ? previous->block_stage[plan.source_of[j]]
                                                : 0);
  }
  record.lineage.push_back(ExpansionStage{
      .stage = stage,
      .source_layers = plan.source_layers,
      .target_layers = plan.target_layers(),
      .layout = std::string(LayoutName(plan.layout)),
      .groups = plan.groups,
      .new_blocks = plan.new_blocks,
      .copied_from = plan.copied_from,
      .source_model = in_dir,
      .created_at = UtcNow(),
      .llamapro_version = kVersion,
  });

  std::vector<OutputTensor> tensors = LayOutTensors(*reader, plan, options.dtype);
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const OutputTensor& t : tensors) {
    specs.push_back(t.spec);
    const std::string dtype(DTypeName(t.spec.dtype));
    if (std::find(result.dtypes.begin(), result.dtypes.end(), dtype) == result.dtypes.end()) {
      result.dtypes.push_back(dtype);
    }
  }

  LP_ASSIGN_OR_RETURN(auto staging, StagingDir::Create(out_dir));
  LP_ASSIGN_OR_RETURN(auto writer,
                      CheckpointWriter::Create(staging->path(), specs, options.shard_bytes));
  ProgressReporter progress(options.progress, static_cast<int64_t>(tensors.size()),
                            writer->TotalBytes());
  for (size_t i = 0; i < tensors.size(); ++i) {
    LP_RETURN_IF_ERROR(writer->BeginTensor(i));
    LP_RETURN_IF_ERROR(WriteTensor(tensors[i], writer.get(), &progress));
    progress.TensorDone();
  }
  LP_RETURN_IF_ERROR(writer->Finish());
  result.tensors = static_cast<int64_t>(tensors.size());
  result.bytes_written = writer->TotalBytes();
  result.weight_files = writer->layout().file_names;

  LP_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(staging->path(), kConfigFile), SerializeLlamaConfig(result.config)));
  LP_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(staging->path(), kExpansionFile), SerializeExpansionRecord(record)));
  LP_RETURN_IF_ERROR(CopySideFiles(in_dir, staging->path(), {kConfigFile, kExpansionFile},
                                   &result.copied_files, &result.skipped_files));
  result.seconds = progress.seconds();

  if (options.verify) {
    if (options.progress) {
      options.progress(ExpandProgress{.phase = "verify", .seconds = progress.seconds()});
    }
    LP_ASSIGN_OR_RETURN(auto staged, CheckpointReader::Open(staging->path()));
    std::optional<DType> round_through;
    if (options.dtype) round_through = *options.dtype;
    LP_ASSIGN_OR_RETURN(VerifyResult verify,
                        CompareLogits(*reader, config, *staged, result.config, round_through));
    if (!verify.identical()) {
      return absl::InternalError(absl::StrCat("verification failed: ", verify.mismatches, " of ",
                                              verify.logits, " probe logits differ (max |diff| ",
                                              verify.max_abs_diff, "); nothing was written to ",
                                              out_dir));
    }
    result.verify = verify;
  }
  LP_RETURN_IF_ERROR(staging->Commit(options.force));
  return result;
}

}  // namespace llamapro
