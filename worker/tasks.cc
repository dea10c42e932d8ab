#include "worker/tasks.h"

#include <algorithm>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "base/units.h"
#include "data/tokenizer.h"
#include "eval/choice.h"
#include "eval/code.h"
#include "eval/generate.h"
#include "eval/jsonl.h"
#include "eval/ppl.h"
#include "eval/results.h"
#include "eval/shift.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/expand.h"
#ifdef LLAMAPRO_HAVE_CUDA
#include "train/nccl_communicator.h"
#endif
#include "model/llama_params.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace llamapro::worker {
namespace {

using Clock = std::chrono::steady_clock;

void Log(const TaskHooks& hooks, absl::string_view line) {
  if (hooks.log) hooks.log(line);
}

void UpdateProgress(const TaskHooks& hooks, const std::function<void(v1::Progress*)>& update) {
  if (hooks.progress) hooks.progress(update);
}

bool Cancelled(const TaskEnvironment& environment) {
  return environment.cancel != nullptr && environment.cancel->load();
}

// Paths in the spec are absolute (the coordinator resolves them); a relative
// one is taken to be inside the data dir all the same.
std::string Resolve(const std::string& path, const std::string& data_dir) {
  if (path.empty() || path.front() == '/' || data_dir.empty()) return path;
  return JoinPath(data_dir, path);
}

absl::Status SpecError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("spec.", field, ": ", what));
}

