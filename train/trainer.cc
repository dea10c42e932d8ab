#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "base/units.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/tokenizer.h"
#include "kernels/cpu/blas.h"
#include "model/lineage.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#ifdef LLAMAPRO_HAVE_CUDA
#include "train/cuda_engine.h"
#endif
#include "train/schedule.h"
#include "train/zero.h"

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

// The global gradient norm when tensors are split (tensor parallelism,
// ZeRO-1): every rank's sum of squares of what it holds, tensors that every
// TP rank holds whole counted by TP rank 0 alone, summed over `group`.
absl::StatusOr<double> SplitGradNorm(const std::vector<Parameter*>& held, bool count_whole,
                                     Communicator& group) {
  double sum = 0;
  for (const Parameter* p : held) {
    if (p->split_dim < 0 && !count_whole) continue;
    for (float g : p->grad) sum += static_cast<double>(g) * g;
  }
  LP_RETURN_IF_ERROR(group.AllReduceSum(&sum, 1));
  return std::sqrt(sum);
}

// ClipGradNorm's rule for a norm computed elsewhere.
void ClipToNorm(const std::vector<Parameter*>& params, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double factor = max_norm / (norm + 1e-6);
  if (factor < 1) ScaleGradients(params, static_cast<float>(factor));
}

// The trainable tensors and their optimizer state, whole, on rank 0: what
// the checkpoint writer needs, gathered from TP slices and ZeRO-1 pieces.
struct GatheredModel {
  // Trainable tensors only; frozen slots are empty. On the heap: the
  // optimizer points into it, and a GatheredModel is moved.
  std::unique_ptr<LlamaParams> params = std::make_unique<LlamaParams>();
  std::unique_ptr<Optimizer> optimizer;
};

// Collective over the job (every rank calls it); nullopt except on rank 0.
absl::StatusOr<std::optional<GatheredModel>> GatherForCheckpoint(
    LlamaParams& params, const Optimizer& optimizer, ZeroShards* zero,
    const OptimizerConfig& optimizer_config, MeshCoordinates at, Communicator& tp_comm,
    Communicator& dp_comm) {
  std::vector<Parameter*> trainable = params.Trainable();
  // Each state tensor of each trainable tensor, this TP rank's slice, whole
  // over the DP group; named "<kind>.<tensor>".
  std::vector<std::pair<std::string, std::vector<float>>> states;
  const auto tensors = optimizer.StateTensors();
  if (zero != nullptr) {
    const size_t pieces = zero->piece_tensors().size();
    const size_t kinds = pieces == 0 ? 0 : tensors.size() / pieces;
    for (size_t k = 0; k < kinds; ++k) {
      std::vector<const std::vector<float>*> per_piece;
      for (size_t i = 0; i < pieces; ++i) per_piece.push_back(tensors[i * kinds + k].second);
      const std::string& first = tensors[k].first;
      const std::string kind = first.substr(0, first.find('.'));
      std::vector<std::vector<float>> per_tensor;
      LP_RETURN_IF_ERROR(zero->GatherPerTensor(dp_comm, per_piece, &per_tensor));
      for (size_t i = 0; i < trainable.size(); ++i) {
        states.emplace_back(absl::StrCat(kind, ".", trainable[i]->name), std::move(per_tensor[i]));
      }
    }
  } else {
    for (const auto& [name, values] : tensors) states.emplace_back(name, *values);
  }
  if (at.dp_rank != 0) return std::nullopt;

  // Whole tensors from the TP ranks' slices.
  const int tp = tp_comm.world_size();
  auto whole = [&](const Parameter& p,
                   const std::vector<float>& local) -> absl::StatusOr<std::vector<float>> {
    if (p.split_dim < 0 || tp == 1) return local;
    std::vector<float> all(local.size() * tp);
    LP_RETURN_IF_ERROR(
        tp_comm.AllGather(local.data(), all.data(), std::vector<size_t>(tp, local.size())));
    std::vector<float> full(static_cast<size_t>(p.FullElements()));
    Parameter slice;
    slice.shape = p.shape;
    slice.full_shape = p.FullShape();
    slice.split_dim = p.split_dim;
    for (int k = 0; k < tp; ++k) {
      slice.split_begin = p.shape[p.split_dim] * k;
      PlaceSlice(slice, all.data() + k * local.size(), full.data());
    }
    return full;
  };
  GatheredModel gathered;
  gathered.params->config = params.config;
  gathered.params->blocks.resize(params.blocks.size());
  const std::vector<Parameter*> from = params.Slots(), to = gathered.params->Slots();
  std::map<std::string, Parameter*> by_name;
  for (size_t i = 0; i < from.size(); ++i) {
    to[i]->name = from[i]->name;
    to[i]->shape = from[i]->FullShape();
    to[i]->source_dtype = from[i]->source_dtype;
    to[i]->decay = from[i]->decay;
    if (!from[i]->trainable) continue;
    LP_ASSIGN_OR_RETURN(to[i]->value, whole(*from[i], from[i]->value));
    to[i]->SetTrainable(true);
    by_name[from[i]->name] = from[i];
  }
  LP_ASSIGN_OR_RETURN(gathered.optimizer,
                      MakeOptimizer(optimizer_config, gathered.params->Trainable()));
  for (const auto& [name, values] : states) {
    const Parameter& p = *by_name.at(name.substr(name.find('.') + 1));
    LP_ASSIGN_OR_RETURN(std::vector<float> full, whole(p, values));
    LP_RETURN_IF_ERROR(gathered.optimizer->LoadStateTensor(name, full));
  }
  gathered.optimizer->set_step(optimizer.step());
  if (at.tp_rank != 0) return std::nullopt;
  return gathered;
}

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

