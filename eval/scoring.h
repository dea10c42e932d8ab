// Log-likelihood of a continuation given a prompt, with the tokenization
// rule of lm-evaluation-harness: the continuation's tokens are those of
// encode(prompt + continuation) beyond the first |encode(prompt)| (so a
// token spanning the boundary belongs to the continuation), with BOS first
// when the tokenizer adds one, truncated from the left to the model's
// context window.
#ifndef LLAMAPRO_EVAL_SCORING_H_
#define LLAMAPRO_EVAL_SCORING_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eval/generate.h"

namespace llamapro {

struct ContinuationScore {
  double loglikelihood = 0;  // Sum of log p over the continuation's tokens.
  int64_t tokens = 0;        // Continuation tokens scored.
  bool greedy = false;       // Each was the argmax at its position.
};

// Log-softmax of `logits` at `target`, in double.
double LogProbability(std::span<const float> logits, int32_t target);

// Not thread-safe (keeps buffers). `model` must outlive it and have a tokenizer.
class ContinuationScorer {
 public:
  explicit ContinuationScorer(const InferenceModel& model) : model_(model) {}
  absl::StatusOr<ContinuationScore> Score(absl::string_view prompt, absl::string_view continuation);
  // The ids Score runs: the sequence and where the continuation starts.
  absl::Status Tokenize(absl::string_view prompt, absl::string_view continuation,
                        std::vector<int32_t>* ids, int64_t* continuation_start) const;

 private:
  const InferenceModel& model_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_SCORING_H_
