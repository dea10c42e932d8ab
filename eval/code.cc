#include "eval/code.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "eval/jsonl.h"
#include "eval/shift.h"

namespace llamapro {

std::vector<std::string> DefaultCodeStops() {
  return {"\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert", "\n```"};
}

absl::StatusOr<std::vector<CodeTask>> ReadCodeTasks(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::vector<JsonLine> lines, ReadJsonLines(path));
  std::vector<CodeTask> tasks;
  for (const JsonLine& line : lines) {
    CodeTask task;
    const nlohmann::json& id =
        line.value.contains("task_id") ? line.value["task_id"] : nlohmann::json(line.line);
    task.task_id = id.is_string() ? id.get<std::string>() : id.dump();
    if (line.value.contains("prompt")) {  // HumanEval
      LP_ASSIGN_OR_RETURN(task.prompt, StringField(path, line, "prompt"));
      LP_ASSIGN_OR_RETURN(std::string test, StringField(path, line, "test"));
      LP_ASSIGN_OR_RETURN(std::string entry, StringField(path, line, "entry_point"));
      task.tests = absl::StrCat("\n\n", test, "\n\ncheck(", entry, ")\n");
    } else if (line.value.contains("text")) {  // MBPP
      LP_ASSIGN_OR_RETURN(std::string text, StringField(path, line, "text"));
      LP_ASSIGN_OR_RETURN(std::vector<std::string> tests, StringListField(path, line, "test_list"));
      if (tests.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ":", line.line, ": \"test_list\" is empty"));
      }
      std::string setup;
      if (line.value.contains("test_setup_code")) {
        LP_ASSIGN_OR_RETURN(setup, StringField(path, line, "test_setup_code"));
      }
      task.prompt = absl::StrCat("\"\"\"\n", text, "\n", tests[0], "\n\"\"\"\n");
      task.tests = absl::StrCat("\n\n", setup, "\n", absl::StrJoin(tests, "\n"), "\n");
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line.line,
          ": neither a HumanEval task (\"prompt\", \"test\", \"entry_point\") nor an MBPP task "
          "(\"text\", \"test_list\")"));
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
}

absl::StatusOr<CodeResult> EvaluateCode(const InferenceModel& model,
                                        const std::vector<CodeTask>& tasks,
                                        const CodeOptions& options,
                                        const std::function<void(int64_t, int64_t)>& progress) {
  if (model.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(model.dir, " has no tokenizer.model: code tasks need one"));
  }
  if (options.samples < 1) return absl::InvalidArgumentError("samples must be at least 1");
  if (options.samples > 1 && options.sampling.temperature == 0) {
    return absl::InvalidArgumentError(
        "several samples per task need a temperature > 0 (greedy decoding repeats itself)");
  }
  LP_RETURN_IF_ERROR(ValidateSamplingOptions(options.sampling));
  CodeResult result;
  int64_t n = static_cast<int64_t>(tasks.size());
  if (options.limit > 0) n = std::min(n, options.limit);
  result.tasks = n;
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (options.cancel != nullptr && options.cancel->load()) {
      return absl::CancelledError(absl::StrCat("cancelled after ", i, " of ", n, " tasks"));
    }
    const CodeTask& task = tasks[i];
    CodeTaskResult r;
    r.task_id = task.task_id;
    LP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptIds(*model.tokenizer, task.prompt));
    for (int s = 0; s < options.samples; ++s) {
      SamplingOptions sampling = options.sampling;
      sampling.seed =
          options.sampling.seed + static_cast<uint64_t>(i) * 1000003u + static_cast<uint64_t>(s);
      LP_ASSIGN_OR_RETURN(Generation generation, Generate(model, ids, sampling));
      const std::string program = absl::StrCat(task.prompt, generation.text, task.tests);
      LP_ASSIGN_OR_RETURN(SandboxResult run,
                          RunPythonSandboxed(program, options.limits, options.python));
      if (run.outcome == SandboxOutcome::kError) {
        // The machine's fault, not the program's: not a failed sample.
        return absl::InternalError(
            absl::StrCat("task ", task.task_id, ": the sandbox could not run it: ", run.detail));
      }
      r.passed += run.outcome == SandboxOutcome::kPassed ? 1 : 0;
      r.completions.push_back(std::move(generation.text));
      r.outcomes.emplace_back(SandboxOutcomeName(run.outcome));
    }
    total += static_cast<double>(r.passed) / options.samples;
    result.details.push_back(std::move(r));
    if (progress) progress(i + 1, n);
  }
  if (n > 0) result.pass_at_1 = total / static_cast<double>(n);
  return result;
}

}  // namespace llamapro