std::string DescribeCompute(const TrainPlan& plan) {
  if (!plan.device.empty()) {
    return absl::StrCat("CUDA ", plan.device, ", bf16 mixed precision, recompute ", plan.recompute,
                        "; ", FormatBytes(plan.device_bytes), " allocated on the device");
  }
  return absl::StrCat("CPU, ", plan.shards, " thread", plan.shards == 1 ? "" : "s",
                      " per micro-batch; GEMMs: ", plan.blas);
}

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
  // The device decides the backend (and re-checks precision and recompute).
  LP_RETURN_IF_ERROR(SetDevice(&config, config.device));
  LP_ASSIGN_OR_RETURN(const int cuda_device, DeviceOrdinal(config.device));
  const bool on_cuda = cuda_device >= 0;
#ifdef LLAMAPRO_HAVE_CUDA
  if (on_cuda) LP_RETURN_IF_ERROR(CudaTrainingEngine::CheckSupported(config));
#else
  if (on_cuda) {
    return ConfigError(
        config, "device",
        absl::StrCat(config.device,
                     ": this build has no CUDA backend (build with "
                     "-DLLAMAPRO_CUDA=ON where nvcc exists: docs/build.md); use cpu"));
  }
#endif
  // The mesh: tp consecutive ranks per replica, dp replicas.
  const int tp = config.parallel.tp;
  if (world % tp != 0) {
    return ConfigError(config, "parallel.tp",
                       absl::StrCat(tp, " does not divide the job's ", world, " ranks"));
  }
  const int dp = world / tp;
  if (config.parallel.dp > 0 && config.parallel.dp != dp) {
    return ConfigError(config, "parallel",
                       absl::StrCat("dp ", config.parallel.dp, " x tp ", tp, " = ",
                                    config.parallel.dp * tp, " ranks, but the job runs on ", world,
                                    " (set the job's world size to dp x tp)"));
  }
  const MeshCoordinates at = MeshCoordinates::Of(rank, dp, tp);
  LocalCommunicator local_tp;
  Communicator* tp_comm = &local_tp;
  Communicator* dp_comm = &comm;
  if (tp > 1) {
    if (options.tp_communicator == nullptr || options.dp_communicator == nullptr) {
      return absl::FailedPreconditionError(
          "tensor parallelism (parallel.tp > 1) needs the job's TP and DP group communicators: "
          "run it on workers through the coordinator");
    }
    tp_comm = options.tp_communicator;
    dp_comm = options.dp_communicator;
    if (tp_comm->world_size() != tp || tp_comm->rank() != at.tp_rank ||
        dp_comm->world_size() != dp || dp_comm->rank() != at.dp_rank) {
      return absl::InternalError(absl::StrCat(
          "rank ", rank, ": the group communicators do not match the dp ", dp, " x tp ", tp,
          " mesh (TP rank ", tp_comm->rank(), " of ", tp_comm->world_size(), ", DP rank ",
          dp_comm->rank(), " of ", dp_comm->world_size(), ")"));
    }
  }
  const TensorParallel tensor_parallel{tp_comm, at.tp_rank, tp};

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
  if (const absl::Status split = CheckTensorParallel(model_config, tp); !split.ok()) {
    return ConfigError(config, "parallel.tp", split.message());
  }
  LP_ASSIGN_OR_RETURN(LlamaParams params, LoadLlamaParams(*reader, model_config, {at.tp_rank, tp}));
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
  if (global % (static_cast<int64_t>(dp) * micro) != 0) {
    return ConfigError(config, "batch",
                       absl::StrCat(global, " sequences per step do not split into ", dp,
                                    " data-parallel ranks of whole micro-batches of ", micro));
  }
  const int64_t local_sequences = global / dp;
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
  // ZeRO-1: the optimizer steps this rank's pieces of the trainable tensors.
  std::unique_ptr<ZeroShards> zero;
  std::optional<GradientBucket> bucket;
  if (config.parallel.zero1) {
    int64_t elements = 0;
    for (const Parameter* p : trainable_params) elements += p->NumElements();
    if (elements < dp) {
      return ConfigError(config, "parallel.zero",
                         absl::StrCat(elements, " trainable values cannot be sharded over ", dp,
                                      " data-parallel ranks"));
    }
    zero = std::make_unique<ZeroShards>(trainable_params, dp, at.dp_rank);
  } else if (dp > 1 && !on_cuda) {
    bucket.emplace(trainable_params);
  }
  // The CPU backend: an optimizer over host tensors and a threaded pass.
  // The CUDA backend (engine): both on the device; a host optimizer exists
  // only while a checkpoint is read or written.
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<ParallelTrainingPass> pass;
#ifdef LLAMAPRO_HAVE_CUDA
  std::unique_ptr<CudaTrainingEngine> engine;
  if (on_cuda) {
    LP_ASSIGN_OR_RETURN(Recompute recompute, ParseRecompute(config.recompute));
    LP_ASSIGN_OR_RETURN(engine, CudaTrainingEngine::Create(&params, {.device = cuda_device,
                                                                     .micro_batch = micro,
                                                                     .seq_len = config.data.seq_len,
                                                                     .recompute = recompute,
                                                                     .optimizer = config.optimizer,
                                                                     .nccl = options.nccl}));
    if (resumed) {
      LP_ASSIGN_OR_RETURN(std::unique_ptr<Optimizer> host,
                          MakeOptimizer(config.optimizer, trainable_params));
      LP_RETURN_IF_ERROR(LoadOptimizerState(load_dir, &params, host.get()));
      LP_RETURN_IF_ERROR(engine->UploadOptimizerState(*host));
    }
  }
