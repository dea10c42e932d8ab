// Code generation scored by execution (HumanEval, MBPP): the model completes
// each task's prompt, and the completion runs against the task's tests in
// the Python sandbox (eval/sandbox.h, docs/sandbox.md: model output is
// untrusted code). pass@1 is the fraction of tasks whose completion passes
// (with samples > 1, the mean over tasks of passed / samples).
//
// Task files are JSON lines in either format:
//   HumanEval: {"task_id", "prompt", "test", "entry_point"}
//     program = prompt + completion + "\n\n" + test + "\n\ncheck(entry_point)\n"
//   MBPP:      {"task_id", "text", "test_list": [...], "test_setup_code"?}
//     prompt  = '"""\n' + text + "\n" + test_list[0] + '\n"""\n'
//     program = prompt + completion + "\n\n" + test_setup_code + tests, one per line
#ifndef LLAMAPRO_EVAL_CODE_H_
#define LLAMAPRO_EVAL_CODE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eval/generate.h"
#include "eval/sandbox.h"

namespace llamapro {

struct CodeTask {
  std::string task_id;
  std::string prompt;  // What the model completes.
  std::string tests;   // Appended after the completion (ends with the check call).
};

// Reads HumanEval- or MBPP-format lines (each line either); errors name
// file:line and the field.
absl::StatusOr<std::vector<CodeTask>> ReadCodeTasks(const std::string& path);

// The stop strings of the Codex/HumanEval evaluation: a completion ends where
// a new top-level statement begins.
std::vector<std::string> DefaultCodeStops();

struct CodeOptions {
  SamplingOptions sampling;  // Greedy by default; stop = DefaultCodeStops().
  int samples = 1;           // Completions per task.
  SandboxLimits limits;
  std::string python = "/usr/bin/python3";
  int64_t limit = 0;                          // > 0: only the first `limit` tasks.
  const std::atomic<bool>* cancel = nullptr;  // Checked before each task.
  CodeOptions() {
    sampling.max_tokens = 384;
    sampling.stop = DefaultCodeStops();
    limits.wall_seconds = 10;
  }
};

struct CodeTaskResult {
  std::string task_id;
  std::vector<std::string> completions;
  std::vector<std::string> outcomes;  // SandboxOutcomeName per completion.
  int passed = 0;
};

struct CodeResult {
  int64_t tasks = 0;
  double pass_at_1 = 0;
  std::vector<CodeTaskResult> details;
};

absl::StatusOr<CodeResult> EvaluateCode(const InferenceModel& model,
                                        const std::vector<CodeTask>& tasks,
                                        const CodeOptions& options,
                                        const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_CODE_H_
