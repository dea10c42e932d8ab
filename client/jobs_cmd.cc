// Jobs on a coordinator: submit, jobs, get, watch, cancel
// (docs/llamaproctl.md).
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "base/units.h"
#include "client/commands.h"
#include "client/coordinator_client.h"
#include "client/progress.h"
#include "client/remote.h"
#include "client/submit_spec.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "rpc/rpc.h"

namespace llamapro::cli {
namespace {

// Exit statuses of `watch` (and `submit --watch`) by how the job ended.
constexpr int kExitSucceeded = 0;
constexpr int kExitFailed = 1;
constexpr int kExitCancelled = 3;

int ExitCodeOf(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_SUCCEEDED:
      return kExitSucceeded;
    case v1::JOB_STATE_CANCELLED:
      return kExitCancelled;
    default:
      return kExitFailed;
  }
}

// The first line of `text`, at most `limit` characters ("..." marks a cut).
std::string OneLine(const std::string& text, size_t limit) {
  std::string line = text.substr(0, text.find('\n'));
  if (line.size() < text.size() || line.size() > limit) {
    line = line.substr(0, std::min(line.size(), limit > 3 ? limit - 3 : limit));
    line += "...";
  }
  return line;
}

std::string Perplexities(const google::protobuf::Map<std::string, double>& values) {
  // Sorted by corpus, so lines compare across events.
  const std::map<std::string, double> sorted(values.begin(), values.end());
  std::vector<std::string> parts;
  parts.reserve(sorted.size());
  for (const auto& [corpus, value] : sorted)
    parts.push_back(absl::StrFormat("%s %.4g", corpus, value));
  return absl::StrJoin(parts, ", ");
}

std::string StepText(const v1::Progress& progress) {
  if (progress.total_steps() > 0) {
    return absl::StrFormat("%d/%d", progress.step(), progress.total_steps());
  }
  return progress.step() > 0 ? absl::StrCat(progress.step()) : "-";
}

// The live line of `watch`.
std::string ProgressText(const v1::JobEvent& event) {
  const v1::Progress& p = event.progress();
  std::string text = absl::StrFormat("attempt %d  step %s", event.attempt(), StepText(p));
  if (p.total_steps() > 0) {
    absl::StrAppendFormat(&text, " (%.1f%%)", 100.0 * p.step() / p.total_steps());
  }
  if (p.step() > 0 && p.loss() != 0) absl::StrAppendFormat(&text, "  loss %.4f", p.loss());
  if (p.learning_rate() > 0) absl::StrAppendFormat(&text, "  lr %.3g", p.learning_rate());
  if (p.tokens_per_second() > 0) {
    absl::StrAppend(&text, "  ", FormatCount(static_cast<uint64_t>(p.tokens_per_second())),
                    " tok/s");
  }
  if (p.eta_seconds() > 0) absl::StrAppend(&text, "  eta ", FormatDuration(p.eta_seconds()));
  if (!p.perplexity().empty()) absl::StrAppend(&text, "  ppl ", Perplexities(p.perplexity()));
  return text;
}

// Watches job `id` to its end: events as lines on stdout (with --json, one
// JobEvent per line), progress as a StatusLine on stderr. Returns the exit
// status for the state it ended in; throws CommandError when it cannot.
int WatchToEnd(const client::CoordinatorClient& client, const std::string& id, bool json) {
  StatusLine status_line(!json);
  auto on_event = [&](const v1::JobEvent& event) {
    if (json) {
      PrintJson(event);
      return;
    }
    const std::string time = FormatTime(event.time());
    switch (event.event_case()) {
      case v1::JobEvent::kProgress:
        status_line.Show(ProgressText(event));
        break;
      case v1::JobEvent::kStateChange:
        status_line.PrintAbove(
            stdout,
            absl::StrCat(time, "  ", JobStateName(event.state()), " (attempt ", event.attempt(),
                         ")", event.state_change().empty() ? "" : ": ", event.state_change()));
        break;
      case v1::JobEvent::kLog:
        status_line.PrintAbove(stdout,
                               absl::StrCat(time, "  [", event.attempt(), "] ", event.log()));
        break;
      default:
        break;
    }
  };
  auto on_break = [&](const absl::Status& why) {
    status_line.PrintAbove(stderr, absl::StrCat("watch: ", why.message(), "; reconnecting"));
  };
  auto job = client.WatchJob(id, 0, on_event, on_break);
  status_line.Finish();
  ThrowIfError(job.status());
  if (!json) {
    std::string summary = absl::StrCat("job ", job->id(), " ", JobStateName(job->state()));
    if (job->started().seconds() > 0 && job->finished().seconds() > 0) {
      absl::StrAppend(&summary, " after ",
                      FormatDuration(EpochSeconds(job->finished()) - EpochSeconds(job->started())));
    }
    if (!job->message().empty()) absl::StrAppend(&summary, ": ", job->message());
    std::printf("%s\n", summary.c_str());
    if (!job->result().empty()) std::printf("result  %s\n", Perplexities(job->result()).c_str());
    std::fflush(stdout);
  }
  return ExitCodeOf(job->state());
}

// --- submit -------------------------------------------------------------------

struct SubmitFlags {
  RemoteFlags remote;
  std::string file;
  std::string request_id;
  bool watch = false;
  bool dry_run = false;
};

void RunSubmit(const SubmitFlags& flags) {
  auto documents = client::LoadSubmitFile(flags.file);
  ThrowIfError(documents.status());
  // One request id per document, chosen once: the client library's retries
  // of a document reuse it, so the coordinator creates its job once.
  for (client::SubmitDocument& document : *documents) {
    std::string request_id;
    if (flags.request_id.empty()) {
      request_id = client::NewRequestId();
    } else if (documents->size() == 1) {
      request_id = flags.request_id;
    } else {
      request_id = absl::StrCat(flags.request_id, "-", document.document);
    }
    document.request.set_request_id(request_id);
  }
  if (flags.dry_run) {
    // Dependencies on earlier documents keep their names: there are no ids.
    for (const client::SubmitDocument& document : *documents) PrintJson(document.request);
    return;
  }
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  std::vector<std::string> ids;
  std::vector<v1::Job> jobs;
  for (const client::SubmitDocument& document : *documents) {
    const v1::SubmitJobRequest request = client::ResolveDependencies(document, ids);
    auto job = client->SubmitJob(request);
    if (!job.ok()) {
      std::string message = absl::StrCat(flags.file, ": document ", document.document);
      if (!request.spec().name().empty())
        absl::StrAppend(&message, " (", request.spec().name(), ")");
      absl::StrAppend(&message, ": ", job.status().message());
      if (!ids.empty()) {
        absl::StrAppend(&message, "; submitted before it: ", absl::StrJoin(ids, ", "));
      }
      throw CommandError(message);
    }
    if (flags.remote.json) {
      PrintJson(*job);
    } else {
      std::printf("%s\n", job->id().c_str());
      std::fflush(stdout);
    }
    ids.push_back(job->id());
    jobs.push_back(*std::move(job));
  }
  if (!flags.watch) return;
  for (const v1::Job& job : jobs) {
    if (!flags.remote.json && jobs.size() > 1) {
      std::printf("== job %s%s (%s)\n", job.id().c_str(),
                  job.spec().name().empty() ? "" : (" " + job.spec().name()).c_str(),
                  std::string(rpc::JobKindName(job.spec().kind())).c_str());
      std::fflush(stdout);
    }
    const int code = WatchToEnd(*client, job.id(), flags.remote.json);
    // Later jobs of a pipeline wait for this one: there is nothing more to
    // watch for success.
    if (code != kExitSucceeded) throw CLI::RuntimeError(code);
  }
}

// --- jobs -----------------------------------------------------------------------

struct JobsFlags {
  RemoteFlags remote;
  std::vector<std::string> states;
  std::string kind;
  int limit = 50;
};

void RunJobs(const JobsFlags& flags) {
  v1::ListJobsRequest request;
  for (const std::string& name : flags.states) {
    const v1::JobState state = ParseJobState(name);
    if (state == v1::JOB_STATE_UNSPECIFIED) {
      throw CommandError(absl::StrCat("--state: unknown state \"", name,
                                      "\" (pending, running, succeeded, failed, cancelled)"));
    }
    request.add_states(state);
  }
  // --kind is checked by CLI11 against the kind names.
  if (!flags.kind.empty()) request.set_kind(client::ParseJobKind(flags.kind));
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  v1::ListJobsResponse all;
  for (;;) {
    const int remaining = flags.limit > 0 ? flags.limit - all.jobs_size() : 1000;
    request.set_page_size(std::min(remaining, 1000));
    auto page = client->ListJobs(request);
    ThrowIfError(page.status());
    for (v1::Job& job : *page->mutable_jobs()) {
      if (flags.limit > 0 && all.jobs_size() >= flags.limit) break;
      *all.add_jobs() = std::move(job);
    }
    all.set_next_page_token(page->next_page_token());
    if (page->next_page_token().empty()) break;
    if (flags.limit > 0 && all.jobs_size() >= flags.limit) break;
    request.set_page_token(page->next_page_token());
  }
  if (flags.remote.json) {
    PrintJson(all);
    return;
  }
  const double now = NowEpochSeconds();
  std::vector<std::vector<std::string>> rows = {
      {"ID", "NAME", "KIND", "STATE", "ATTEMPT", "STEP/TOTAL", "LOSS", "AGE", "MESSAGE"}};
  for (const v1::Job& job : all.jobs()) {
    const v1::Progress& p = job.progress();
    rows.push_back(
        {job.id(), job.spec().name().empty() ? "-" : job.spec().name(),
         std::string(rpc::JobKindName(job.spec().kind())), JobStateName(job.state()),
         job.attempt() > 0 ? absl::StrCat(job.attempt()) : "-", StepText(p),
         p.step() > 0 && p.loss() != 0 ? absl::StrFormat("%.4f", p.loss()) : "-",
         job.created().seconds() > 0 ? FormatAge(now - EpochSeconds(job.created())) : "-",
         OneLine(job.message(), 60)});
  }
  PrintTable(rows);
  if (!all.next_page_token().empty()) {
    std::fprintf(stderr, "(the newest %d jobs; --limit 0 lists all)\n", all.jobs_size());
  }
}

// --- get ------------------------------------------------------------------------

struct GetFlags {
  RemoteFlags remote;
  std::string id;
};

// A scalar field of a message, as text.
std::string FieldText(const google::protobuf::Message& message,
                      const google::protobuf::FieldDescriptor* field, int index) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = message.GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      return repeated ? r->GetRepeatedString(message, field, index) : r->GetString(message, field);
    case FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(repeated ? r->GetRepeatedInt32(message, field, index)
                                   : r->GetInt32(message, field));
    case FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(repeated ? r->GetRepeatedInt64(message, field, index)
                                   : r->GetInt64(message, field));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return absl::StrCat(repeated ? r->GetRepeatedDouble(message, field, index)
                                   : r->GetDouble(message, field));
    case FieldDescriptor::CPPTYPE_BOOL:
      return (repeated ? r->GetRepeatedBool(message, field, index) : r->GetBool(message, field))
                 ? "true"
                 : "false";
    default:
      return "?";
  }
}

