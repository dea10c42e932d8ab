#include "eval/choice.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "eval/jsonl.h"
#include "eval/scoring.h"

namespace llamapro {

absl::StatusOr<std::vector<ChoiceQuestion>> ReadChoiceTask(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::vector<JsonLine> lines, ReadJsonLines(path));
  std::vector<ChoiceQuestion> questions;
  questions.reserve(lines.size());
  for (const JsonLine& line : lines) {
    ChoiceQuestion q;
    LP_ASSIGN_OR_RETURN(q.context, StringField(path, line, "context"));
    LP_ASSIGN_OR_RETURN(q.choices, StringListField(path, line, "choices"));
    LP_ASSIGN_OR_RETURN(int64_t gold, IntegerField(path, line, "gold"));
    if (q.choices.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line.line, ": \"choices\" needs at least 2 entries"));
    }
    if (gold < 0 || gold >= static_cast<int64_t>(q.choices.size())) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line.line, ": \"gold\" is ", gold,
                                                     ", not an index of the ", q.choices.size(),
                                                     " choices"));
    }
    q.gold = static_cast<int>(gold);
    questions.push_back(std::move(q));
  }
  return questions;
}

double MeanStderr(double p, int64_t n) {
  if (n < 2) return 0;
  return std::sqrt(p * (1 - p) / static_cast<double>(n - 1));
}

std::string ChoicePrompt(const std::vector<ChoiceQuestion>& questions, int64_t index,
                         const std::vector<ChoiceQuestion>& fewshot, bool same_file,
                         const ChoiceOptions& options) {
  std::string prompt = options.description;
  if (options.shots > 0) {
    std::vector<int64_t> pool;
    for (int64_t i = 0; i < static_cast<int64_t>(fewshot.size()); ++i) {
      if (!(same_file && i == index)) pool.push_back(i);
    }
    // A partial Fisher-Yates shuffle seeded by (seed, question).
    std::mt19937_64 rng(options.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index));
    const auto k = std::min<int64_t>(options.shots, static_cast<int64_t>(pool.size()));
    for (int64_t i = 0; i < k; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, static_cast<int64_t>(pool.size()) - 1);
      std::swap(pool[i], pool[pick(rng)]);
      const ChoiceQuestion& example = fewshot[pool[i]];
      absl::StrAppend(&prompt, example.context, options.delimiter, example.choices[example.gold],
                      options.fewshot_separator);
    }
  }
  absl::StrAppend(&prompt, questions[index].context);
  return prompt;
}

absl::StatusOr<ChoiceResult> EvaluateChoice(const InferenceModel& model,
                                            const std::vector<ChoiceQuestion>& questions,
                                            const std::vector<ChoiceQuestion>& fewshot,
                                            const ChoiceOptions& options,
                                            const std::function<void(int64_t, int64_t)>& progress) {
  if (model.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(model.dir, " has no tokenizer.model: choice tasks need one"));
  }
  const bool same_file = &questions == &fewshot;
  const int64_t pool = static_cast<int64_t>(fewshot.size()) - (same_file ? 1 : 0);
  if (options.shots < 0 || options.shots > pool) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shots ", options.shots, ": the few-shot file ", "holds ", pool, " usable examples"));
  }
  int64_t n = static_cast<int64_t>(questions.size());
  if (options.limit > 0) n = std::min(n, options.limit);
  ChoiceResult result;
  result.questions = n;
  int64_t correct = 0, correct_norm = 0;
  ContinuationScorer scorer(model);
  for (int64_t i = 0; i < n; ++i) {
    if (options.cancel != nullptr && options.cancel->load()) {
      return absl::CancelledError(absl::StrCat("cancelled after ", i, " of ", n, " questions"));
    }
    const ChoiceQuestion& q = questions[i];
    const std::string prompt = ChoicePrompt(questions, i, fewshot, same_file, options);
    ChoiceQuestionResult r;
    r.gold = q.gold;
    double best = 0, best_norm = 0;
    for (size_t c = 0; c < q.choices.size(); ++c) {
      const std::string continuation = options.delimiter + q.choices[c];
      LP_ASSIGN_OR_RETURN(ContinuationScore score, scorer.Score(prompt, continuation));
      const auto bytes = static_cast<int64_t>(continuation.size());
      const double norm = score.loglikelihood / static_cast<double>(std::max<int64_t>(bytes, 1));
      r.loglikelihoods.push_back(score.loglikelihood);
      r.lengths.push_back(bytes);
      if (c == 0 || score.loglikelihood > best) {
        best = score.loglikelihood;
        r.predicted = static_cast<int>(c);
      }
      if (c == 0 || norm > best_norm) {
        best_norm = norm;
        r.predicted_norm = static_cast<int>(c);
      }
    }
    correct += r.predicted == r.gold ? 1 : 0;
    correct_norm += r.predicted_norm == r.gold ? 1 : 0;
    result.details.push_back(std::move(r));
    if (progress) progress(i + 1, n);
  }
  if (n > 0) {
    result.acc = static_cast<double>(correct) / static_cast<double>(n);
    result.acc_norm = static_cast<double>(correct_norm) / static_cast<double>(n);
  }
  result.acc_stderr = MeanStderr(result.acc, n);
  result.acc_norm_stderr = MeanStderr(result.acc_norm, n);
  return result;
}

}  // namespace llamapro
