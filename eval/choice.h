// Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness
// scores ARC, HellaSwag, MMLU or Winogrande: for each question the model
// picks the choice whose continuation of the context it finds most likely.
//
// Task files are JSON lines, one question each:
//   {"context": "Question: ...\nAnswer:", "choices": ["a", "b", ...], "gold": 1}
// A k-shot prompt prepends k examples drawn (with a seed, never the question
// itself when the same file serves) from a separate file of the same format:
//   <description>ex1.context<delim>ex1.choices[gold]\n\nex2...\n\n<context>
// and each choice is scored as the continuation `<delim><choice>` (delim: a
// space by default). The continuation's tokens are those of
// encode(prompt + continuation) beyond encode(prompt) (the harness's rule);
// the prompt is truncated from the left to fit the context window.
//
//   acc       fraction of questions whose highest sum of log p(continuation
//             tokens) is the gold choice;
//   acc_norm  the same with each sum divided by the continuation's length in
//             UTF-8 bytes (the harness's length normalisation, which stops
//             long choices being penalised for having more tokens);
// each with its standard error sqrt(acc (1 - acc) / (n - 1)). Ties go to the
// lowest choice index.
#ifndef LLAMAPRO_EVAL_CHOICE_H_
#define LLAMAPRO_EVAL_CHOICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eval/generate.h"

namespace llamapro {

struct ChoiceQuestion {
  std::string context;
  std::vector<std::string> choices;
  int gold = 0;
};

// Reads a task file; errors name the file, the line and the field.
absl::StatusOr<std::vector<ChoiceQuestion>> ReadChoiceTask(const std::string& path);

struct ChoiceOptions {
  int shots = 0;                // k: examples prepended to each question.
  uint64_t seed = 1234;         // Which examples (a pure function of the seed and question).
  std::string delimiter = " ";  // Between the context and a choice.
  std::string description;      // Prepended to every prompt ("" for none).
  std::string fewshot_separator = "\n\n";
  int64_t limit = 0;  // > 0: only the first `limit` questions.
  // Set by another thread: stop before the next question (Cancelled).
  const std::atomic<bool>* cancel = nullptr;
};

struct ChoiceQuestionResult {
  std::vector<double> loglikelihoods;  // Per choice: sum of log p over its tokens.
  std::vector<int64_t> lengths;        // Per choice: UTF-8 bytes of the continuation.
  int predicted = 0;                   // argmax loglikelihood.
  int predicted_norm = 0;              // argmax loglikelihood / length.
  int gold = 0;
};

struct ChoiceResult {
  int64_t questions = 0;
  double acc = 0, acc_stderr = 0;
  double acc_norm = 0, acc_norm_stderr = 0;
  std::vector<ChoiceQuestionResult> details;
};

// Scores every question; `fewshot` must hold at least `shots` examples
// (it may be `questions` itself: a question is never its own example).
// `progress(done, total)` after each question, when set.
absl::StatusOr<ChoiceResult> EvaluateChoice(
    const InferenceModel& model, const std::vector<ChoiceQuestion>& questions,
    const std::vector<ChoiceQuestion>& fewshot, const ChoiceOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = {});

// The prompt of question `index` (its examples drawn as documented above).
std::string ChoicePrompt(const std::vector<ChoiceQuestion>& questions, int64_t index,
                         const std::vector<ChoiceQuestion>& fewshot, bool same_file,
                         const ChoiceOptions& options);

// sqrt(p (1 - p) / (n - 1)) for a mean p of n zeros and ones (0 when n < 2).
double MeanStderr(double p, int64_t n);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_CHOICE_H_
