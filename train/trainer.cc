#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/tokenizer.h"
#include "kernels/cpu/blas.h"
#include "model/lineage.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#include "train/schedule.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string MixtureString(const std::vector<MixtureComponent>& mixture) {
  std::vector<std::string> parts;
  parts.reserve(mixture.size());
  for (const MixtureComponent& c : mixture) parts.push_back(absl::StrCat(c.corpus, ":", c.weight));
  return absl::StrJoin(parts, ",");
}

absl::Status ConfigError(const JobConfig& config, absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(config.source, ": ", key, ": ", what));
}

// The trainable set the config asks for, against this model.
absl::StatusOr<TrainableSet> ResolveTrainable(const JobConfig& config, const LlamaParams& params,
                                              const std::optional<ExpansionRecord>& record) {
  const int64_t layers = static_cast<int64_t>(params.blocks.size());
  TrainableSet set;
  set.blocks.assign(layers, false);
  TrainableConfig::Mode mode = config.trainable.mode;
  if (mode == TrainableConfig::Mode::kExpanded && !config.trainable.explicit_ && !record) {
    mode = TrainableConfig::Mode::kAll;  // The default for a model never expanded.
  }
  switch (mode) {
    case TrainableConfig::Mode::kExpanded: {
      if (!record || record->NewBlocks().empty()) {
        return ConfigError(config, "trainable",
                           absl::StrCat("'expanded' needs an expanded model, but ", config.model,
                                        " has no ", kExpansionFile,
                                        " (expand it with llamaproctl expand, or use 'all' or "
                                        "{layers: [...]})"));
      }
      for (int64_t b : record->NewBlocks()) set.blocks[b] = true;
      break;
    }
    case TrainableConfig::Mode::kAll:
      set.blocks.assign(layers, true);
      set.embeddings = set.final_norm = set.lm_head = true;
      break;
    case TrainableConfig::Mode::kLora:
      // The blocks that get adapters (nothing else trains).
      if (!config.lora.new_blocks_only) {
        set.blocks.assign(layers, true);
      } else if (!record || record->NewBlocks().empty()) {
        return ConfigError(config, "lora.blocks",
                           absl::StrCat("'new' needs an expanded model, but ", config.model,
                                        " has no ", kExpansionFile));
      } else {
        for (int64_t b : record->NewBlocks()) set.blocks[b] = true;
      }
      return set;
    case TrainableConfig::Mode::kMoe:
      set.blocks.assign(layers, true);  // Every block's second expert.
      return set;
    case TrainableConfig::Mode::kLayers:
      for (int64_t b : config.trainable.layers) {
        if (b < 0 || b >= layers) {
          return ConfigError(config, "trainable.layers",
                             absl::StrCat("block ", b, " does not exist: the model has ", layers,
                                          " blocks (0..", layers - 1, ")"));
        }
        set.blocks[b] = true;
      }
      set.embeddings = config.trainable.embeddings;
      set.final_norm = config.trainable.norm;
      set.lm_head = config.trainable.lm_head;
      break;
  }
  if (params.config.tie_word_embeddings && set.lm_head != set.embeddings) {
    if (mode != TrainableConfig::Mode::kLayers) {
      set.lm_head = set.embeddings;
    } else {
      return ConfigError(config, "trainable",
                         "this model ties lm_head to the embedding: set embeddings and lm_head "
                         "alike");
    }
  }
  return set;
}

// The store must hold ids of the model's tokenizer.
absl::Status CheckTokenizer(const JobConfig& config, DataSource& data, const LlamaConfig& model) {
  LP_ASSIGN_OR_RETURN(StoreTokenizer bound, data.Tokenizer());
  const std::string model_tokenizer = JoinPath(config.model, kTokenizerModelFile);
  if (PathExists(model_tokenizer)) {
    LP_ASSIGN_OR_RETURN(std::string fingerprint, Sha256File(model_tokenizer));
    if (fingerprint != bound.fingerprint) {
      return ConfigError(config, "data.store",
                         absl::StrCat("the store was tokenized with ", bound.path,
                                      ", not with the model's ", model_tokenizer,
                                      " (different files): re-ingest with the model's tokenizer"));
    }
  } else if (bound.vocab_size > model.vocab_size) {
    return ConfigError(config, "data.store",
                       absl::StrCat("the store's tokenizer has ", bound.vocab_size,
                                    " ids but the model's vocabulary only ", model.vocab_size));
  }
  return absl::OkStatus();
}