// A communicator whose every error is one the coordinator restarts the
// attempt for (a peer gone, a timeout: the attempt is over, not the job).
class RestartableCommunicator : public Communicator {
 public:
  explicit RestartableCommunicator(std::unique_ptr<Communicator> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  absl::Status AllReduceSum(float* data, size_t n) override {
    return AsRestartable(inner_->AllReduceSum(data, n));
  }
  absl::Status AllReduceSum(double* data, size_t n) override {
    return AsRestartable(inner_->AllReduceSum(data, n));
  }
  absl::Status AllReduceSum(int64_t* data, size_t n) override {
    return AsRestartable(inner_->AllReduceSum(data, n));
  }
  absl::Status AllGather(const float* in, float* out, const std::vector<size_t>& counts) override {
    return AsRestartable(inner_->AllGather(in, out, counts));
  }
  absl::Status ReduceScatterSum(float* data, size_t n) override {
    return AsRestartable(inner_->ReduceScatterSum(data, n));
  }
  absl::Status Barrier() override { return AsRestartable(inner_->Barrier()); }

 private:
  std::unique_ptr<Communicator> inner_;
};

// --- EXPAND --------------------------------------------------------------------------

absl::StatusOr<TaskResult> RunExpand(const v1::Assignment& assignment, const TaskHooks& hooks) {
  const v1::ExpandJob& job = assignment.spec().expand();
  if (job.model().empty()) return SpecError("expand.model", "is required");
  if (job.out().empty()) return SpecError("expand.out", "is required");
  ExpandOptions options;
  LP_ASSIGN_OR_RETURN(options.model_dir,
                      ResolveModelDir(Resolve(job.model(), assignment.data_dir())));
  options.out_dir = Resolve(job.out(), assignment.data_dir());
  const std::string layout = job.layout().empty() ? "interleaved" : job.layout();
  absl::StatusOr<ExpansionLayout> parsed = ParseLayout(layout);
  if (!parsed.ok()) return SpecError("expand.layout", parsed.status().message());
  options.spec.layout = *parsed;
  options.spec.add_blocks = job.add_blocks();
  options.spec.groups = job.groups();
  options.spec.positions.assign(job.positions().begin(), job.positions().end());
  if (job.dtype() == "f32") {
    options.dtype = DType::kF32;
  } else if (job.dtype() == "bf16") {
    options.dtype = DType::kBF16;
  } else if (job.dtype() == "f16") {
    options.dtype = DType::kF16;
  } else if (!job.dtype().empty() && job.dtype() != "keep") {
    return SpecError("expand.dtype",
                     absl::StrCat("must be keep, f32, bf16 or f16, got \"", job.dtype(), "\""));
  }
  options.verify = job.verify();
  // A restarted attempt may find the output of the aborted one (the
  // coordinator lets no other active job write this directory).
  options.force = job.force() || assignment.attempt() > 1;
  Log(hooks, absl::StrCat("expand ", options.model_dir, " -> ", options.out_dir, " (", layout,
                          ", add ", job.add_blocks(), " blocks)"));
  options.progress = [&hooks](const ExpandProgress& p) {
    if (p.phase == "verify") {
      Log(hooks, "expand: verifying the logits of both models on probe sequences");
      return;
    }
    UpdateProgress(hooks, [&p](v1::Progress* progress) {
      progress->set_step(p.tensors_done);
      progress->set_total_steps(p.tensors_total);
      if (p.seconds > 0 && p.bytes_done > 0) {
        const double rate = static_cast<double>(p.bytes_done) / p.seconds;
        progress->set_eta_seconds(static_cast<double>(p.bytes_total - p.bytes_done) / rate);
      }
    });
  };
  LP_ASSIGN_OR_RETURN(ExpandResult result, ExpandCheckpoint(options));
  UpdateProgress(hooks, [&](v1::Progress* progress) {
    progress->set_step(result.tensors);
    progress->set_total_steps(result.tensors);
    progress->set_eta_seconds(0);
    progress->set_checkpoint(options.out_dir);
  });
  Log(hooks,
      absl::StrCat("expanded: ", result.plan.source_layers, " -> ", result.plan.target_layers(),
                   " blocks, new blocks ", absl::StrJoin(result.plan.new_blocks, ", "), "; ",
                   FormatBytes(result.bytes_written), " in ", result.seconds, " s",
                   result.verify ? "; logits verified bit-identical" : ""));
  return TaskResult{};
}

// --- EVAL ----------------------------------------------------------------------------

// choice, generate, code, shift (docs/eval.md): the model in memory, the
// results JSON beside it (or where `results` says), the headline numbers as
// the job's result.
absl::StatusOr<TaskResult> RunTaskEval(const v1::Assignment& assignment,
                                       const TaskEnvironment& environment, const TaskHooks& hooks) {
  const v1::EvalJob& job = assignment.spec().eval();
  const std::string& task = job.task();
  const std::string& data_dir = assignment.data_dir();
  if (environment.threads > 0) cpu::SetNumThreads(environment.threads);
  LP_ASSIGN_OR_RETURN(const std::string model_dir, ResolveModelDir(Resolve(job.model(), data_dir)));
  LP_ASSIGN_OR_RETURN(InferenceModel model, LoadInferenceModel(model_dir, /*need_tokenizer=*/true));
  const auto progress = [&](int64_t done, int64_t total) {
    UpdateProgress(hooks, [&](v1::Progress* p) {
      p->set_step(done);
      p->set_total_steps(total);
    });
  };
  SamplingOptions sampling;
  if (job.max_tokens() > 0) sampling.max_tokens = job.max_tokens();
  sampling.temperature = job.temperature();
  sampling.top_p = job.top_p() > 0 ? job.top_p() : 1;
  sampling.seed = job.seed();
  sampling.stop.assign(job.stop().begin(), job.stop().end());
  nlohmann::ordered_json out = {{"task", task}, {"model", model_dir}};
  std::string input;
  TaskResult result;
  if (task == "choice") {
    input = Resolve(job.tasks(), data_dir);
    LP_ASSIGN_OR_RETURN(std::vector<ChoiceQuestion> questions, ReadChoiceTask(input));
    std::vector<ChoiceQuestion> fewshot_file;
    const std::vector<ChoiceQuestion>* fewshot = &questions;
    if (!job.fewshot().empty()) {
      LP_ASSIGN_OR_RETURN(fewshot_file, ReadChoiceTask(Resolve(job.fewshot(), data_dir)));
      fewshot = &fewshot_file;
    }
    ChoiceOptions options{.shots = job.shots(),
                          .seed = job.seed(),
                          .limit = job.limit(),
                          .cancel = environment.cancel};
    LP_ASSIGN_OR_RETURN(ChoiceResult r,
                        EvaluateChoice(model, questions, *fewshot, options, progress));
    out.update({{"tasks", input}, {"shots", job.shots()}, {"seed", job.seed()}});
    out.update(ToJson(r));
    result.result = Headline(r);
  } else if (task == "code") {
    input = Resolve(job.tasks(), data_dir);
    LP_ASSIGN_OR_RETURN(std::vector<CodeTask> tasks, ReadCodeTasks(input));
    CodeOptions options;
    if (job.max_tokens() > 0) options.sampling.max_tokens = job.max_tokens();
    options.sampling.temperature = sampling.temperature;
    options.sampling.top_p = sampling.top_p;
    options.sampling.seed = sampling.seed;
    if (!sampling.stop.empty()) options.sampling.stop = sampling.stop;
    options.samples = std::max(1, job.samples());
    if (job.timeout() > 0) {
      options.limits.wall_seconds = job.timeout();
      options.limits.cpu_seconds = job.timeout();
    }
    options.limit = job.limit();
    options.cancel = environment.cancel;
    LP_ASSIGN_OR_RETURN(CodeResult r, EvaluateCode(model, tasks, options, progress));
    out.update({{"tasks", input}, {"samples", options.samples}});
    out.update(ToJson(r));
    result.result = Headline(r);
  } else if (task == "shift") {
    input = Resolve(job.prompts(), data_dir);
    LP_ASSIGN_OR_RETURN(std::vector<std::string> prompts, ReadPrompts(input));
    LP_ASSIGN_OR_RETURN(const std::string base_dir, ResolveModelDir(Resolve(job.base(), data_dir)));
    LP_ASSIGN_OR_RETURN(InferenceModel base, LoadInferenceModel(base_dir, false));
    ShiftOptions options{.limit = job.limit(), .cancel = environment.cancel};
    if (job.max_tokens() > 0) options.max_tokens = job.max_tokens();
    LP_ASSIGN_OR_RETURN(ShiftResult r, TokenShift(model, base, prompts, options, progress));
    out.update({{"base", base_dir}, {"prompts", input}});
    out.update(ToJson(r));
    result.result = Headline(r);
  } else if (task == "generate") {
    input = Resolve(job.prompts(), data_dir);
    LP_ASSIGN_OR_RETURN(std::vector<std::string> prompts, ReadPrompts(input));
    if (job.limit() > 0 && static_cast<int64_t>(prompts.size()) > job.limit()) {
      prompts.resize(job.limit());
    }
    nlohmann::ordered_json outputs = nlohmann::ordered_json::array();
    int64_t tokens = 0;
    double seconds = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (Cancelled(environment)) {
        return absl::CancelledError(absl::StrCat("generation cancelled after ", i, " prompts"));
      }
      LP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptIds(*model.tokenizer, prompts[i]));
      LP_ASSIGN_OR_RETURN(Generation g, Generate(model, ids, sampling));
      tokens += static_cast<int64_t>(g.tokens.size());
      seconds += g.seconds;
      outputs.push_back({{"prompt", prompts[i]},
                         {"completion", g.text},
                         {"tokens", g.tokens.size()},
                         {"finish_reason", g.finish_reason}});
      progress(static_cast<int64_t>(i + 1), static_cast<int64_t>(prompts.size()));
    }
    out.update({{"prompts", input}, {"outputs", outputs}});
    result.result = {{"tokens_per_second", seconds > 0 ? tokens / seconds : 0}};
  } else {
    return SpecError("eval.task", absl::StrCat("unknown task \"", task, "\""));
  }
  if (Cancelled(environment)) {
    return absl::CancelledError(absl::StrCat("evaluation ", task, " cancelled"));
  }
  const std::string path = job.results().empty() ? DefaultResultsPath(model_dir, task, input)
                                                 : Resolve(job.results(), data_dir);
  LP_RETURN_IF_ERROR(WriteJsonFile(path, out));
  std::vector<std::string> parts;
  for (const auto& [key, value] : result.result) parts.push_back(absl::StrCat(key, " ", value));
  Log(hooks, absl::StrCat("eval ", task, ": ", absl::StrJoin(parts, ", "), "; results in ", path));
  return result;
}

