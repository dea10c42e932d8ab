#include "eval/scoring.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/llama.h"

namespace llamapro {

double LogProbability(std::span<const float> logits, int32_t target) {
  double max_logit = -INFINITY;
  for (float v : logits) max_logit = std::max(max_logit, static_cast<double>(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max_logit);
  return static_cast<double>(logits[target]) - max_logit - std::log(sum);
}

absl::Status ContinuationScorer::Tokenize(absl::string_view prompt, absl::string_view continuation,
                                          std::vector<int32_t>* ids,
                                          int64_t* continuation_start) const {
  const Tokenizer& tokenizer = *model_.tokenizer;
  std::vector<int32_t> context;
  LP_RETURN_IF_ERROR(tokenizer.Encode(prompt, &context));
  LP_RETURN_IF_ERROR(tokenizer.Encode(absl::StrCat(prompt, continuation), ids));
  auto start = static_cast<int64_t>(context.size());
  if (start >= static_cast<int64_t>(ids->size())) {
    // The continuation merged into the prompt's last token: score its own
    // tokens after the prompt's.
    std::vector<int32_t> tail;
    LP_RETURN_IF_ERROR(tokenizer.Encode(continuation, &tail));
    if (tail.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the continuation \"", continuation, "\" has no tokens"));
    }
    *ids = context;
    ids->insert(ids->end(), tail.begin(), tail.end());
  }
  const TokenizerInfo& info = tokenizer.info();
  if (info.add_bos && info.bos_id >= 0) {
    ids->insert(ids->begin(), info.bos_id);
    ++start;
  }
  // Keep the last max_position_embeddings tokens (the continuation's end).
  const int64_t window = model_.config.max_position_embeddings;
  const auto total = static_cast<int64_t>(ids->size());
  if (total > window) {
    const int64_t drop = total - window;
    if (drop >= start) {
      return absl::OutOfRangeError(absl::StrCat("the continuation alone has ", total - start,
                                                " tokens, more than the model's context of ",
                                                window));
    }
    ids->erase(ids->begin(), ids->begin() + drop);
    start -= drop;
  }
  *continuation_start = start;
  return absl::OkStatus();
}

absl::StatusOr<ContinuationScore> ContinuationScorer::Score(absl::string_view prompt,
                                                            absl::string_view continuation) {
  std::vector<int32_t> ids;
  int64_t start = 0;
  LP_RETURN_IF_ERROR(Tokenize(prompt, continuation, &ids, &start));
  if (start == 0) {
    return absl::InvalidArgumentError(
        "nothing precedes the continuation (an empty prompt needs a BOS token)");
  }
  // Inputs are every token but the last; position t predicts ids[t + 1].
  const auto inputs = static_cast<int64_t>(ids.size()) - 1;
  LP_ASSIGN_OR_RETURN(std::vector<float> logits,
                      ForwardLogits(model_.config, model_.weights,
                                    std::span<const int32_t>(ids).first(inputs), 1, inputs));
  const int64_t v = model_.config.vocab_size;
  ContinuationScore score;
  score.greedy = true;
  for (int64_t t = start - 1; t < inputs; ++t) {
    const std::span<const float> row = std::span<const float>(logits).subspan(t * v, v);
    const int32_t target = ids[t + 1];
    score.loglikelihood += LogProbability(row, target);
    score.greedy = score.greedy && ArgMax(row) == target;
    ++score.tokens;
  }
  return score;
}

}  // namespace llamapro