// All trainable gradients in one buffer, for one all-reduce per step.
class GradientBucket {
 public:
  explicit GradientBucket(std::vector<Parameter*> params) : params_(std::move(params)) {
    size_t n = 0;
    for (Parameter* p : params_) n += p->grad.size();
    flat_.resize(n);
  }
  absl::Status AllReduce(Communicator& communicator) {
    size_t offset = 0;
    for (Parameter* p : params_) {
      std::copy(p->grad.begin(), p->grad.end(), flat_.begin() + offset);
      offset += p->grad.size();
    }
    LP_RETURN_IF_ERROR(communicator.AllReduceSum(flat_.data(), flat_.size()));
    offset = 0;
    for (Parameter* p : params_) {
      std::copy(flat_.begin() + offset, flat_.begin() + offset + p->grad.size(), p->grad.begin());
      offset += p->grad.size();
    }
    return absl::OkStatus();
  }

 private:
  std::vector<Parameter*> params_;
  std::vector<float> flat_;
};

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : out_(path, std::ios::app) {}
  bool ok() const { return out_.good(); }
  void Write(const nlohmann::ordered_json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

}  // namespace

absl::StatusOr<TrainSummary> RunTraining(const JobConfig& job_config, const TrainOptions& options) {
  const auto start = Clock::now();
  // `model` may name an earlier run's output dir (a pipeline: sft after
  // pretrain): train from its latest checkpoint.
  JobConfig config = job_config;
  LP_ASSIGN_OR_RETURN(config.model, ResolveModelDir(config.model));
  LocalCommunicator local;
  Communicator& comm = options.communicator != nullptr ? *options.communicator : local;
  const int rank = comm.rank();
  const int world = comm.world_size();
  const bool leader = rank == 0;
  if (config.device != "cpu") {
    return ConfigError(config, "device", "only 'cpu' is available in this build");
  }

  // Where to start: the model, or the latest checkpoint of this run.
  std::string load_dir = config.model;
  std::optional<TrainerState> resumed;
  const bool has_latest = PathExists(JoinPath(config.output_dir, kLatestFile));
  if (options.resume) {
    LP_ASSIGN_OR_RETURN(load_dir, LatestCheckpoint(config.output_dir));
    LP_ASSIGN_OR_RETURN(TrainerState state, LoadTrainerState(load_dir));
    resumed = state;
  } else if (has_latest) {
    return absl::FailedPreconditionError(absl::StrCat(
        config.output_dir, " already holds checkpoints of a run (see its '", kLatestFile,
        "'): pass --resume to continue it, or choose another "
        "output_dir"));
  }

  // With LoRA the base weights never change, and a checkpoint holds them
  // merged with the adapters: the weights always come from the run's model,
  // the adapters of a resumed run from its optimizer state.
  const bool lora = config.trainable.mode == TrainableConfig::Mode::kLora;
  const std::string weights_dir = lora ? config.model : load_dir;
  LP_ASSIGN_OR_RETURN(LlamaConfig model_config, LoadLlamaConfig(weights_dir));
  LP_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(weights_dir));
  LP_ASSIGN_OR_RETURN(LlamaParams params, LoadLlamaParams(*reader, model_config));
  LP_ASSIGN_OR_RETURN(std::optional<ExpansionRecord> record,
                      LoadExpansionRecord(weights_dir, model_config.num_hidden_layers));
  LP_ASSIGN_OR_RETURN(TrainableSet trainable, ResolveTrainable(config, params, record));
  if (lora) {
    const absl::Status added = AddLoraAdapters({.rank = config.lora.rank,
                                                .alpha = config.lora.alpha,
                                                .targets = config.lora.targets,
                                                .blocks = trainable.blocks,
                                                .seed = config.data.seed},
                                               &params);
    if (!added.ok()) return ConfigError(config, "lora", added.message());
  } else if (config.trainable.mode == TrainableConfig::Mode::kMoe) {
    const absl::Status added = AddMoeExperts(&params);
    if (!added.ok()) return ConfigError(config, "trainable", added.message());
  } else {
    LP_RETURN_IF_ERROR(ApplyTrainableSet(trainable, &params));
  }
  if (config.data.seq_len > model_config.max_position_embeddings) {
    return ConfigError(config, "data.seq_len",
                       absl::StrCat(config.data.seq_len,
                                    " exceeds the model's "
                                    "max_position_embeddings (",
                                    model_config.max_position_embeddings, ")"));
  }

  std::unique_ptr<TokenStore> store;
  std::unique_ptr<DataSource> local_data;
  DataSource* data = options.data;
  if (data == nullptr) {
    if (config.data.store.empty()) {
      return ConfigError(config, "data.store", "is required to train outside a coordinator");
    }
    LP_ASSIGN_OR_RETURN(store, TokenStore::Open(config.data.store, TokenStore::Mode::kReadOnly));
    local_data = std::make_unique<StoreDataSource>(store.get());
    data = local_data.get();
  }
  LP_RETURN_IF_ERROR(CheckTokenizer(config, *data, model_config));
  const int64_t global = config.batch.global_sequences;
  const int64_t micro = config.batch.micro_batch;
  if (global % (static_cast<int64_t>(world) * micro) != 0) {
    return ConfigError(config, "batch",
                       absl::StrCat(global, " sequences per step do not split into ", world,
                                    " ranks of whole micro-batches of ", micro));
  }
  const int64_t local_sequences = global / world;
  const int64_t width = config.data.seq_len + 1;
  TrainerState state;
  state.total_steps = config.steps;
  state.seed = config.data.seed;
  state.seq_len = config.data.seq_len;
  state.global_sequences = global;
  state.mixture = MixtureString(config.data.mixture);
  state.optimizer = config.optimizer.name;
  for (Parameter* p : params.Trainable()) state.trainable.push_back(p->name);
  if (resumed) {
    auto differs = [&](absl::string_view key, const std::string& now, const std::string& then) {
      return ConfigError(
          config, key,
          absl::StrCat("is ", now, " but the checkpoint in ", load_dir, " was trained with ", then,
                       ": resume with the same data and batch settings"));
    };
    if (resumed->seq_len != state.seq_len) {
      return differs("data.seq_len", absl::StrCat(state.seq_len), absl::StrCat(resumed->seq_len));
    }
    if (resumed->seed != state.seed) {
      return differs("data.seed", absl::StrCat(state.seed), absl::StrCat(resumed->seed));
    }
    if (resumed->mixture != state.mixture) {
      return differs("data.mixture", state.mixture, resumed->mixture);
    }
    if (resumed->global_sequences != global) {
      return differs("batch", absl::StrCat(global, " sequences per step"),
                     absl::StrCat(resumed->global_sequences));
    }
    state.step = resumed->step;
    state.next_sample = resumed->next_sample;
    state.tokens = resumed->tokens;
    state.learning_rate = resumed->learning_rate;
    state.loss = resumed->loss;
    if (state.step >= config.steps) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the run in ", config.output_dir, " already finished its ", config.steps, " steps"));
    }
  }

  SamplerOptions sampler_options{
      .mixture = config.data.mixture, .seq_len = config.data.seq_len, .seed = config.data.seed};
  std::vector<Parameter*> trainable_params = params.Trainable();
  GradientBucket bucket(trainable_params);
  LP_ASSIGN_OR_RETURN(auto optimizer, MakeOptimizer(config.optimizer, trainable_params));
  if (resumed) LP_RETURN_IF_ERROR(LoadOptimizerState(load_dir, &params, optimizer.get()));
  ParallelTrainingPass pass(&params, micro, config.data.seq_len, config.threads);

  TrainPlan plan;
  plan.total_parameters = params.TotalParameters();
  plan.trainable_parameters = params.TrainableParameters();
  std::vector<int64_t> blocks;
  for (size_t b = 0; b < trainable.blocks.size(); ++b) {
    if (trainable.blocks[b]) blocks.push_back(static_cast<int64_t>(b));
  }
  const std::string where =
      blocks.size() == trainable.blocks.size()
          ? "all blocks"
          : (blocks.empty() ? "no blocks" : "blocks " + absl::StrJoin(blocks, ", "));
  plan.trainable_blocks.push_back(
      lora ? absl::StrCat("LoRA rank ", config.lora.rank, " alpha ", config.lora.alpha, " on ",
                          absl::StrJoin(config.lora.targets, "/"), " of ", where)
      : config.trainable.mode == TrainableConfig::Mode::kMoe
          ? absl::StrCat("MoE: the second expert and mixing weights of ", where)
          : where);
  if (trainable.embeddings) plan.trainable_blocks.push_back("embeddings");
  if (trainable.final_norm) plan.trainable_blocks.push_back("final norm");
  if (trainable.lm_head && !model_config.tie_word_embeddings) {
    plan.trainable_blocks.push_back("lm_head");
  }
  plan.optimizer_state_bytes = optimizer->StateBytes();
  plan.activation_bytes = pass.ActivationBytes();
  plan.flops_per_token = pass.flops_per_token();
  plan.start_step = state.step;
  plan.total_steps = config.steps;
  plan.resumed = resumed.has_value();
  plan.resumed_from = resumed ? load_dir : "";
  plan.blas = cpu::BlasDescription();
  plan.shards = pass.shards();
  if (options.on_plan) options.on_plan(plan);

  LP_RETURN_IF_ERROR(MakeDirs(config.output_dir));
  MetricsLog metrics(leader ? JoinPath(config.output_dir, "metrics.jsonl") : "/dev/null");
  if (!metrics.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", JoinPath(config.output_dir, "metrics.jsonl")));
  }
  CheckpointWriteOptions checkpoint_options{.output_dir = config.output_dir,
                                            .keep = static_cast<int>(config.checkpoint.keep),
                                            .merge_lora = config.lora.merge};
  auto write_checkpoint = [&]() -> absl::StatusOr<std::string> {
    LP_ASSIGN_OR_RETURN(std::string dir, WriteTrainingCheckpoint(checkpoint_options, state, params,
                                                                 *optimizer, *reader));
    if (options.on_checkpoint) options.on_checkpoint(dir);
    return dir;
  };
  auto evaluate = [&]() -> absl::Status {
    if (!leader) return comm.Barrier();
    EvalReport report;
    report.step = state.step;
    nlohmann::ordered_json record = {{"step", state.step}};
    for (const std::string& corpus : config.eval.corpora) {
      PerplexityOptions eval_options{
          .seq_len = config.data.seq_len, .max_windows = config.eval.windows, .batch = micro};
      LP_ASSIGN_OR_RETURN(PerplexityResult result,
                          HeldOutPerplexity(&params, *data, corpus, eval_options));
      record["eval"][corpus] = {
          {"nll", result.nll}, {"perplexity", result.perplexity}, {"targets", result.targets}};
      report.results.push_back(std::move(result));
    }
    metrics.Write(record);
    if (options.on_eval) options.on_eval(report);
    return comm.Barrier();
  };

  TrainSummary summary;
  std::vector<int32_t> tokens(local_sequences * width);
  std::vector<uint8_t> mask(local_sequences * width);
  std::vector<Sample> samples;
  double step_seconds_total = 0;
  const int64_t stop_at = options.stop_after_steps > 0
                              ? std::min(config.steps, state.step + options.stop_after_steps)
                              : config.steps;
  if (config.eval.enabled() && state.step == 0) LP_RETURN_IF_ERROR(evaluate());
  while (state.step < stop_at) {
    if (options.cancel != nullptr && options.cancel->load()) {
      return absl::CancelledError(absl::StrCat("cancelled at step ", state.step));
    }
    const auto step_start = Clock::now();
    // This rank's share of the global batch: every world-th sample.
    LP_RETURN_IF_ERROR(data->ReadSamples(sampler_options, state.next_sample + rank, world,
                                         local_sequences, &samples));
    int64_t targets = 0;
    for (int64_t s = 0; s < local_sequences; ++s) {
      const Sample& sample = samples[s];
      std::copy(sample.tokens.begin(), sample.tokens.end(), tokens.begin() + s * width);
      std::copy(sample.loss_mask.begin(), sample.loss_mask.end(), mask.begin() + s * width);
      for (int64_t t = 1; t < width; ++t) targets += sample.loss_mask[t] != 0 ? 1 : 0;
    }
    LP_RETURN_IF_ERROR(comm.AllReduceSum(&targets, 1));
    ZeroGradients(trainable_params);
    const float scale = targets > 0 ? 1.0f / static_cast<float>(targets) : 0.0f;
    double loss = 0;
    for (int64_t m = 0; m < local_sequences / micro; ++m) {
      const size_t offset = static_cast<size_t>(m * micro * width);
      const size_t size = static_cast<size_t>(micro * width);
      LP_ASSIGN_OR_RETURN(
          LossSum sum,
          pass.ForwardBackward(std::span<const int32_t>(tokens).subspan(offset, size),
                               std::span<const uint8_t>(mask).subspan(offset, size), scale));
      loss += sum.loss;
    }
    if (world > 1) {
      LP_RETURN_IF_ERROR(comm.AllReduceSum(&loss, 1));
      LP_RETURN_IF_ERROR(bucket.AllReduce(comm));
    }
    const double grad_norm = config.optimizer.clip_grad_norm > 0
                                 ? ClipGradNorm(trainable_params, config.optimizer.clip_grad_norm)
                                 : GlobalGradNorm(trainable_params);
    const double lr = LearningRate(config.schedule, state.step, config.steps);
    optimizer->Step(lr);
    ++state.step;
    state.next_sample += global;
    state.tokens += global * config.data.seq_len;
    state.learning_rate = lr;
    state.loss = targets > 0 ? loss / static_cast<double>(targets) : 0.0;
    const double seconds = Since(step_start);
    step_seconds_total += seconds;
    ++summary.steps_run;

    TrainProgress progress{.step = state.step,
                           .total_steps = config.steps,
                           .loss = state.loss,
                           .learning_rate = lr,
                           .grad_norm = grad_norm,
                           .tokens = state.tokens,
                           .tokens_per_second = global * config.data.seq_len / seconds,
                           .seconds = Since(start)};
    progress.eta_seconds =
        step_seconds_total / summary.steps_run * static_cast<double>(config.steps - state.step);
    if (state.step % config.log_interval == 0 || state.step == stop_at) {
      if (leader)
        metrics.Write({{"step", state.step},
                       {"loss", state.loss},
                       {"lr", lr},
                       {"grad_norm", grad_norm},
                       {"tokens", state.tokens},
                       {"tokens_per_second", progress.tokens_per_second},
                       {"seconds", progress.seconds}});
      if (options.on_step) options.on_step(progress);
    }
    if (!std::isfinite(state.loss)) {
      // Keep the last good checkpoint: write nothing from a diverged state.
      return absl::InternalError(absl::StrCat("the loss is ", state.loss, " at step ", state.step,
                                              ": training diverged (lower optimizer.lr?)"));
    }
    if (config.eval.enabled() && state.step % config.eval.interval == 0) {
      LP_RETURN_IF_ERROR(evaluate());
    }
    const bool interval =
        config.checkpoint.interval > 0 && state.step % config.checkpoint.interval == 0;
    if (interval || state.step == stop_at) {
      if (leader) {
        LP_ASSIGN_OR_RETURN(summary.last_checkpoint, write_checkpoint());
      }
      LP_RETURN_IF_ERROR(comm.Barrier());
    }
  }
  summary.final_step = state.step;
  summary.final_loss = state.loss;
  summary.tokens_per_second =
      step_seconds_total > 0 ? summary.steps_run * global * config.data.seq_len / step_seconds_total
                             : 0;
  return summary;
}

}  // namespace llamapro