absl::StatusOr<TaskResult> RunEval(const v1::Assignment& assignment,
                                   const TaskEnvironment& environment, const TaskHooks& hooks) {
  const v1::EvalJob& job = assignment.spec().eval();
  if (job.model().empty()) return SpecError("eval.model", "is required");
  if (!job.task().empty() && job.task() != "ppl") {
    return RunTaskEval(assignment, environment, hooks);
  }
  if (job.corpora().empty()) return SpecError("eval.corpora", "name at least one corpus");
  if (job.seq_len() < 0) return SpecError("eval.seq_len", "must not be negative");
  if (job.windows() < 0) return SpecError("eval.windows", "must not be negative");
  LP_ASSIGN_OR_RETURN(const std::string model,
                      ResolveModelDir(Resolve(job.model(), assignment.data_dir())));
  const int64_t seq_len = job.seq_len() > 0 ? job.seq_len() : 2048;
  LP_ASSIGN_OR_RETURN(LlamaConfig config, LoadLlamaConfig(model));
  if (seq_len > config.max_position_embeddings) {
    return SpecError("eval.seq_len",
                     absl::StrCat(seq_len, " exceeds the model's max_position_embeddings (",
                                  config.max_position_embeddings, ") in ", model));
  }
  // The ids in the store must be the model's (as the trainer checks).
  LP_ASSIGN_OR_RETURN(StoreTokenizer bound, environment.data->Tokenizer());
  const std::string model_tokenizer = JoinPath(model, kTokenizerModelFile);
  if (PathExists(model_tokenizer)) {
    LP_ASSIGN_OR_RETURN(std::string fingerprint, Sha256File(model_tokenizer));
    if (fingerprint != bound.fingerprint) {
      return absl::FailedPreconditionError(
          absl::StrCat("the coordinator's token store was tokenized with ", bound.path,
                       ", not with the model's ", model_tokenizer, " (different files)"));
    }
  }
  LP_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(model));
  LP_ASSIGN_OR_RETURN(LlamaParams params, LoadLlamaParams(*reader, config));
  UpdateProgress(hooks, [&](v1::Progress* progress) {
    progress->set_step(0);
    progress->set_total_steps(job.corpora_size());
  });
  TaskResult result;
  for (int i = 0; i < job.corpora_size(); ++i) {
    const std::string& corpus = job.corpora(i);
    if (Cancelled(environment)) {
      return absl::CancelledError(absl::StrCat("evaluation cancelled before corpus '", corpus,
                                               "' (", i, " of ", job.corpora_size(), " done)"));
    }
    const Clock::time_point start = Clock::now();
    absl::StatusOr<PerplexityResult> ppl = HeldOutPerplexity(
        &params, *environment.data, corpus,
        {.seq_len = seq_len, .max_windows = job.windows(), .threads = environment.threads});
    if (!ppl.ok()) {
      return absl::Status(ppl.status().code(), absl::StrCat("perplexity of corpus '", corpus,
                                                            "': ", ppl.status().message()));
    }
    result.result[corpus] = ppl->perplexity;
    UpdateProgress(hooks, [&](v1::Progress* progress) {
      progress->set_step(i + 1);
      (*progress->mutable_perplexity())[corpus] = ppl->perplexity;
    });
    Log(hooks, absl::StrCat("eval ", corpus, ": perplexity ", ppl->perplexity, " (nll ", ppl->nll,
                            ", ", ppl->targets, " tokens in ", ppl->windows, " windows, ",
                            std::chrono::duration<double>(Clock::now() - start).count(), " s)"));
  }
  return result;
}

