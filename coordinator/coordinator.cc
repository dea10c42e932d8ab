#include "coordinator/coordinator.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "data/ingest.h"
#include "data/readers.h"
#include "data/sft.h"
#include "google/protobuf/util/time_util.h"
#include "model/expand.h"
#include "rpc/rpc.h"
#include "train/config.h"

namespace llamapro::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

bool SameValues(const google::protobuf::Map<std::string, double>& a,
                const google::protobuf::Map<std::string, double>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, value] : a) {
    auto it = b.find(key);
    if (it == b.end() || it->second != value) return false;
  }
  return true;
}

constexpr int32_t kDefaultMaxRestarts = 3;
constexpr int32_t kMaxWorldSize = 4096;
constexpr size_t kMaxNameLength = 256;
constexpr size_t kMaxRequestIdLength = 128;
// Progress events are recorded at most this often per job (every heartbeat
// updates the job itself).
constexpr auto kProgressEventInterval = std::chrono::seconds(2);

void Log(const std::string& line) {
  std::fprintf(stderr, "%s coordinator: %s\n",
               TimeUtil::ToString(TimeUtil::GetCurrentTime()).c_str(), line.c_str());
}

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  return absl::AsciiStrToLower(absl::StripPrefix(name, "JOB_STATE_"));
}

bool IsRestartable(int32_t code) {
  const auto c = static_cast<absl::StatusCode>(code);
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kAborted ||
         c == absl::StatusCode::kDeadlineExceeded;
}

bool PrintableOneLine(absl::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c != 0x7f; });
}

std::string RandomHex(int bytes) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  for (int i = 0; i < bytes; ++i) absl::StrAppend(&out, absl::Hex(rng() & 0xff, absl::kZeroPad2));
  return out;
}

std::string RendezvousPrefix(const v1::Job& job) {
  return absl::StrCat("job/", job.id(), "/attempt/", job.attempt(), "/");
}

}  // namespace

std::string JobId(uint64_t number) { return absl::StrCat("job-", number); }

absl::StatusOr<uint64_t> ParseJobId(absl::string_view field, absl::string_view id) {
  uint64_t number = 0;
  absl::string_view digits = id;
  if (!absl::ConsumePrefix(&digits, "job-") || !absl::SimpleAtoi(digits, &number) || number == 0) {
    return Invalid(field, absl::StrCat("'", id, "' is not a job id (job-<number>)"));
  }
  return number;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

Coordinator::Coordinator(TokenStore* store, PathPolicy paths, CoordinatorOptions options)
    : store_(store), paths_(std::move(paths)), options_(options) {
  // Heartbeats often enough that a cancel reaches a worker within a second
  // and a few can be missed before the timeout.
  heartbeat_interval_ = std::clamp(options_.heartbeat_timeout / 4, std::chrono::milliseconds(50),
                                   std::chrono::milliseconds(1000));
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(TokenStore* store,
                                                                 PathPolicy paths,
                                                                 CoordinatorOptions options) {
  if (options.heartbeat_timeout < std::chrono::milliseconds(200)) {
    return absl::InvalidArgumentError("--heartbeat-timeout must be at least 200ms");
  }
  std::unique_ptr<Coordinator> coordinator(new Coordinator(store, std::move(paths), options));
  LP_ASSIGN_OR_RETURN(coordinator->job_store_, JobStore::Open(store));
  LP_RETURN_IF_ERROR(coordinator->Load());
  return coordinator;
}

Coordinator::~Coordinator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shutting_down_ = true;
    for (auto& [number, entry] : jobs_) {
      if (entry->ingest_cancel) entry->ingest_cancel->store(true);
    }
  }
  if (ingest_thread_.joinable()) ingest_thread_.join();
  if (retired_ingest_thread_.joinable()) retired_ingest_thread_.join();
}

absl::Status Coordinator::Load() {
  LP_ASSIGN_OR_RETURN(std::vector<StoredJob> stored, job_store_->LoadAll());
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = Clock::now();
  int running = 0;
  for (StoredJob& s : stored) {
    auto entry = std::make_unique<JobEntry>();
    entry->number = s.number;
    entry->job = std::move(s.job);
    entry->events = std::move(s.events);
    std::string output_dir;
    std::vector<std::string> notes;
    auto spec = ValidateSpec(entry->job.spec(), &output_dir, &notes);
    if (spec.ok()) entry->output_dir = output_dir;
    if (!entry->job.request_id().empty()) requests_[entry->job.request_id()] = s.number;
    next_number_ = std::max(next_number_, s.number + 1);
    JobEntry* e = entry.get();
    jobs_[s.number] = std::move(entry);
    if (e->job.state() != v1::JOB_STATE_RUNNING) continue;
    ++running;
    if (e->job.spec().kind() == v1::JOB_KIND_INGEST) {
      // It ran inside the coordinator that died: run it again (ingestion
      // resumes where its last commit ended).
      e->job.set_state(v1::JOB_STATE_PENDING);
      e->job.clear_workers();
      LP_RETURN_IF_ERROR(Record(e, "coordinator restarted; the ingest resumes", true));
      continue;
    }
    e->rank_done.assign(static_cast<size_t>(e->job.workers_size()), false);
    e->adopt_deadline = now + options_.heartbeat_timeout + options_.adoption_grace;
    LP_RETURN_IF_ERROR(Record(e,
                              absl::StrCat("coordinator restarted; waiting for workers ",
                                           absl::StrJoin(e->job.workers(), ", "),
                                           " to report attempt ", e->job.attempt()),
                              false));
  }
  Log(absl::StrCat("loaded ", jobs_.size(), " jobs (", running, " were running)"));
  return absl::OkStatus();
}

// --- Jobs ------------------------------------------------------------------

