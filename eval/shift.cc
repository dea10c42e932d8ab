#include "eval/shift.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "eval/jsonl.h"

namespace llamapro {

absl::StatusOr<std::vector<std::string>> ReadPrompts(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::vector<JsonLine> lines, ReadJsonLines(path));
  std::vector<std::string> prompts;
  for (const JsonLine& line : lines) {
    LP_ASSIGN_OR_RETURN(std::string prompt, StringField(path, line, "prompt"));
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const Tokenizer& tokenizer,
                                               absl::string_view prompt) {
  std::vector<int32_t> ids;
  LP_RETURN_IF_ERROR(tokenizer.Encode(prompt, &ids));
  const TokenizerInfo& info = tokenizer.info();
  if (info.add_bos && info.bos_id >= 0) ids.insert(ids.begin(), info.bos_id);
  if (ids.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  return ids;
}

absl::StatusOr<ShiftResult> TokenShift(const InferenceModel& tuned, const InferenceModel& base,
                                       const std::vector<std::string>& prompts,
                                       const ShiftOptions& options,
                                       const std::function<void(int64_t, int64_t)>& progress) {
  if (tuned.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(tuned.dir, " has no tokenizer.model: the shift analysis needs one"));
  }
  if (tuned.config.vocab_size != base.config.vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("the tuned model has ", tuned.config.vocab_size, " ids and the base model ",
                     base.config.vocab_size, ": the shift analysis compares the same vocabulary"));
  }
  ShiftResult result;
  int64_t n = static_cast<int64_t>(prompts.size());
  if (options.limit > 0) n = std::min(n, options.limit);
  SamplingOptions sampling{.max_tokens = options.max_tokens};
  const int64_t usable = tuned.tokenizer->info().vocab_size;
  for (int64_t i = 0; i < n; ++i) {
    if (options.cancel != nullptr && options.cancel->load()) {
      return absl::CancelledError(absl::StrCat("cancelled after ", i, " of ", n, " prompts"));
    }
    LP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptIds(*tuned.tokenizer, prompts[i]));
    LP_ASSIGN_OR_RETURN(Generation generation, Generate(tuned, ids, sampling));
    IncrementalDecoder decoder(base.config, &base.weights,
                               static_cast<int64_t>(ids.size() + generation.tokens.size()));
    LP_ASSIGN_OR_RETURN(std::span<const float> logits, decoder.Append(ids));
    std::vector<int64_t> ranks;
    for (size_t t = 0; t < generation.tokens.size(); ++t) {
      const int32_t token = generation.tokens[t];
      const float chosen = logits[token];
      int64_t rank = 1;  // Among the ids the tokenizer has, as generation chooses.
      for (int64_t j = 0; j < usable; ++j) rank += logits[j] > chosen ? 1 : 0;
      ranks.push_back(rank);
      if (rank == 1) {
        ++result.unshifted;
      } else if (rank <= 3) {
        ++result.marginal;
      } else {
        ++result.shifted;
      }
      if (t + 1 < generation.tokens.size()) {
        LP_ASSIGN_OR_RETURN(logits, decoder.Append(std::span<const int32_t>(&token, 1)));
      }
    }
    result.positions += static_cast<int64_t>(ranks.size());
    result.ranks.push_back(std::move(ranks));
    ++result.prompts;
    if (progress) progress(i + 1, n);
  }
  if (result.positions > 0) {
    const auto total = static_cast<double>(result.positions);
    result.unshifted_fraction = static_cast<double>(result.unshifted) / total;
    result.marginal_fraction = static_cast<double>(result.marginal) / total;
    result.shifted_fraction = static_cast<double>(result.shifted) / total;
  }
  return result;
}

}  // namespace llamapro