// --- PRETRAIN / SFT ------------------------------------------------------------------

absl::StatusOr<TaskResult> RunTrain(const v1::Assignment& assignment,
                                    const TaskEnvironment& environment, const TaskHooks& hooks) {
  const int rank = assignment.rank();
  const int world = std::max(1, assignment.world_size());
  if (assignment.spec().train_config_yaml().empty()) {
    return SpecError("train_config_yaml", "is required for PRETRAIN and SFT jobs");
  }
  LP_ASSIGN_OR_RETURN(JobConfig config, ParseJobConfig(assignment.spec().train_config_yaml(),
                                                       absl::StrCat("job ", assignment.job_id()),
                                                       assignment.data_dir()));
  if (!config.data.store.empty()) {
    Log(hooks, absl::StrCat("data.store (", config.data.store,
                            ") is ignored: samples come from the coordinator"));
  }
  // The worker's device decides the backend.
  LP_RETURN_IF_ERROR(SetDevice(&config, environment.device));
  if (environment.threads > 0) config.threads = environment.threads;
  LP_ASSIGN_OR_RETURN(const int cuda_device, DeviceOrdinal(config.device));

  std::unique_ptr<Communicator> communicator;
  if (world > 1) {
    if (environment.rendezvous == nullptr) {
      return absl::InternalError("a job of several ranks needs a rendezvous store");
    }
    GlooOptions gloo;
    gloo.interface_address = environment.collective_address;
    gloo.timeout = environment.collective_timeout;
    gloo.prefix = assignment.rendezvous_prefix();
    Log(hooks, absl::StrCat("joining ranks: rank ", rank, " of ", world, " via Gloo on ",
                            gloo.interface_address, " (rendezvous prefix \"", gloo.prefix, "\")"));
    absl::StatusOr<std::unique_ptr<Communicator>> gloo_communicator =
        MakeGlooCommunicator(rank, world, environment.rendezvous, gloo);
    if (!gloo_communicator.ok()) return AsRestartable(gloo_communicator.status());
    communicator = std::make_unique<RestartableCommunicator>(std::move(*gloo_communicator));
  } else {
    communicator = std::make_unique<LocalCommunicator>();
  }
  // Tensor parallelism: the TP group (tp consecutive ranks) and DP group of
  // this rank, on their own Gloo connections.
  const int tp = config.parallel.tp;
  std::unique_ptr<Communicator> tp_communicator, dp_communicator;
  if (tp > 1 && world % tp == 0) {
    GlooOptions gloo;
    gloo.interface_address = environment.collective_address;
    gloo.timeout = environment.collective_timeout;
    gloo.prefix = assignment.rendezvous_prefix();
    const MeshCoordinates at = MeshCoordinates::Of(rank, world / tp, tp);
    Log(hooks, absl::StrCat("mesh dp ", world / tp, " x tp ", tp, ": TP rank ", at.tp_rank,
                            " of replica ", at.dp_rank));
    absl::StatusOr<MeshCommunicators> mesh =
        MakeGlooMesh(rank, world / tp, tp, environment.rendezvous, gloo);
    if (!mesh.ok()) return AsRestartable(mesh.status());
    tp_communicator = std::make_unique<RestartableCommunicator>(std::move(mesh->tp));
    dp_communicator = std::make_unique<RestartableCommunicator>(std::move(mesh->dp));
  }

#ifdef LLAMAPRO_HAVE_CUDA
  // CUDA data parallelism: the gradients travel over NCCL (bootstrapped
  // through the same rendezvous); Gloo keeps the host-side collectives.
  std::unique_ptr<NcclCommunicator> nccl;
  if (cuda_device >= 0 && world > 1) {
    NcclOptions nccl_options;
    nccl_options.prefix = assignment.rendezvous_prefix();
    nccl_options.timeout = environment.collective_timeout;
    Log(hooks,
        absl::StrCat("joining ranks over NCCL on ", config.device, ": rank ", rank, " of ", world));
    absl::StatusOr<std::unique_ptr<NcclCommunicator>> made =
        MakeNcclCommunicator(rank, world, cuda_device, environment.rendezvous, nccl_options);
    if (!made.ok()) return AsRestartable(made.status());
    nccl = std::move(*made);
  }
#else
  (void)cuda_device;
#endif

  // Where to start: rank 0 decides (it alone repairs the output directory)
  // and the others follow, so every rank resumes from the same step.
  int64_t mode = static_cast<int64_t>(ResumePlan::Mode::kFresh);
  if (assignment.resume() && rank == 0) {
    LP_ASSIGN_OR_RETURN(ResumePlan plan,
                        PlanResume(config.output_dir, config.steps,
                                   [&hooks](absl::string_view line) { Log(hooks, line); }));
    mode = static_cast<int64_t>(plan.mode);
  }
  if (world > 1) LP_RETURN_IF_ERROR(communicator->AllReduceSum(&mode, 1));
  if (mode == static_cast<int64_t>(ResumePlan::Mode::kFinished)) {
    LP_ASSIGN_OR_RETURN(std::string checkpoint, LatestCheckpoint(config.output_dir));
    Log(hooks, absl::StrCat("the run already reached its ", config.steps, " steps (", checkpoint,
                            "): nothing left to train"));
    UpdateProgress(hooks, [&](v1::Progress* progress) {
      progress->set_step(config.steps);
      progress->set_total_steps(config.steps);
      progress->set_checkpoint(checkpoint);
    });
    return TaskResult{};
  }

  TrainOptions options;
  options.resume = mode == static_cast<int64_t>(ResumePlan::Mode::kResume);
  options.communicator = communicator.get();
  options.tp_communicator = tp_communicator.get();
  options.dp_communicator = dp_communicator.get();
#ifdef LLAMAPRO_HAVE_CUDA
  options.nccl = nccl.get();
#endif
  options.data = environment.data;
  options.cancel = environment.cancel;
  int64_t last_step = 0;
  Clock::time_point last_time = Clock::now();
  Clock::time_point last_log = Clock::now();
  // Tokens this rank processes per step (the TP ranks of a replica share
  // theirs).
  const int64_t replicas = std::max(1, world / std::max(1, tp));
  const int64_t tokens_per_step = config.batch.global_sequences * config.data.seq_len / replicas;
  double flops_per_token = 0;
  options.on_plan = [&](const TrainPlan& plan) {
    last_step = plan.start_step;
    last_time = Clock::now();
    // The pass counts this rank's share under TP: the model's is tp times.
    flops_per_token = (plan.flops_per_token.forward + plan.flops_per_token.backward) * plan.tp;
    UpdateProgress(hooks, [&](v1::Progress* progress) {
      progress->set_step(plan.start_step);
      progress->set_total_steps(plan.total_steps);
      progress->clear_general_corpora();
      for (const std::string& corpus : config.eval.general) progress->add_general_corpora(corpus);
    });
    Log(hooks,
        absl::StrCat(plan.resumed ? absl::StrCat("resuming from ", plan.resumed_from, " at step ",
                                                 plan.start_step)
                                  : std::string("starting"),
                     ": ", plan.total_steps, " steps, ", plan.trainable_parameters, " of ",
                     plan.total_parameters, " parameters train (",
                     absl::StrJoin(plan.trainable_blocks, ", "), "); ", DescribeCompute(plan)));
    Log(hooks,
        absl::StrCat("this rank (dp ", plan.dp, " x tp ", plan.tp, plan.zero1 ? ", ZeRO-1" : "",
                     "): ", plan.rank_parameters, " parameters held; optimizer state ",
                     FormatBytes(plan.optimizer_state_bytes), ", activations ",
                     FormatBytes(plan.activation_bytes),
                     "; planned: ", DescribePlan(plan.rank_plan)));
  };
  options.on_step = [&](const TrainProgress& p) {
    const Clock::time_point now = Clock::now();
    const int64_t steps = p.step - last_step;
    if (steps > 0 && hooks.steps) {
      hooks.steps(std::chrono::duration<double>(now - last_time).count() / steps,
                  steps * tokens_per_step);
    }
    last_step = p.step;
    last_time = now;
    UpdateProgress(hooks, [&](v1::Progress* progress) {
      progress->set_step(p.step);
      progress->set_total_steps(p.total_steps);
      progress->set_loss(p.loss);
      progress->set_learning_rate(p.learning_rate);
      progress->set_grad_norm(p.grad_norm);
      progress->set_tokens(p.tokens);
      progress->set_tokens_per_second(p.tokens_per_second);
      progress->set_model_flops_per_second(flops_per_token * p.tokens_per_second);
      progress->set_eta_seconds(p.eta_seconds);
    });
    // A line every 10 s at most: steps of a tiny model take milliseconds.
    if (now - last_log >= std::chrono::seconds(10) || p.step == p.total_steps) {
      last_log = now;
      Log(hooks, absl::StrCat("step ", p.step, "/", p.total_steps, " loss ", p.loss, " lr ",
                              p.learning_rate, " grad_norm ", p.grad_norm, " ",
                              static_cast<int64_t>(p.tokens_per_second), " tok/s"));
    }
  };
  options.on_eval = [&](const EvalReport& report) {
    std::vector<std::string> parts;
    for (const PerplexityResult& r : report.results) {
      parts.push_back(absl::StrCat(r.corpus, " ", r.perplexity));
    }
    UpdateProgress(hooks, [&](v1::Progress* progress) {
      for (const PerplexityResult& r : report.results) {
        (*progress->mutable_perplexity())[r.corpus] = r.perplexity;
      }
    });
    Log(hooks,
        absl::StrCat("eval at step ", report.step, ": perplexity ", absl::StrJoin(parts, ", ")));
  };
  options.on_checkpoint = [&](absl::string_view dir) {
    UpdateProgress(hooks,
                   [&](v1::Progress* progress) { progress->set_checkpoint(std::string(dir)); });
    Log(hooks, absl::StrCat("checkpoint ", dir));
  };
  LP_ASSIGN_OR_RETURN(TrainSummary summary, RunTraining(config, options));
  if (!summary.last_checkpoint.empty()) {
    UpdateProgress(
        hooks, [&](v1::Progress* progress) { progress->set_checkpoint(summary.last_checkpoint); });
  }
  Log(hooks, absl::StrCat("trained ", summary.steps_run, " steps to step ", summary.final_step,
                          ", loss ", summary.final_loss, ", ",
                          static_cast<int64_t>(summary.tokens_per_second), " tok/s"));
  return TaskResult{};
}

