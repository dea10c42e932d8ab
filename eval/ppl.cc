#include "eval/ppl.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "data/sampler.h"
#include "model/llama_train.h"

namespace llamapro {

absl::StatusOr<PerplexityResult> HeldOutPerplexity(LlamaParams* params, DataSource& data,
                                                   const std::string& corpus,
                                                   const PerplexityOptions& options) {
  if (options.seq_len < 1 || options.batch < 1 || options.max_windows < 0) {
    return absl::InvalidArgumentError("seq_len and batch must be positive, max_windows >= 0");
  }
  LP_ASSIGN_OR_RETURN(StoreTokenizer tokenizer, data.Tokenizer());
  if (tokenizer.vocab_size > params->config.vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("the store's tokenizer has ", tokenizer.vocab_size, " ids but the model only ",
                     params->config.vocab_size));
  }
  LP_ASSIGN_OR_RETURN(int64_t windows, data.HeldOutWindows(corpus, options.seq_len));
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  if (windows == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("corpus '", corpus, "' has no held-out window of ", options.seq_len + 1,
                     " tokens (ingest more text, raise --held-out, or lower the sequence length)"));
  }
  PerplexityResult result;
  result.corpus = corpus;
  result.windows = windows;
  const int64_t width = options.seq_len + 1;
  const int64_t batch = options.batch_evaluator ? options.batch : std::min(options.batch, windows);
  std::unique_ptr<ParallelTrainingPass> pass;
  if (!options.batch_evaluator) {
    pass = std::make_unique<ParallelTrainingPass>(params, batch, options.seq_len, options.threads,
                                                  /*for_training=*/false, options.tp);
  }
  std::vector<int32_t> tokens(batch * width);
  std::vector<uint8_t> mask(batch * width);
  std::vector<Sample> samples;
  double loss = 0;
  for (int64_t first = 0; first < windows; first += batch) {
    const int64_t count = std::min(batch, windows - first);
    LP_RETURN_IF_ERROR(data.ReadHeldOut(corpus, options.seq_len, first, count, &samples));
    for (int64_t b = 0; b < batch; ++b) {
      if (b < count) {
        const Sample& sample = samples[b];
        std::copy(sample.tokens.begin(), sample.tokens.end(), tokens.begin() + b * width);
        std::copy(sample.loss_mask.begin(), sample.loss_mask.end(), mask.begin() + b * width);
      } else {
        // Padding rows of a short last batch count nothing.
        std::fill(tokens.begin() + b * width, tokens.begin() + (b + 1) * width, 0);
        std::fill(mask.begin() + b * width, mask.begin() + (b + 1) * width, 0);
      }
    }
    LP_ASSIGN_OR_RETURN(
        LossSum sum, pass ? pass->Evaluate(tokens, mask) : options.batch_evaluator(tokens, mask));
    loss += sum.loss;
    result.targets += sum.targets;
  }
  if (result.targets == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("corpus '", corpus, "': no held-out tokens to predict"));
  }
  result.nll = loss / static_cast<double>(result.targets);
  result.perplexity = std::exp(result.nll);
  return result;
}

absl::StatusOr<PerplexityResult> FilePerplexity(LlamaParams* params, const Tokenizer& tokenizer,
                                                const std::string& path, const InputOptions& input,
                                                const PerplexityOptions& options) {
  if (options.seq_len < 1 || options.batch < 1 || options.max_windows < 0) {
    return absl::InvalidArgumentError("seq_len and batch must be positive, max_windows >= 0");
  }
  if (tokenizer.info().vocab_size > params->config.vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("the tokenizer has ", tokenizer.info().vocab_size, " ids but the model only ",
                     params->config.vocab_size));
  }
  LP_ASSIGN_OR_RETURN(std::unique_ptr<InputReader> reader, InputReader::Open(path, input));
  std::vector<int32_t> stream, ids;
  InputRecord record;
  const int64_t width = options.seq_len + 1;
  const int64_t wanted = options.max_windows > 0 ? options.max_windows * width : -1;
  for (;;) {
    LP_ASSIGN_OR_RETURN(bool more, reader->Next(&record));
    if (!more) break;
    if (!record.error.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", record.number, ": ", record.error));
    }
    if (record.empty) continue;
    LP_RETURN_IF_ERROR(tokenizer.EncodeDocument(record.text, &ids));
    stream.insert(stream.end(), ids.begin(), ids.end());
    if (wanted > 0 && static_cast<int64_t>(stream.size()) >= wanted) break;
  }
  if (wanted > 0 && static_cast<int64_t>(stream.size()) > wanted) stream.resize(wanted);
  if (stream.size() < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": fewer than 2 tokens, nothing to score"));
  }
  PerplexityResult result;
  result.corpus = path;
  const auto total = static_cast<int64_t>(stream.size());
  // Full windows share one pass; the tail (if any) gets its own.
  const int64_t full = total / width;
  const int64_t batch = std::max<int64_t>(1, std::min(options.batch, full));
  double loss = 0;
  if (full > 0) {
    ParallelTrainingPass pass(params, batch, options.seq_len, options.threads,
                              /*for_training=*/false);
    std::vector<int32_t> tokens(batch * width);
    std::vector<uint8_t> mask(batch * width);
    for (int64_t first = 0; first < full; first += batch) {
      const int64_t count = std::min(batch, full - first);
      std::fill(mask.begin(), mask.end(), 0);
      std::fill(tokens.begin(), tokens.end(), 0);
      std::copy(stream.begin() + first * width, stream.begin() + (first + count) * width,
                tokens.begin());
      std::fill(mask.begin(), mask.begin() + count * width, 1);
      LP_ASSIGN_OR_RETURN(LossSum sum, pass.Evaluate(tokens, mask));
      loss += sum.loss;
      result.targets += sum.targets;
    }
    result.windows = full;
  }
  const int64_t tail = total - full * width;
  if (tail >= 2) {
    ParallelTrainingPass pass(params, 1, tail - 1, 1, /*for_training=*/false);
    LP_ASSIGN_OR_RETURN(LossSum sum,
                        pass.Evaluate(std::span<const int32_t>(stream).subspan(full * width), {}));
    loss += sum.loss;
    result.targets += sum.targets;
    ++result.windows;
  }
  result.nll = loss / static_cast<double>(result.targets);
  result.perplexity = std::exp(result.nll);
  return result;
}

}  // namespace llamapro