#endif
  if (!on_cuda) {
    LP_ASSIGN_OR_RETURN(optimizer,
                        MakeOptimizer(config.optimizer, zero ? zero->pieces() : trainable_params));
    if (resumed) LP_RETURN_IF_ERROR(LoadOptimizerState(load_dir, &params, optimizer.get()));
    if (zero) zero->LoadPieceValues();
    pass =
        std::make_unique<ParallelTrainingPass>(&params, micro, config.data.seq_len, config.threads,
                                               /*for_training=*/true, tensor_parallel);
  }

  TrainPlan plan;
  for (const Parameter* p : params.All()) {
    plan.total_parameters += p->FullElements();
    if (p->trainable) plan.trainable_parameters += p->FullElements();
  }
  plan.rank_parameters = params.TotalParameters();
  plan.dp = dp;
  plan.tp = tp;
  plan.zero1 = config.parallel.zero1;
  plan.rank_plan = PlanParallel({.model = model_config,
                                 .trainable_blocks = trainable.blocks,
                                 .embeddings = trainable.embeddings,
                                 .final_norm = trainable.final_norm,
                                 .lm_head = trainable.lm_head && !model_config.tie_word_embeddings,
                                 .seq_len = config.data.seq_len,
                                 .micro_batch = micro,
                                 .global_sequences = global,
                                 .dp = dp,
                                 .tp = tp,
                                 .zero1 = config.parallel.zero1,
                                 .optimizer_states = config.optimizer.name == "adamw" ? 2
                                                     : config.optimizer.momentum > 0  ? 1
                                                                                      : 0,
                                 .backend = on_cuda ? ParallelPlanInput::Backend::kCudaMixed
                                                    : ParallelPlanInput::Backend::kCpu});
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
  if (pass) {
    plan.optimizer_state_bytes = optimizer->StateBytes();
    plan.activation_bytes = pass->ActivationBytes();
    plan.flops_per_token = pass->flops_per_token();
    plan.blas = cpu::BlasDescription();
    plan.shards = pass->shards();
  }