// The fields of an ExpandJob / EvalJob / IngestJob that are set, as rows
// "<prefix>.<field>  <value>".
void AppendSpecRows(const google::protobuf::Message& message, const std::string& prefix,
                    std::vector<std::vector<std::string>>* rows) {
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  message.GetReflection()->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    std::string value;
    if (field->is_repeated()) {
      std::vector<std::string> values;
      const int n = message.GetReflection()->FieldSize(message, field);
      values.reserve(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) values.push_back(FieldText(message, field, i));
      value = absl::StrJoin(values, ", ");
    } else {
      value = FieldText(message, field, 0);
    }
    rows->push_back({absl::StrCat(prefix, ".", field->name()), value});
  }
}

void PrintJob(const v1::Job& job) {
  const v1::JobSpec& spec = job.spec();
  const v1::Progress& p = job.progress();
  const double now = NowEpochSeconds();
  auto when = [now](const google::protobuf::Timestamp& time) {
    if (time.seconds() == 0) return std::string("-");
    return absl::StrCat(FormatTime(time), " (", FormatAge(now - EpochSeconds(time)), " ago)");
  };
  std::vector<std::vector<std::string>> rows = {
      {"id", job.id()},
      {"name", spec.name().empty() ? "-" : spec.name()},
      {"kind", std::string(rpc::JobKindName(spec.kind()))},
      {"state", JobStateName(job.state())},
  };
  if (!job.message().empty()) rows.push_back({"message", job.message()});
  if (!job.last_failure().empty()) rows.push_back({"last failure", job.last_failure()});
  rows.push_back(
      {"attempt", absl::StrCat(job.attempt(), " (", job.restarts(), " restart",
                               job.restarts() == 1 ? "" : "s", ", at most ",
                               spec.has_max_restarts() ? absl::StrCat(spec.max_restarts())
                                                       : std::string("the default"),
                               ")")});
  rows.push_back({"world size", absl::StrCat(spec.world_size())});
  if (job.workers_size() > 0) rows.push_back({"workers", absl::StrJoin(job.workers(), ", ")});
  if (spec.depends_on_size() > 0) {
    rows.push_back({"depends on", absl::StrJoin(spec.depends_on(), ", ")});
  }
  if (!job.request_id().empty()) rows.push_back({"request id", job.request_id()});
  rows.push_back({"created", when(job.created())});
  rows.push_back({"started", when(job.started())});
  rows.push_back({"finished", when(job.finished())});
  if (job.has_progress()) {
    std::string progress = absl::StrCat("step ", StepText(p));
    if (p.step() > 0 && p.loss() != 0) absl::StrAppendFormat(&progress, ", loss %.4f", p.loss());
    if (p.learning_rate() > 0) absl::StrAppendFormat(&progress, ", lr %.3g", p.learning_rate());
    if (p.grad_norm() > 0) absl::StrAppendFormat(&progress, ", grad norm %.3f", p.grad_norm());
    if (p.tokens_per_second() > 0) {
      absl::StrAppend(&progress, ", ", FormatCount(static_cast<uint64_t>(p.tokens_per_second())),
                      " tok/s");
    }
    if (p.eta_seconds() > 0 && !client::IsTerminal(job.state())) {
      absl::StrAppend(&progress, ", eta ", FormatDuration(p.eta_seconds()));
    }
    rows.push_back({"progress", progress});
    if (p.tokens() > 0) rows.push_back({"tokens", FormatCount(static_cast<uint64_t>(p.tokens()))});
    if (!p.perplexity().empty()) rows.push_back({"perplexity", Perplexities(p.perplexity())});
    if (!p.checkpoint().empty()) rows.push_back({"checkpoint", p.checkpoint()});
  }
  if (!job.result().empty()) rows.push_back({"result", Perplexities(job.result())});
  if (spec.has_expand()) AppendSpecRows(spec.expand(), "expand", &rows);
  if (spec.has_eval()) AppendSpecRows(spec.eval(), "eval", &rows);
  if (spec.has_ingest()) AppendSpecRows(spec.ingest(), "ingest", &rows);
  PrintTable(rows);
  if (!spec.train_config_yaml().empty()) {
    std::printf("train config:\n");
    for (absl::string_view line : absl::StrSplit(spec.train_config_yaml(), '\n')) {
      if (!line.empty()) std::printf("  %.*s\n", static_cast<int>(line.size()), line.data());
    }
    std::fflush(stdout);
  }
}

