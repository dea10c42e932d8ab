// Perplexity on the held-out split of token-store corpora: the forgetting
// monitor (general-corpus perplexity must hold while the domain one falls).
#ifndef LLAMAPRO_EVAL_PPL_H_
#define LLAMAPRO_EVAL_PPL_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "data/data_source.h"
#include "data/readers.h"
#include "data/tokenizer.h"
#include "model/llama_params.h"
#include "model/llama_train.h"

namespace llamapro {

struct PerplexityResult {
  std::string corpus;
  int64_t windows = 0;  // Held-out windows evaluated.
  int64_t targets = 0;  // Tokens predicted.
  double nll = 0;       // Mean negative log-likelihood, nats per token.
  double perplexity = 0;
};

struct PerplexityOptions {
  int64_t seq_len = 2048;
  int64_t max_windows = 0;  // 0: every held-out window.
  int64_t batch = 4;        // Windows per forward pass.
  int threads = 0;          // 0: all cores.
  // Tensor parallelism: every rank of the group calls with its slices of the
  // model (model/llama_train.h); each gets the same result.
  TensorParallel tp;
  // Scores batches somewhere else (the CUDA backend's pass): called with
  // exactly `batch` windows per call (a short last batch is padded with
  // rows that count nothing) instead of running a CPU pass over `params`.
  std::function<absl::StatusOr<LossSum>(std::span<const int32_t> tokens,
                                        std::span<const uint8_t> mask)>
      batch_evaluator;
};

// Runs the model (fp32, forward only) over the first windows of `corpus`'s
// held-out split (fixed order, so values are comparable across checkpoints).
// Gradients and trainable flags of `params` are untouched.
// FailedPrecondition when the corpus has no held-out window of seq_len + 1.
absl::StatusOr<PerplexityResult> HeldOutPerplexity(LlamaParams* params, DataSource& data,
                                                   const std::string& corpus,
                                                   const PerplexityOptions& options);

// Perplexity on the documents of a text or JSON-lines file (optionally .gz or
// .zst; InputOptions as for ingestion), tokenized with `tokenizer` (each
// document with BOS/EOS as the tokenizer's document convention), joined into
// one stream and cut into consecutive windows of seq_len + 1 tokens; a
// shorter tail is scored as a last, shorter window. FailedPrecondition for a
// file without two tokens to score.
absl::StatusOr<PerplexityResult> FilePerplexity(LlamaParams* params, const Tokenizer& tokenizer,
                                                const std::string& path, const InputOptions& input,
                                                const PerplexityOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_PPL_H_
