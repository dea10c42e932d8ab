// The token-distribution shift of the paper's appendix G: for each prompt,
// decode greedily with the tuned model and rank every chosen token under the
// base model given the same prefix (rank 1: the base model's own top
// choice). Positions are unshifted (rank 1), marginal (rank 2 or 3) or
// shifted (rank > 3). A model against itself is 100 % unshifted.
#ifndef LLAMAPRO_EVAL_SHIFT_H_
#define LLAMAPRO_EVAL_SHIFT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eval/generate.h"

namespace llamapro {

struct ShiftOptions {
  int64_t max_tokens = 64;  // Generated per prompt (fewer at EOS or the context's end).
  int64_t limit = 0;        // > 0: only the first `limit` prompts.
  const std::atomic<bool>* cancel = nullptr;  // Checked before each prompt.
};

struct ShiftResult {
  int64_t prompts = 0;
  int64_t positions = 0;
  int64_t unshifted = 0, marginal = 0, shifted = 0;
  double unshifted_fraction = 0, marginal_fraction = 0, shifted_fraction = 0;
  std::vector<std::vector<int64_t>> ranks;  // Per prompt, per generated token.
};

// Prompts from a JSON-lines file with a "prompt" string per line.
absl::StatusOr<std::vector<std::string>> ReadPrompts(const std::string& path);

// `tuned` needs a tokenizer; `base` must have the same vocabulary size.
absl::StatusOr<ShiftResult> TokenShift(const InferenceModel& tuned, const InferenceModel& base,
                                       const std::vector<std::string>& prompts,
                                       const ShiftOptions& options,
                                       const std::function<void(int64_t, int64_t)>& progress = {});

// BOS (when the tokenizer adds one) + the prompt's ids.
absl::StatusOr<std::vector<int32_t>> PromptIds(const Tokenizer& tokenizer,
                                               absl::string_view prompt);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_SHIFT_H_