void RunGet(const GetFlags& flags) {
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  auto job = client->GetJob(flags.id);
  ThrowIfError(job.status());
  if (flags.remote.json) {
    PrintJson(*job);
  } else {
    PrintJob(*job);
  }
}

// --- watch, cancel -------------------------------------------------------------------

struct WatchFlags {
  RemoteFlags remote;
  std::string id;
};

void RunWatch(const WatchFlags& flags) {
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  const int code = WatchToEnd(*client, flags.id, flags.remote.json);
  if (code != kExitSucceeded) throw CLI::RuntimeError(code);
}

struct CancelFlags {
  RemoteFlags remote;
  std::vector<std::string> ids;
};

void RunCancel(const CancelFlags& flags) {
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  for (const std::string& id : flags.ids) {
    auto job = client->CancelJob(id);
    ThrowIfError(job.status());
    if (flags.remote.json) {
      PrintJson(*job);
    } else {
      std::printf("job %s %s%s%s\n", job->id().c_str(), JobStateName(job->state()).c_str(),
                  job->message().empty() ? "" : ": ", job->message().c_str());
      std::fflush(stdout);
    }
  }
}

}  // namespace

void AddJobCommands(CLI::App& app) {
  {
    auto flags = std::make_shared<SubmitFlags>();
    CLI::App* cmd = app.add_subcommand(
        "submit",
        "Submit the jobs of a YAML file (one per document; a pipeline when several) to the "
        "coordinator; prints their ids.");
    cmd->add_option("file", flags->file, "Job file (YAML; documents separated by ---)")->required();
    cmd->add_option("--request-id", flags->request_id,
                    "Idempotency key: submitting again with it returns the same job(s) "
                    "(default: a random UUID per document)");
    cmd->add_flag("--watch", flags->watch,
                  "Then watch the jobs in order, as `watch` does (same exit status)");
    cmd->add_flag("--dry-run", flags->dry_run,
                  "Print the SubmitJobRequests as JSON (one per line) and send nothing");
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunSubmit(*flags); });
  }
  {
    auto flags = std::make_shared<JobsFlags>();
    CLI::App* cmd = app.add_subcommand("jobs", "List the coordinator's jobs, newest first.");
    cmd->add_option("--state", flags->states,
                    "Only jobs in these states: pending, running, succeeded, failed, cancelled "
                    "(repeat or separate with commas)")
        ->delimiter(',');
    cmd->add_option("--kind", flags->kind, "Only jobs of this kind")
        ->check(CLI::IsMember({"expand", "pretrain", "sft", "eval", "ingest"}));
    cmd->add_option("--limit", flags->limit, "At most this many jobs (0: all)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunJobs(*flags); });
  }
  {
    auto flags = std::make_shared<GetFlags>();
    CLI::App* cmd = app.add_subcommand("get", "Show one job in full.");
    cmd->add_option("job", flags->id, "Job id")->required();
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunGet(*flags); });
  }
  {
    auto flags = std::make_shared<WatchFlags>();
    CLI::App* cmd = app.add_subcommand(
        "watch",
        "Follow a job to its end: events and a live progress line. Exit status 0 when it "
        "succeeded, 1 when it failed, 3 when it was cancelled.");
    cmd->add_option("job", flags->id, "Job id")->required();
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunWatch(*flags); });
  }
  {
    auto flags = std::make_shared<CancelFlags>();
    CLI::App* cmd = app.add_subcommand("cancel", "Cancel jobs.");
    cmd->add_option("jobs", flags->ids, "Job ids")->required();
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunCancel(*flags); });
  }
}

}  // namespace llamapro::cli