absl::StatusOr<TaskResult> Dispatch(const v1::Assignment& assignment,
                                    const TaskEnvironment& environment, const TaskHooks& hooks) {
  const int world = std::max(1, assignment.world_size());
  if (assignment.rank() < 0 || assignment.rank() >= world) {
    return absl::InvalidArgumentError(absl::StrCat("assignment of job ", assignment.job_id(),
                                                   ": rank ", assignment.rank(), " is not in [0, ",
                                                   world, ")"));
  }
  if (environment.data == nullptr) return absl::InternalError("no data source");
  switch (assignment.spec().kind()) {
    case v1::JOB_KIND_PRETRAIN:
    case v1::JOB_KIND_SFT:
      return RunTrain(assignment, environment, hooks);
    case v1::JOB_KIND_EXPAND:
    case v1::JOB_KIND_EVAL:
      if (world != 1) {
        return SpecError("world_size",
                         absl::StrCat("expand and eval jobs run on one worker, got ", world));
      }
      return assignment.spec().kind() == v1::JOB_KIND_EXPAND
                 ? RunExpand(assignment, hooks)
                 : RunEval(assignment, environment, hooks);
    case v1::JOB_KIND_INGEST:
      return SpecError("kind", "ingest jobs run inside the coordinator, not on a worker");
    default:
      return SpecError(
          "kind", absl::StrCat("unknown job kind ", static_cast<int>(assignment.spec().kind())));
  }
}