absl::StatusOr<v1::JobSpec> Coordinator::ValidateSpec(const v1::JobSpec& in,
                                                      std::string* output_dir,
                                                      std::vector<std::string>* notes) const {
  v1::JobSpec spec = in;
  output_dir->clear();
  if (spec.name().size() > kMaxNameLength || !PrintableOneLine(spec.name())) {
    return Invalid("spec.name", "at most 256 printable characters");
  }
  if (spec.world_size() < 0 || spec.world_size() > kMaxWorldSize) {
    return Invalid("spec.world_size",
                   absl::StrCat("must be in [1, ", kMaxWorldSize, "], got ", spec.world_size()));
  }
  if (spec.world_size() == 0) spec.set_world_size(1);
  if (!spec.has_max_restarts()) spec.set_max_restarts(kDefaultMaxRestarts);
  if (spec.max_restarts() < 0 || spec.max_restarts() > 1000) {
    return Invalid("spec.max_restarts",
                   absl::StrCat("must be in [0, 1000], got ", spec.max_restarts()));
  }
  std::set<std::string> seen;
  for (int i = 0; i < spec.depends_on_size(); ++i) {
    const std::string field = absl::StrCat("spec.depends_on[", i, "]");
    LP_ASSIGN_OR_RETURN(uint64_t number, ParseJobId(field, spec.depends_on(i)));
    if (!jobs_.contains(number)) return Invalid(field, absl::StrCat("no job ", spec.depends_on(i)));
    if (!seen.insert(spec.depends_on(i)).second) {
      return Invalid(field, absl::StrCat(spec.depends_on(i), " is listed twice"));
    }
  }
  const bool training = spec.kind() == v1::JOB_KIND_PRETRAIN || spec.kind() == v1::JOB_KIND_SFT;
  if (!training && !spec.train_config_yaml().empty()) {
    return Invalid("spec.train_config_yaml", "only pretrain and sft jobs take a training config");
  }
  if (!training && spec.resume()) {
    return Invalid("spec.resume", "only pretrain and sft jobs resume a run");
  }
  if (!training && spec.world_size() != 1) {
    return Invalid("spec.world_size",
                   absl::StrCat(rpc::JobKindName(spec.kind()), " jobs run on one worker, got ",
                                spec.world_size()));
  }
  auto only = [&spec](bool expand, bool eval, bool ingest) -> absl::Status {
    if (!expand && spec.has_expand()) return Invalid("spec.expand", "only for expand jobs");
    if (!eval && spec.has_eval()) return Invalid("spec.eval", "only for eval jobs");
    if (!ingest && spec.has_ingest()) return Invalid("spec.ingest", "only for ingest jobs");
    return absl::OkStatus();
  };
  switch (spec.kind()) {
    case v1::JOB_KIND_EXPAND: {
      LP_RETURN_IF_ERROR(only(true, false, false));
      v1::ExpandJob* e = spec.mutable_expand();
      LP_ASSIGN_OR_RETURN(*e->mutable_model(), paths_.Resolve("spec.expand.model", e->model()));
      LP_ASSIGN_OR_RETURN(*e->mutable_out(), paths_.Resolve("spec.expand.out", e->out()));
      if (e->layout().empty()) e->set_layout("interleaved");
      if (!ParseLayout(e->layout()).ok()) {
        return Invalid("spec.expand.layout",
                       absl::StrCat("unknown layout '", e->layout(),
                                    "' (interleaved, top, bottom or positions)"));
      }
      if (e->add_blocks() < 0 || e->groups() < 0) {
        return Invalid("spec.expand.add_blocks", "add_blocks and groups must not be negative");
      }
      if (e->layout() == "positions" ? e->positions_size() == 0
                                     : e->add_blocks() == 0 && e->groups() == 0) {
        return Invalid("spec.expand.add_blocks",
                       "required (how many blocks to add; or positions for layout positions)");
      }
      if (e->dtype().empty()) e->set_dtype("keep");
      if (e->dtype() != "keep" && e->dtype() != "f32" && e->dtype() != "bf16" &&
          e->dtype() != "f16") {
        return Invalid("spec.expand.dtype",
                       absl::StrCat("'", e->dtype(), "' is not keep, f32, bf16 or f16"));
      }
      *output_dir = e->out();
      break;
    }
    case v1::JOB_KIND_PRETRAIN:
    case v1::JOB_KIND_SFT: {
      LP_RETURN_IF_ERROR(only(false, false, false));
      if (spec.train_config_yaml().empty()) {
        return Invalid("spec.train_config_yaml", "required for pretrain and sft jobs");
      }
      absl::StatusOr<JobConfig> config =
          ParseJobConfig(spec.train_config_yaml(), "spec.train_config_yaml", paths_.data_dir());
      if (!config.ok()) return absl::InvalidArgumentError(config.status().message());
      LP_RETURN_IF_ERROR(paths_.Resolve("spec.train_config_yaml: model", config->model).status());
      LP_ASSIGN_OR_RETURN(*output_dir,
                          paths_.Resolve("spec.train_config_yaml: output_dir", config->output_dir));
      if (!config->data.store.empty()) {
        notes->push_back(
            absl::StrCat("data.store (", config->data.store,
                         ") is ignored: the coordinator's token store serves the data"));
      }
      // The mesh (parallel:): world_size = dp x tp; the batch splits over dp.
      const int tp = config->parallel.tp;
      if (spec.world_size() % tp != 0) {
        return Invalid(
            "spec.train_config_yaml: parallel.tp",
            absl::StrCat(tp, " does not divide the job's world_size (", spec.world_size(), ")"));
      }
      const int dp = spec.world_size() / tp;
      if (config->parallel.dp > 0 && config->parallel.dp != dp) {
        return Invalid(
            "spec.world_size",
            absl::StrCat("is ", spec.world_size(), " but parallel: dp ", config->parallel.dp,
                         " x tp ", tp, " needs ", config->parallel.dp * tp, " ranks"));
      }
      const int64_t ranks_times_micro = int64_t{dp} * config->batch.micro_batch;
      if (config->batch.global_sequences % ranks_times_micro != 0) {
        return Invalid(
            "spec.world_size",
            absl::StrCat(config->batch.global_sequences, " sequences per step do not split into ",
                         dp, " data-parallel ranks of whole micro-batches of ",
                         config->batch.micro_batch));
      }
      break;
    }
    case v1::JOB_KIND_EVAL: {
      LP_RETURN_IF_ERROR(only(false, true, false));
      v1::EvalJob* e = spec.mutable_eval();
      LP_ASSIGN_OR_RETURN(*e->mutable_model(), paths_.Resolve("spec.eval.model", e->model()));
      if (e->task().empty()) e->set_task("ppl");
      const std::string& task = e->task();
      if (task != "ppl" && task != "choice" && task != "generate" && task != "code" &&
          task != "shift") {
        return Invalid("spec.eval.task",
                       absl::StrCat("\"", task, "\": one of ppl, choice, generate, code, shift"));
      }
      if (task == "ppl") {
        if (e->corpora().empty()) return Invalid("spec.eval.corpora", "name at least one corpus");
        for (int i = 0; i < e->corpora_size(); ++i) {
          if (e->corpora(i).empty())
            return Invalid(absl::StrCat("spec.eval.corpora[", i, "]"), "empty");
        }
        if (e->seq_len() < 0 || e->windows() < 0) {
          return Invalid("spec.eval.seq_len", "seq_len and windows must not be negative");
        }
        if (e->seq_len() == 0) e->set_seq_len(2048);
        break;
      }
      // Files of the other tasks, resolved inside the data dir like the model.
      const bool needs_tasks = task == "choice" || task == "code";
      const bool needs_prompts = task == "generate" || task == "shift";
      if (needs_tasks && e->tasks().empty()) {
        return Invalid("spec.eval.tasks", absl::StrCat("is required for task ", task));
      }
      if (needs_prompts && e->prompts().empty()) {
        return Invalid("spec.eval.prompts", absl::StrCat("is required for task ", task));
      }
      if (task == "shift" && e->base().empty()) {
        return Invalid("spec.eval.base", "is required for task shift (the base model)");
      }
      for (const auto& [field, value] :
           std::vector<std::pair<std::string, std::string*>>{{"tasks", e->mutable_tasks()},
                                                             {"fewshot", e->mutable_fewshot()},
                                                             {"prompts", e->mutable_prompts()},
                                                             {"base", e->mutable_base()},
                                                             {"results", e->mutable_results()}}) {
        if (!value->empty()) {
          LP_ASSIGN_OR_RETURN(*value, paths_.Resolve("spec.eval." + field, *value));
        }
      }
      if (e->shots() < 0 || e->max_tokens() < 0 || e->samples() < 0 || e->limit() < 0 ||
          e->temperature() < 0 || e->top_p() < 0 || e->top_p() > 1 || e->timeout() < 0) {
        return Invalid("spec.eval",
                       "shots, max_tokens, samples, limit, temperature, timeout must not be "
                       "negative and top_p must be in (0, 1]");
      }
      if (e->top_p() == 0) e->set_top_p(1);
      if (e->samples() == 0) e->set_samples(1);
      if (task == "code" && e->timeout() == 0) e->set_timeout(10);
      break;
    }
    case v1::JOB_KIND_INGEST: {
      LP_RETURN_IF_ERROR(only(false, false, true));
      v1::IngestJob* g = spec.mutable_ingest();
      if (g->corpus().empty() || g->corpus().size() > kMaxNameLength ||
          !PrintableOneLine(g->corpus())) {
        return Invalid("spec.ingest.corpus", "required, at most 256 printable characters");
      }
      LP_ASSIGN_OR_RETURN(*g->mutable_tokenizer(),
                          paths_.Resolve("spec.ingest.tokenizer", g->tokenizer()));
      if (g->inputs().empty()) return Invalid("spec.ingest.inputs", "name at least one file");
      for (int i = 0; i < g->inputs_size(); ++i) {
        LP_ASSIGN_OR_RETURN(
            *g->mutable_inputs(i),
            paths_.Resolve(absl::StrCat("spec.ingest.inputs[", i, "]"), g->inputs(i)));
      }
      if (g->format().empty()) g->set_format("auto");
      if (!ParseInputFormat(g->format()).ok()) {
        return Invalid("spec.ingest.format",
                       absl::StrCat("'", g->format(), "' is not auto, txt or jsonl"));
      }
      if (g->text_field().empty()) g->set_text_field("text");
      if (g->held_out() == 0) g->set_held_out(0.005);
      if (!(g->held_out() > 0 && g->held_out() < 1)) {
        return Invalid("spec.ingest.held_out",
                       absl::StrCat("must be in (0, 1), got ", g->held_out()));
      }
      if (!g->sft_format().empty()) {
        if (!ParseSftFormat(g->sft_format()).ok()) {
          return Invalid("spec.ingest.sft_format",
                         absl::StrCat("'", g->sft_format(), "' is not sharegpt or alpaca"));
        }
        if (g->chat_template().empty()) g->set_chat_template("llama2-chat");
        if (!ParseChatTemplate(g->chat_template()).ok()) {
          return Invalid("spec.ingest.chat_template",
                         absl::StrCat("unknown chat template '", g->chat_template(), "'"));
        }
      } else if (!g->chat_template().empty()) {
        return Invalid("spec.ingest.chat_template", "only with sft_format");
      }
      break;
    }
    default:
      return Invalid("spec.kind", "required (expand, pretrain, sft, eval or ingest)");
  }
  return spec;
}