#ifdef LLAMAPRO_HAVE_CUDA
  if (engine) {
    plan.optimizer_state_bytes = engine->optimizer_state_bytes();
    plan.activation_bytes = static_cast<uint64_t>(engine->pass().memory().activation_bytes);
    plan.flops_per_token = engine->pass().flops_per_token();
    plan.device = engine->device_description();
    plan.device_bytes = engine->pass().memory().total() + engine->optimizer_state_bytes();
    plan.recompute = config.recompute;
  }
#endif
  plan.start_step = state.step;
  plan.total_steps = config.steps;
  plan.resumed = resumed.has_value();
  plan.resumed_from = resumed ? load_dir : "";
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
  // Called by every rank; rank 0 writes (the others return "").
  auto write_checkpoint = [&]() -> absl::StatusOr<std::string> {
    std::optional<GatheredModel> gathered;
#ifdef LLAMAPRO_HAVE_CUDA
    if (engine) {
      // Every rank holds the same weights and state: rank 0 downloads and writes.
      if (!leader) return std::string();
      LP_ASSIGN_OR_RETURN(std::unique_ptr<Optimizer> host, engine->DownloadForCheckpoint());
      LP_ASSIGN_OR_RETURN(std::string dir, WriteTrainingCheckpoint(checkpoint_options, state,
                                                                   params, *host, *reader));
      if (options.on_checkpoint) options.on_checkpoint(dir);
      return dir;
    }
#endif
    if (tp > 1 || zero) {
      LP_ASSIGN_OR_RETURN(gathered, GatherForCheckpoint(params, *optimizer, zero.get(),
                                                        config.optimizer, at, *tp_comm, *dp_comm));
    }
    if (!leader) return std::string();
    LP_ASSIGN_OR_RETURN(
        std::string dir,
        WriteTrainingCheckpoint(checkpoint_options, state, gathered ? *gathered->params : params,
                                gathered ? *gathered->optimizer : *optimizer, *reader));
    if (options.on_checkpoint) options.on_checkpoint(dir);
    return dir;
  };
  // Replica 0 evaluates (its TP ranks together); rank 0 reports.
  auto evaluate = [&]() -> absl::Status {
    if (at.dp_rank != 0) return comm.Barrier();
    EvalReport report;
    report.step = state.step;
    nlohmann::ordered_json record = {{"step", state.step}};
    for (const std::string& corpus : config.eval.corpora) {
      PerplexityOptions eval_options{.seq_len = config.data.seq_len,
                                     .max_windows = config.eval.windows,
                                     .batch = micro,
                                     .tp = tensor_parallel};
#ifdef LLAMAPRO_HAVE_CUDA
      if (engine) {
        eval_options.batch_evaluator = [&](std::span<const int32_t> tokens,
                                           std::span<const uint8_t> mask) {
          return engine->Evaluate(tokens, mask);
        };
      }
#endif
      LP_ASSIGN_OR_RETURN(PerplexityResult result,
                          HeldOutPerplexity(&params, *data, corpus, eval_options));
      record["eval"][corpus] = {
          {"nll", result.nll}, {"perplexity", result.perplexity}, {"targets", result.targets}};
      report.results.push_back(std::move(result));
    }
    if (leader) {
      metrics.Write(record);
      if (options.on_eval) options.on_eval(report);
    }
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
    // The TP ranks of a replica read the same samples.
    LP_RETURN_IF_ERROR(data->ReadSamples(sampler_options, state.next_sample + at.dp_rank, dp,
                                         local_sequences, &samples));
    int64_t targets = 0;
    for (int64_t s = 0; s < local_sequences; ++s) {
      const Sample& sample = samples[s];
      std::copy(sample.tokens.begin(), sample.tokens.end(), tokens.begin() + s * width);
      std::copy(sample.loss_mask.begin(), sample.loss_mask.end(), mask.begin() + s * width);
      for (int64_t t = 1; t < width; ++t) targets += sample.loss_mask[t] != 0 ? 1 : 0;
    }
    LP_RETURN_IF_ERROR(dp_comm->AllReduceSum(&targets, 1));
#ifdef LLAMAPRO_HAVE_CUDA
    if (engine) LP_RETURN_IF_ERROR(engine->ZeroGradients());
#endif
    if (pass) ZeroGradients(trainable_params);
    const float scale = targets > 0 ? 1.0f / static_cast<float>(targets) : 0.0f;
    double loss = 0;
    const int64_t micro_batches = local_sequences / micro;
    for (int64_t m = 0; m < micro_batches; ++m) {
      const size_t offset = static_cast<size_t>(m * micro * width);
      const size_t size = static_cast<size_t>(micro * width);
      const auto micro_tokens = std::span<const int32_t>(tokens).subspan(offset, size);
      const auto micro_mask = std::span<const uint8_t>(mask).subspan(offset, size);
      LossSum sum;
#ifdef LLAMAPRO_HAVE_CUDA
      if (engine) {
        LP_ASSIGN_OR_RETURN(
            sum, engine->ForwardBackward(micro_tokens, micro_mask, scale, m + 1 == micro_batches));
      }
#endif
      if (pass) {
        LP_ASSIGN_OR_RETURN(sum, pass->ForwardBackward(micro_tokens, micro_mask, scale));
      }
      loss += sum.loss;
    }
    // Every TP rank of a replica has the same loss sum.
    if (dp > 1) LP_RETURN_IF_ERROR(dp_comm->AllReduceSum(&loss, 1));
    double grad_norm = 0;
    const double clip = config.optimizer.clip_grad_norm;
#ifdef LLAMAPRO_HAVE_CUDA
    if (engine) {
      // All-reduced over NCCL during the backward; the norm and clip on the device.
      LP_ASSIGN_OR_RETURN(grad_norm, engine->FinishGradients());
    }
#endif
    if (zero) {
      LP_RETURN_IF_ERROR(zero->ReduceScatterGradients(*dp_comm));
      const std::vector<Parameter*> pieces = zero->pieces();
      LP_ASSIGN_OR_RETURN(grad_norm, SplitGradNorm(pieces, at.tp_rank == 0, comm));
      ClipToNorm(pieces, grad_norm, clip);
    } else if (pass) {
      if (bucket) LP_RETURN_IF_ERROR(bucket->AllReduce(*dp_comm));
      if (tp > 1) {
        LP_ASSIGN_OR_RETURN(grad_norm, SplitGradNorm(trainable_params, at.tp_rank == 0, *tp_comm));
        ClipToNorm(trainable_params, grad_norm, clip);
      } else {
        grad_norm =
            clip > 0 ? ClipGradNorm(trainable_params, clip) : GlobalGradNorm(trainable_params);
      }
    }
    const double lr = LearningRate(config.schedule, state.step, config.steps);
#ifdef LLAMAPRO_HAVE_CUDA
    if (engine) LP_RETURN_IF_ERROR(engine->Step(lr));
#endif
    if (optimizer) optimizer->Step(lr);
    if (zero) LP_RETURN_IF_ERROR(zero->AllGatherValues(*dp_comm));
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
      LP_ASSIGN_OR_RETURN(std::string written, write_checkpoint());
      if (leader) summary.last_checkpoint = written;
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