// checkpoint-<step> directories of `dir` holding a trainer state, newest first.
std::vector<std::pair<int64_t, std::string>> CompleteCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (absl::StartsWith(name, "checkpoint-") && absl::SimpleAtoi(name.substr(11), &step) &&
        entry.is_directory(ec) && PathExists(JoinPath(entry.path().string(), kTrainerStateFile))) {
      found.emplace_back(step, name);
    }
  }
  std::sort(found.rbegin(), found.rend());
  return found;
}

}  // namespace

absl::Status AsRestartable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kDeadlineExceeded:
      return status;
    default:
      return absl::AbortedError(status.message());
  }
}

absl::StatusOr<ResumePlan> PlanResume(const std::string& output_dir, int64_t total_steps,
                                      const std::function<void(absl::string_view)>& log) {
  auto note = [&log](absl::string_view line) {
    if (log) log(line);
  };
  ResumePlan plan;
  if (!IsDirectory(output_dir)) return plan;
  // StagingDir names: ".checkpoint-000100.tmp-<pid>-<n>".
  std::error_code ec;
  std::vector<std::string> staging;
  for (const auto& entry : std::filesystem::directory_iterator(output_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, ".checkpoint-") && absl::StrContains(name, ".tmp-")) {
      staging.push_back(entry.path().string());
    }
  }
  if (ec) return ErrnoStatus("cannot list", output_dir, ec.value());
  for (const std::string& path : staging) {
    LP_RETURN_IF_ERROR(RemoveAll(path));
    note(absl::StrCat("removed ", path, ", left by a checkpoint write that did not finish"));
  }

  const std::string latest_file = JoinPath(output_dir, kLatestFile);
  absl::StatusOr<std::string> latest = LatestCheckpoint(output_dir);
  absl::StatusOr<TrainerState> state =
      latest.ok() ? LoadTrainerState(*latest) : absl::StatusOr<TrainerState>(latest.status());
  if (!state.ok()) {
    const bool had_latest = PathExists(latest_file);
    if (had_latest)
      note(absl::StrCat("cannot resume from ", latest_file, ": ", state.status().ToString()));
    for (const auto& [step, name] : CompleteCheckpoints(output_dir)) {
      const std::string dir = JoinPath(output_dir, name);
      absl::StatusOr<TrainerState> candidate = LoadTrainerState(dir);
      if (!candidate.ok()) {
        note(absl::StrCat("skipping ", dir, ": ", candidate.status().ToString()));
        continue;
      }
      LP_RETURN_IF_ERROR(WriteFileAtomic(latest_file, name + "\n"));
      note(absl::StrCat("pointed ", latest_file, " at ", name, ", the newest complete checkpoint"));
      latest = dir;
      state = std::move(candidate);
      break;
    }
    if (!state.ok()) {
      if (had_latest) {
        LP_RETURN_IF_ERROR(RemoveAll(latest_file));
        note(absl::StrCat("removed ", latest_file, ": no complete checkpoint to resume from"));
      }
      return plan;  // kFresh.
    }
  }
  plan.checkpoint = *latest;
  plan.step = state->step;
  plan.mode = state->step >= total_steps ? ResumePlan::Mode::kFinished : ResumePlan::Mode::kResume;
  return plan;
}

absl::StatusOr<TaskResult> RunAssignment(const v1::Assignment& assignment,
                                         const TaskEnvironment& environment,
                                         const TaskHooks& hooks) {
  try {
    return Dispatch(assignment, environment, hooks);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("job ", assignment.job_id(), ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("job ", assignment.job_id(), ": unexpected exception: ", e.what()));
  }
}

}  // namespace llamapro::worker