absl::StatusOr<Coordinator::JobEntry*> Coordinator::Find(absl::string_view id) const {
  LP_ASSIGN_OR_RETURN(uint64_t number, ParseJobId("id", id));
  auto it = jobs_.find(number);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
  return it->second.get();
}

void Coordinator::Persist(JobEntry* entry, bool sync) {
  absl::Status status = job_store_->Write(entry->number, entry->job, {}, sync);
  if (!status.ok()) Log(absl::StrCat("cannot persist ", entry->job.id(), ": ", status.message()));
}

absl::Status Coordinator::Record(JobEntry* entry, const std::string& text, bool state_change) {
  v1::JobEvent event;
  event.set_sequence(static_cast<int64_t>(entry->events.size()) + 1);
  *event.mutable_time() = TimeUtil::GetCurrentTime();
  event.set_job_id(entry->job.id());
  event.set_state(entry->job.state());
  event.set_attempt(entry->job.attempt());
  if (state_change) {
    event.set_state_change(text);
    entry->job.set_message(text);
  } else {
    event.set_log(text);
  }
  absl::Status status = job_store_->Write(entry->number, entry->job, {event}, /*sync=*/true);
  if (!status.ok()) {
    Log(absl::StrCat("cannot persist ", entry->job.id(), ": ", status.message()));
    return status;
  }
  Log(absl::StrCat(entry->job.id(), " [", StateName(entry->job.state()), "] ", text));
  entry->events.push_back(std::move(event));
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status Coordinator::RecordProgress(JobEntry* entry) {
  v1::JobEvent event;
  event.set_sequence(static_cast<int64_t>(entry->events.size()) + 1);
  *event.mutable_time() = TimeUtil::GetCurrentTime();
  event.set_job_id(entry->job.id());
  event.set_state(entry->job.state());
  event.set_attempt(entry->job.attempt());
  *event.mutable_progress() = entry->job.progress();
  LP_RETURN_IF_ERROR(job_store_->Write(entry->number, entry->job, {event}, /*sync=*/false));
  entry->events.push_back(std::move(event));
  entry->last_progress_event = Clock::now();
  changed_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> Coordinator::Submit(const v1::SubmitJobRequest& request) {
  if (request.request_id().size() > kMaxRequestIdLength ||
      !PrintableOneLine(request.request_id())) {
    return Invalid("request_id", "at most 128 printable characters");
  }
  if (!request.has_spec()) return Invalid("spec", "required");
  std::lock_guard<std::mutex> lock(mutex_);
  std::string output_dir;
  std::vector<std::string> notes;
  LP_ASSIGN_OR_RETURN(v1::JobSpec spec, ValidateSpec(request.spec(), &output_dir, &notes));
  if (!request.request_id().empty()) {
    auto it = requests_.find(request.request_id());
    if (it != requests_.end()) {
      const v1::Job& existing = jobs_.at(it->second)->job;
      if (existing.spec().SerializeAsString() != spec.SerializeAsString()) {
        return absl::AlreadyExistsError(absl::StrCat("request_id ", request.request_id(),
                                                     " already created ", existing.id(),
                                                     " with a different spec"));
      }
      return existing;
    }
  }
  if (!output_dir.empty()) {
    for (const auto& [number, other] : jobs_) {
      if (!IsTerminal(other->job.state()) && other->output_dir == output_dir) {
        return absl::FailedPreconditionError(absl::StrCat(other->job.id(), " (",
                                                          StateName(other->job.state()),
                                                          ") already writes to ", output_dir));
      }
    }
  }
  auto entry = std::make_unique<JobEntry>();
  entry->number = next_number_++;
  entry->output_dir = output_dir;
  v1::Job& job = entry->job;
  job.set_id(JobId(entry->number));
  *job.mutable_spec() = std::move(spec);
  job.set_state(v1::JOB_STATE_PENDING);
  *job.mutable_created() = TimeUtil::GetCurrentTime();
  job.set_request_id(request.request_id());
  JobEntry* e = entry.get();
  jobs_[e->number] = std::move(entry);
  absl::Status recorded =
      Record(e,
             absl::StrCat(
                 "submitted ", rpc::JobKindName(e->job.spec().kind()), " job",
                 e->job.spec().name().empty() ? "" : absl::StrCat(" '", e->job.spec().name(), "'"),
                 e->job.spec().world_size() > 1
                     ? absl::StrCat(" on ", e->job.spec().world_size(), " workers")
                     : ""),
             true);
  if (!recorded.ok()) {
    jobs_.erase(e->number);
    return recorded;
  }
  if (!request.request_id().empty()) requests_[request.request_id()] = e->number;
  for (const std::string& note : notes) Record(e, note, false).IgnoreError();
  Schedule();
  return e->job;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(absl::string_view id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  LP_ASSIGN_OR_RETURN(JobEntry * entry, Find(id));
  return entry->job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(
    const v1::ListJobsRequest& request) const {
  int32_t page_size = request.page_size();
  if (page_size < 0 || page_size > 1000) {
    return Invalid("page_size", absl::StrCat("must be in [0, 1000], got ", page_size));
  }
  if (page_size == 0) page_size = 50;
  uint64_t below = UINT64_MAX;
  if (!request.page_token().empty() &&
      (!absl::SimpleAtoi(request.page_token(), &below) || below == 0)) {
    return Invalid("page_token", "not a token this coordinator returned");
  }
  std::set<int> states;
  for (int s : request.states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return Invalid("states", absl::StrCat("unknown job state ", s));
    }
    states.insert(s);
  }
  if (!v1::JobKind_IsValid(request.kind())) {
    return Invalid("kind", absl::StrCat("unknown job kind ", request.kind()));
  }
  v1::ListJobsResponse response;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = jobs_.lower_bound(below); it != jobs_.begin();) {
    --it;
    const v1::Job& job = it->second->job;
    if (!states.empty() && !states.contains(job.state())) continue;
    if (request.kind() != v1::JOB_KIND_UNSPECIFIED && job.spec().kind() != request.kind()) continue;
    if (response.jobs_size() == page_size) {
      // More match: the next page starts below the last one returned.
      response.set_next_page_token(absl::StrCat(it->first + 1));
      break;
    }
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<v1::Job> Coordinator::Cancel(absl::string_view id) {
  std::lock_guard<std::mutex> lock(mutex_);
  LP_ASSIGN_OR_RETURN(JobEntry * entry, Find(id));
  if (IsTerminal(entry->job.state())) return entry->job;
  SetTerminal(entry, v1::JOB_STATE_CANCELLED, "cancelled by request");
  Schedule();
  return entry->job;
}

void Coordinator::SetTerminal(JobEntry* entry, v1::JobState state, const std::string& why) {
  v1::Job& job = entry->job;
  const bool was_running = job.state() == v1::JOB_STATE_RUNNING;
  job.set_state(state);
  *job.mutable_finished() = TimeUtil::GetCurrentTime();
  entry->adopt_deadline.reset();
  if (entry->ingest_cancel) entry->ingest_cancel->store(true);
  if (was_running) ReleaseRendezvous(job);
  // Ranks still running are told to stop in their next heartbeat
  // (AttemptIsCurrent is false for a terminal job).
  Record(entry, why, true).IgnoreError();
}

void Coordinator::AbortAttempt(JobEntry* entry, const std::string& why) {
  v1::Job& job = entry->job;
  if (job.state() != v1::JOB_STATE_RUNNING) return;
  ReleaseRendezvous(job);
  entry->adopt_deadline.reset();
  if (job.restarts() >= job.spec().max_restarts()) {
    SetTerminal(
        entry, v1::JOB_STATE_FAILED,
        absl::StrCat("attempt ", job.attempt(), " failed: ", why, "; gave up after ",
                     job.restarts(), " restarts (max_restarts ", job.spec().max_restarts(), ")"));
    return;
  }
  job.set_restarts(job.restarts() + 1);
  job.set_last_failure(absl::StrCat("attempt ", job.attempt(), ": ", why));
  job.set_state(v1::JOB_STATE_PENDING);
  job.clear_workers();
  Record(entry,
         absl::StrCat("attempt ", job.attempt(), " aborted: ", why,
                      "; restarting from the latest "
                      "checkpoint (restart ",
                      job.restarts(), " of ", job.spec().max_restarts(), ")"),
         true)
      .IgnoreError();
}

void Coordinator::ReleaseRendezvous(const v1::Job& job) {
  const std::string prefix = RendezvousPrefix(job);
  for (auto it = rendezvous_.lower_bound(prefix);
       it != rendezvous_.end() && absl::StartsWith(it->first, prefix);) {
    it = rendezvous_.erase(it);
  }
}

absl::Status Coordinator::EventsAfter(absl::string_view id, int64_t after_sequence,
                                      std::vector<v1::JobEvent>* events, bool* terminal) const {
  if (after_sequence < 0) return Invalid("after_sequence", "must not be negative");
  std::lock_guard<std::mutex> lock(mutex_);
  LP_ASSIGN_OR_RETURN(const JobEntry* entry, Find(id));
  events->clear();
  // Sequences count from 1 and index events_ from 0.
  for (auto i = static_cast<size_t>(after_sequence); i < entry->events.size(); ++i) {
    events->push_back(entry->events[i]);
  }
  *terminal = IsTerminal(entry->job.state());
  return absl::OkStatus();
}

// --- Workers ---------------------------------------------------------------

Coordinator::WorkerEntry* Coordinator::FindWorkerById(absl::string_view id) {
  // Worker ids are "<name>#<incarnation>".
  const size_t hash = id.rfind('#');
  if (hash == absl::string_view::npos) return nullptr;
  auto it = workers_.find(std::string(id.substr(0, hash)));
  if (it == workers_.end() || it->second->id != id) return nullptr;
  return it->second.get();
}

bool Coordinator::AttemptIsCurrent(const WorkerEntry& worker) const {
  if (worker.job_id.empty()) return false;
  auto number = ParseJobId("job_id", worker.job_id);
  if (!number.ok()) return false;
  auto it = jobs_.find(*number);
  if (it == jobs_.end()) return false;
  const v1::Job& job = it->second->job;
  return job.state() == v1::JOB_STATE_RUNNING && job.attempt() == worker.attempt &&
         worker.rank >= 0 && worker.rank < job.workers_size() &&
         job.workers(worker.rank) == worker.info.name();
}

absl::StatusOr<v1::RegisterResponse> Coordinator::Register(const v1::RegisterRequest& request) {
  if (request.name().empty() || request.name().size() > kMaxNameLength ||
      !PrintableOneLine(request.name()) || absl::StrContains(request.name(), "#")) {
    return Invalid("name", "required: at most 256 printable characters, no '#'");
  }
  if (request.device() != "cpu" && !absl::StartsWith(request.device(), "cuda:")) {
    return Invalid("device", absl::StrCat("'", request.device(), "' is not cpu or cuda:N"));
  }
  if (request.running_job_id().empty() != (request.running_attempt() == 0)) {
    return Invalid("running_attempt", "goes with running_job_id");
  }
  if (request.running_attempt() < 0) return Invalid("running_attempt", "must not be negative");
  if (request.running_rank() < 0 ||
      (request.running_job_id().empty() && request.running_rank() != 0)) {
    return Invalid("running_rank", "must be >= 0, and 0 without running_job_id");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<WorkerEntry>& slot = workers_[request.name()];
  if (slot != nullptr && !slot->job_id.empty() &&
      !(request.running_job_id() == slot->job_id && request.running_attempt() == slot->attempt)) {
    // The previous incarnation's attempt died with it.
    if (AttemptIsCurrent(*slot)) {
      auto number = ParseJobId("job_id", slot->job_id);
      AbortAttempt(jobs_.at(*number).get(), absl::StrCat("worker ", request.name(), " restarted"));
    }
    slot->job_id.clear();
  }
  if (slot == nullptr) slot = std::make_unique<WorkerEntry>();
  WorkerEntry& w = *slot;
  w.id = absl::StrCat(request.name(), "#", RandomHex(8));
  w.info = request;
  w.lost = false;
  w.last_heartbeat = Clock::now();
  if (!request.running_job_id().empty() && w.job_id.empty()) {
    // Still running an attempt from before our restart: adopt it if it is
    // the current one, else it gets a cancel in its next heartbeat.
    w.job_id = request.running_job_id();
    w.attempt = request.running_attempt();
    w.rank = request.running_rank();
    w.started = true;
  }
  std::string adopted;
  if (AttemptIsCurrent(w)) {
    JobEntry* entry = jobs_.at(*ParseJobId("job_id", w.job_id)).get();
    if (entry->adopt_deadline) {
      adopted = absl::StrCat(", still running ", w.job_id, " rank ", w.rank);
      bool all = true;
      for (int r = 0; r < entry->job.workers_size(); ++r) {
        auto it = workers_.find(entry->job.workers(r));
        if (it == workers_.end() || it->second->job_id != entry->job.id() ||
            it->second->attempt != entry->job.attempt()) {
          all = false;
        }
      }
      if (all) {
        entry->adopt_deadline.reset();
        Record(entry,
               absl::StrCat("every rank of attempt ", entry->job.attempt(),
                            " reported back; it continues"),
               false)
            .IgnoreError();
      }
    }
  }
  Log(absl::StrCat("worker ", request.name(), " registered (", request.device(), " on ",
                   request.host(), ", pid ", request.pid(), ")", adopted));
  v1::RegisterResponse response;
  response.set_worker_id(w.id);
  response.set_heartbeat_interval_ms(heartbeat_interval_.count());
  Schedule();
  return response;
}

v1::Assignment Coordinator::MakeAssignment(const JobEntry& entry, int32_t rank) const {
  v1::Assignment a;
  a.set_job_id(entry.job.id());
  a.set_attempt(entry.job.attempt());
  a.set_rank(rank);
  a.set_world_size(entry.job.workers_size());
  *a.mutable_spec() = entry.job.spec();
  a.set_resume(entry.job.attempt() > 1 || entry.job.spec().resume());
  a.set_rendezvous_prefix(RendezvousPrefix(entry.job));
  for (const std::string& name : entry.job.workers()) a.add_worker_names(name);
  a.set_data_dir(paths_.data_dir());
  return a;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& request) {
  if (!v1::TaskStatus_IsValid(request.status())) {
    return Invalid("status", absl::StrCat("unknown task status ", request.status()));
  }
  if (request.status() != v1::TASK_STATUS_IDLE && request.job_id().empty()) {
    return Invalid("job_id", "required with a task status other than IDLE");
  }
  v1::HeartbeatResponse response;
  std::lock_guard<std::mutex> lock(mutex_);
  WorkerEntry* w = FindWorkerById(request.worker_id());
  if (w == nullptr) {
    response.set_reregister(true);
    return response;
  }
  w->last_heartbeat = Clock::now();
  if (request.stopping()) {
    // Its last report: take it, then schedule nothing onto it.
    w->lost = true;
    Log(absl::StrCat("worker ", w->info.name(), " is shutting down"));
  } else if (w->lost) {
    w->lost = false;
    Log(absl::StrCat("worker ", w->info.name(), " is back"));
  }
  w->metrics.clear();
  for (const auto& [key, value] : request.metrics()) w->metrics[key] = value;

  const v1::TaskStatus status = request.status();
  if (!w->job_id.empty()) {
    const bool current = AttemptIsCurrent(*w);
    JobEntry* entry = current ? jobs_.at(*ParseJobId("job_id", w->job_id)).get() : nullptr;
    const bool about_mine = request.job_id() == w->job_id && request.attempt() == w->attempt;
    if (about_mine && status == v1::TASK_STATUS_RUNNING) {
      w->started = true;
      if (!current) {
        response.set_cancel_job_id(w->job_id);
        response.set_cancel_attempt(w->attempt);
      } else if (w->rank == 0 && request.has_progress()) {
        const v1::Progress& progress = entry->job.progress();
        const bool new_step = request.progress().step() != progress.step();
        const bool news = request.progress().checkpoint() != progress.checkpoint() ||
                          !SameValues(request.progress().perplexity(), progress.perplexity());
        TakeProgress(entry, request.progress());
        if (news ||
            (new_step && Clock::now() - entry->last_progress_event >= kProgressEventInterval)) {
          RecordProgress(entry).IgnoreError();
        }
      }
      return response;
    }
    if (about_mine) {  // Finished: SUCCEEDED, FAILED or CANCELLED.
      if (current) OnRankFinished(entry, w, request);
      w->job_id.clear();
    } else if (status == v1::TASK_STATUS_RUNNING) {
      // Some other task (from before a restart of ours): it must stop.
      response.set_cancel_job_id(request.job_id());
      response.set_cancel_attempt(request.attempt());
      return response;
    } else if (w->started) {
      // Idle (or reporting an older task) although it had started ours: the
      // task is gone.
      if (current && status == v1::TASK_STATUS_IDLE) {
        AbortAttempt(entry, absl::StrCat("worker ", w->info.name(), " lost its task"));
      }
      if (status == v1::TASK_STATUS_IDLE) w->job_id.clear();
    } else if (!current) {
      w->job_id.clear();  // Aborted before it started.
    } else {
      // Delivered (again, if an earlier reply was lost) until it says RUNNING.
      *response.mutable_assignment() = MakeAssignment(*entry, w->rank);
      return response;
    }
    if (!w->job_id.empty()) return response;
  } else if (status == v1::TASK_STATUS_RUNNING) {
    // A task this coordinator did not give it (or no longer wants).
    response.set_cancel_job_id(request.job_id());
    response.set_cancel_attempt(request.attempt());
    return response;
  }
  Schedule();
  if (!w->job_id.empty() && AttemptIsCurrent(*w)) {
    *response.mutable_assignment() =
        MakeAssignment(*jobs_.at(*ParseJobId("job_id", w->job_id)), w->rank);
  }
  return response;
}

void Coordinator::TakeProgress(JobEntry* entry, const v1::Progress& reported) {
  v1::Progress& progress = *entry->job.mutable_progress();
  google::protobuf::Map<std::string, double> initial = progress.initial_perplexity();
  progress = reported;
  // The first value of each corpus stays (insert never overwrites): the
  // step-0 evaluation of the first attempt, before any training.
  for (const auto& [corpus, value] : reported.perplexity()) initial.insert({corpus, value});
  *progress.mutable_initial_perplexity() = std::move(initial);
  double peak = 0;
  for (const std::string& name : entry->job.workers()) {
    auto it = workers_.find(name);
    const double p = it == workers_.end() ? 0 : it->second->info.peak_flops();
    if (p <= 0) {  // One rank's peak unknown: so is the job's.
      peak = 0;
      break;
    }
    peak += p;
  }
  progress.set_mfu(peak > 0 ? reported.model_flops_per_second() / peak : 0);
}

void Coordinator::OnRankFinished(JobEntry* entry, WorkerEntry* worker,
                                 const v1::HeartbeatRequest& request) {
  if (!AttemptIsCurrent(*worker)) return;  // Already aborted, cancelled or done.
  v1::Job& job = entry->job;
  const std::string who = absl::StrCat("rank ", worker->rank, " (", worker->info.name(), ")");
  switch (request.status()) {
    case v1::TASK_STATUS_SUCCEEDED: {
      if (worker->rank == 0) {
        if (request.has_progress()) TakeProgress(entry, request.progress());
        job.mutable_result()->clear();
        for (const auto& [key, value] : request.result()) (*job.mutable_result())[key] = value;
      }
      entry->rank_done.resize(static_cast<size_t>(job.workers_size()), false);
      entry->rank_done[static_cast<size_t>(worker->rank)] = true;
      if (std::all_of(entry->rank_done.begin(), entry->rank_done.end(), [](bool b) { return b; })) {
        SetTerminal(entry, v1::JOB_STATE_SUCCEEDED,
                    absl::StrCat("succeeded (attempt ", job.attempt(), ")"));
      }
      return;
    }
    case v1::TASK_STATUS_FAILED:
      if (IsRestartable(request.error_code())) {
        AbortAttempt(entry, absl::StrCat(who, ": ", request.message()));
      } else {
        SetTerminal(entry, v1::JOB_STATE_FAILED, absl::StrCat(who, ": ", request.message()));
      }
      return;
    default:  // CANCELLED without being asked: the worker is shutting down.
      AbortAttempt(entry,
                   absl::StrCat(who, " stopped: ",
                                request.message().empty() ? "cancelled" : request.message()));
      return;
  }
}

v1::ListWorkersResponse Coordinator::ListWorkers() const {
  v1::ListWorkersResponse response;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = Clock::now();
  for (const auto& [name, w] : workers_) {
    v1::WorkerInfo* info = response.add_workers();
    info->set_id(w->id);
    info->set_name(name);
    info->set_device(w->info.device());
    info->set_host(w->info.host());
    info->set_pid(w->info.pid());
    info->set_metrics_address(w->info.metrics_address());
    info->set_peak_flops(w->info.peak_flops());
    info->set_state(w->lost             ? v1::WORKER_STATE_LOST
                    : w->job_id.empty() ? v1::WORKER_STATE_IDLE
                                        : v1::WORKER_STATE_BUSY);
    info->set_job_id(w->job_id);
    info->set_rank(w->rank);
    info->set_attempt(w->attempt);
    info->set_seconds_since_heartbeat(
        std::chrono::duration<double>(now - w->last_heartbeat).count());
  }
  return response;
}

// --- Rendezvous --------------------------------------------------------------

absl::Status Coordinator::RendezvousSet(const std::string& key, std::string value) {
  if (key.empty() || key.size() > 1024) return Invalid("key", "1 to 1024 bytes");
  if (value.size() > (1 << 20)) return Invalid("value", "at most 1 MiB");
  std::lock_guard<std::mutex> lock(mutex_);
  if (!absl::StartsWith(key, "job/")) {
    return Invalid("key", "must start with an assignment's rendezvous_prefix");
  }
  // Keys of attempts that ended are refused, so a late rank cannot
  // resurrect them.
  bool live = false;
  for (const auto& [number, entry] : jobs_) {
    if (entry->job.state() == v1::JOB_STATE_RUNNING &&
        absl::StartsWith(key, RendezvousPrefix(entry->job))) {
      live = true;
      break;
    }
  }
  if (!live) {
    return absl::FailedPreconditionError(
        absl::StrCat("key ", key, " is not under the prefix of a running attempt"));
  }
  rendezvous_[key] = std::move(value);
  changed_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Coordinator::RendezvousWait(
    const std::vector<std::string>& keys, std::chrono::milliseconds timeout,
    const std::function<bool()>& stop) {
  if (keys.empty()) return Invalid("keys", "name at least one key");
  if (timeout.count() <= 0 || timeout > std::chrono::minutes(10)) {
    return Invalid("timeout_ms", "must be in (0, 600000]");
  }
  const auto deadline = Clock::now() + timeout;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    std::vector<std::string> missing;
    for (const std::string& key : keys) {
      if (!rendezvous_.contains(key)) missing.push_back(key);
    }
    if (missing.empty()) break;
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("rendezvous keys still missing: ", absl::StrJoin(missing, ", ")));
    }
    if (stop()) return absl::CancelledError("the caller went away");
    changed_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(250)));
  }
  std::vector<std::string> values;
  values.reserve(keys.size());
  for (const std::string& key : keys) values.push_back(rendezvous_.at(key));
  return values;
}

// --- Scheduling --------------------------------------------------------------

void Coordinator::Tick() {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = Clock::now();
  for (auto& [name, w] : workers_) {
    if (w->lost || now - w->last_heartbeat < options_.heartbeat_timeout) continue;
    w->lost = true;
    const double seconds = std::chrono::duration<double>(now - w->last_heartbeat).count();
    Log(absl::StrCat("worker ", name, " lost (no heartbeat for ", absl::StrFormat("%.1f", seconds),
                     " s)"));
    if (AttemptIsCurrent(*w)) {
      AbortAttempt(jobs_.at(*ParseJobId("job_id", w->job_id)).get(),
                   absl::StrCat("worker ", name, " lost (no heartbeat for ",
                                absl::StrFormat("%.1f", seconds), " s)"));
    }
  }
  for (auto& [number, entry] : jobs_) {
    if (!entry->adopt_deadline || now < *entry->adopt_deadline) continue;
    std::vector<std::string> missing;
    for (int r = 0; r < entry->job.workers_size(); ++r) {
      auto it = workers_.find(entry->job.workers(r));
      if (it == workers_.end() || it->second->job_id != entry->job.id() ||
          it->second->attempt != entry->job.attempt()) {
        missing.push_back(absl::StrCat("rank ", r, " (", entry->job.workers(r), ")"));
      }
    }
    entry->adopt_deadline.reset();
    if (!missing.empty()) {
      AbortAttempt(entry.get(), absl::StrCat(absl::StrJoin(missing, ", "),
                                             " did not report back after the coordinator "
                                             "restarted"));
    }
  }
  Schedule();
}

void Coordinator::Schedule() {
  std::vector<WorkerEntry*> idle;
  int64_t alive = 0;
  for (auto& [name, w] : workers_) {
    if (w->lost) continue;
    ++alive;
    if (w->job_id.empty()) idle.push_back(w.get());
  }
  for (auto& [number, entry] : jobs_) {
    v1::Job& job = entry->job;
    if (job.state() != v1::JOB_STATE_PENDING) continue;
    std::string waiting_for;
    bool blocked = false;
    for (const std::string& dep : job.spec().depends_on()) {
      const v1::Job& d = jobs_.at(*ParseJobId("depends_on", dep))->job;
      if (d.state() == v1::JOB_STATE_FAILED || d.state() == v1::JOB_STATE_CANCELLED) {
        SetTerminal(entry.get(), v1::JOB_STATE_FAILED,
                    absl::StrCat("dependency ", dep, " ", StateName(d.state())));
        blocked = true;
        break;
      }
      if (d.state() != v1::JOB_STATE_SUCCEEDED) {
        waiting_for = absl::StrCat("waiting for ", dep, " (", StateName(d.state()), ")");
        blocked = true;
      }
    }
    if (blocked) {
      if (!waiting_for.empty()) job.set_message(waiting_for);
      continue;
    }
    if (job.spec().kind() == v1::JOB_KIND_INGEST) {
      if (ingest_running_) {
        job.set_message("waiting for the running ingest to finish");
      } else {
        StartIngest(entry.get());
      }
      continue;
    }
    const auto need = static_cast<size_t>(job.spec().world_size());
    // A training job runs on workers of the kind its config's `device`
    // names (cpu, or cuda on any GPU): one backend for all its ranks.
    const std::string kind = DeviceKind(job.spec());
    std::vector<WorkerEntry*> pool;
    for (WorkerEntry* w : idle) {
      if (kind.empty() || DeviceKindOf(w->info.device()) == kind) pool.push_back(w);
    }
    if (pool.size() < need) {
      std::string message = absl::StrCat("waiting for ", need, " idle worker", need > 1 ? "s" : "",
                                         " (", alive, " registered, ", idle.size(), " idle");
      if (pool.size() < idle.size()) {
        absl::StrAppend(&message, ", ", pool.size(), " of them ", kind,
                        ": the config's device asks for ", kind, " workers");
      }
      job.set_message(message + ")");
      continue;
    }
    // Gang: every rank now. Idle workers in name order, so placement is
    // reproducible; under tensor parallelism each TP group (tp consecutive
    // ranks) on one host when the idle workers allow it.
    const std::string placement = PlaceRanks(job.spec(), &pool);
    job.set_attempt(job.attempt() + 1);
    job.set_state(v1::JOB_STATE_RUNNING);
    if (!job.has_started()) *job.mutable_started() = TimeUtil::GetCurrentTime();
    job.clear_workers();
    for (size_t r = 0; r < need; ++r) {
      WorkerEntry* w = pool[r];
      job.add_workers(w->info.name());
      w->job_id = job.id();
      w->attempt = job.attempt();
      w->rank = static_cast<int32_t>(r);
      w->started = false;
    }
    std::erase_if(idle, [](const WorkerEntry* w) { return !w->job_id.empty(); });
    entry->rank_done.assign(need, false);
    Record(entry.get(),
           absl::StrCat(job.attempt() == 1 ? "started" : "restarted", " attempt ", job.attempt(),
                        " on ", absl::StrJoin(job.workers(), ", "), placement),
           true)
        .IgnoreError();
  }
}

std::string Coordinator::DeviceKindOf(const std::string& device) {
  return absl::StartsWith(device, "cuda") ? "cuda" : "cpu";
}

std::string Coordinator::DeviceKind(const v1::JobSpec& spec) const {
  if (spec.train_config_yaml().empty()) return "";
  absl::StatusOr<JobConfig> config =
      ParseJobConfig(spec.train_config_yaml(), "spec.train_config_yaml", paths_.data_dir());
  // An invalid config is the worker's to report, naming the key.
  return config.ok() ? DeviceKindOf(config->device) : "";
}

std::string Coordinator::PlaceRanks(const v1::JobSpec& spec, std::vector<WorkerEntry*>* idle) {
  const auto need = static_cast<size_t>(spec.world_size());
  if (need < 2 || spec.train_config_yaml().empty()) return "";
  absl::StatusOr<JobConfig> config =
      ParseJobConfig(spec.train_config_yaml(), "spec.train_config_yaml", paths_.data_dir());
  if (!config.ok() || config->parallel.tp < 2) return "";
  const auto tp = static_cast<size_t>(config->parallel.tp);
  const size_t groups = need / tp;
  // Hosts in the order their first idle worker comes (name order).
  std::vector<std::string> hosts;
  std::map<std::string, std::vector<WorkerEntry*>> by_host;
  for (WorkerEntry* w : *idle) {
    auto& list = by_host[w->info.host()];
    if (list.empty()) hosts.push_back(w->info.host());
    list.push_back(w);
  }
  std::vector<WorkerEntry*> chosen;
  for (const std::string& host : hosts) {
    const std::vector<WorkerEntry*>& list = by_host[host];
    for (size_t g = 0; g + 1 <= list.size() / tp && chosen.size() < groups * tp; ++g) {
      chosen.insert(chosen.end(), list.begin() + g * tp, list.begin() + (g + 1) * tp);
    }
  }
  if (chosen.size() < groups * tp) {
    std::vector<std::string> counts;
    counts.reserve(hosts.size());
    for (const std::string& host : hosts) {
      counts.push_back(absl::StrCat(host, ": ", by_host[host].size()));
    }
    return absl::StrCat(" (tensor-parallel groups of ", tp,
                        " span hosts: no placement puts every group on one host; idle workers "
                        "per host: ",
                        absl::StrJoin(counts, ", "), ")");
  }
  // The chosen workers first, in group order; the rest keep name order.
  std::vector<WorkerEntry*> rest;
  for (WorkerEntry* w : *idle) {
    if (std::find(chosen.begin(), chosen.end(), w) == chosen.end()) rest.push_back(w);
  }
  *idle = std::move(chosen);
  idle->insert(idle->end(), rest.begin(), rest.end());
  return absl::StrCat(" (", groups, " tensor-parallel group", groups == 1 ? "" : "s", " of ", tp,
                      ", each on one host)");
}

void Coordinator::StartIngest(JobEntry* entry) {
  v1::Job& job = entry->job;
  const v1::IngestJob& spec = job.spec().ingest();
  IngestOptions options;
  options.store = store_;
  options.store_dir = store_->dir();
  options.corpus = spec.corpus();
  options.tokenizer = spec.tokenizer();
  options.inputs.assign(spec.inputs().begin(), spec.inputs().end());
  options.input.format = *ParseInputFormat(spec.format());
  options.input.text_field = spec.text_field();
  options.input.split_lines = spec.split_lines();
  options.held_out = spec.held_out();
  if (!spec.sft_format().empty()) {
    options.sft = *ParseSftFormat(spec.sft_format());
    options.chat_template = *ParseChatTemplate(spec.chat_template());
  }
  options.threads = options_.ingest_threads;
  entry->ingest_cancel = std::make_shared<std::atomic<bool>>(false);
  options.cancel = entry->ingest_cancel.get();

  job.set_attempt(job.attempt() + 1);
  job.set_state(v1::JOB_STATE_RUNNING);
  if (!job.has_started()) *job.mutable_started() = TimeUtil::GetCurrentTime();
  job.clear_workers();
  job.add_workers("coordinator");
  Record(entry,
         absl::StrCat("ingesting ", spec.inputs_size(), " file(s) into corpus ", spec.corpus()),
         true)
      .IgnoreError();
  ingest_running_ = true;
  // The previous ingest has finished (ingest_running_ was false). When it is
  // this very thread (FinishIngest schedules the next one), it cannot join
  // itself: it is retired and joined by the next start or the destructor.
  if (retired_ingest_thread_.joinable() &&
      retired_ingest_thread_.get_id() != std::this_thread::get_id()) {
    retired_ingest_thread_.join();
  }
  if (ingest_thread_.joinable()) {
    if (ingest_thread_.get_id() == std::this_thread::get_id()) {
      retired_ingest_thread_ = std::move(ingest_thread_);
    } else {
      ingest_thread_.join();
    }
  }
  const uint64_t number = entry->number;
  const int32_t attempt = job.attempt();
  std::shared_ptr<std::atomic<bool>> cancel = entry->ingest_cancel;
  ingest_thread_ = std::thread([this, options, number, attempt, cancel]() {
    auto progress = [this, number](const IngestProgress& p) {
      std::lock_guard<std::mutex> lock(mutex_);
      JobEntry* e = jobs_.at(number).get();
      v1::Progress& pr = *e->job.mutable_progress();
      pr.set_step(p.files_done);
      pr.set_total_steps(p.files_total);
      pr.set_tokens(static_cast<int64_t>(p.tokens));
      pr.set_tokens_per_second(p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0);
      if (p.bytes_read > 0 && p.bytes_total > p.bytes_read) {
        pr.set_eta_seconds(p.seconds * static_cast<double>(p.bytes_total - p.bytes_read) /
                           static_cast<double>(p.bytes_read));
      }
      if (Clock::now() - e->last_progress_event >= kProgressEventInterval) {
        RecordProgress(e).IgnoreError();
      }
    };
    absl::StatusOr<IngestReport> report = Ingest(options, progress);
    std::map<std::string, double> result;
    if (report.ok()) {
      result = {{"documents", static_cast<double>(report->documents)},
                {"tokens", static_cast<double>(report->tokens)},
                {"files_ingested", static_cast<double>(report->files_ingested)},
                {"files_skipped", static_cast<double>(report->files_skipped)},
                {"malformed", static_cast<double>(report->malformed)}};
    }
    FinishIngest(number, attempt, report.status(), result);
  });
}

void Coordinator::FinishIngest(uint64_t number, int32_t attempt, const absl::Status& status,
                               const std::map<std::string, double>& result) {
  std::lock_guard<std::mutex> lock(mutex_);
  ingest_running_ = false;
  JobEntry* entry = jobs_.at(number).get();
  entry->ingest_cancel.reset();
  if (shutting_down_) {
    // Stopped by our shutdown, not by the user: the job stays RUNNING in the
    // store and Load() runs it again (ingestion resumes by file), and
    // nothing new starts.
    return;
  }
  v1::Job& job = entry->job;
  if (job.state() == v1::JOB_STATE_RUNNING && job.attempt() == attempt) {
    if (status.ok()) {
      for (const auto& [key, value] : result) (*job.mutable_result())[key] = value;
      SetTerminal(
          entry, v1::JOB_STATE_SUCCEEDED,
          absl::StrCat("ingested ", static_cast<int64_t>(result.at("documents")), " documents, ",
                       static_cast<int64_t>(result.at("tokens")), " tokens"));
    } else {
      SetTerminal(entry, v1::JOB_STATE_FAILED, std::string(status.message()));
    }
  }
  Schedule();
}

MetricsSnapshot Coordinator::Snapshot() const {
  MetricsSnapshot s;
  std::lock_guard<std::mutex> lock(mutex_);
  for (int state = v1::JOB_STATE_PENDING; state <= v1::JOB_STATE_CANCELLED; ++state) {
    s.jobs_by_state[static_cast<v1::JobState>(state)] = 0;
  }
  for (int state = v1::WORKER_STATE_IDLE; state <= v1::WORKER_STATE_LOST; ++state) {
    s.workers_by_state[static_cast<v1::WorkerState>(state)] = 0;
  }
  for (auto it = jobs_.rbegin(); it != jobs_.rend() && s.evals.size() < 100; ++it) {
    const v1::Job& job = it->second->job;
    if (job.state() != v1::JOB_STATE_SUCCEEDED || job.spec().kind() != v1::JOB_KIND_EVAL) continue;
    EvalResultView view{.id = job.id(),
                        .name = job.spec().name(),
                        .task = job.spec().eval().task().empty() ? "ppl" : job.spec().eval().task(),
                        .result = {}};
    for (const auto& [key, value] : job.result()) view.result[key] = value;
    s.evals.push_back(std::move(view));
  }
  for (const auto& [number, entry] : jobs_) {
    const v1::Job& job = entry->job;
    ++s.jobs_by_state[job.state()];
    s.restarts_total += job.restarts();
    if (job.state() != v1::JOB_STATE_RUNNING) continue;
    s.running.push_back(JobMetricsView{.id = job.id(),
                                       .name = job.spec().name(),
                                       .kind = rpc::JobKindName(job.spec().kind()),
                                       .state = job.state(),
                                       .restarts = job.restarts(),
                                       .progress = job.progress()});
  }
  for (const auto& [name, w] : workers_) {
    s.worker_peak_flops[name] = w->info.peak_flops();
    ++s.workers_by_state[w->lost             ? v1::WORKER_STATE_LOST
                         : w->job_id.empty() ? v1::WORKER_STATE_IDLE
                                             : v1::WORKER_STATE_BUSY];
  }
  return s;
}

}  // namespace llamapro::coordinator
