// Text generation with a key/value cache: greedy or sampled (temperature,
// top-p, seeded), max tokens, stop strings, end-of-sequence; the decoding
// loop of the `generate`, `code` and `shift` evaluations and of
// `llamaproctl generate`.
//
// IncrementalDecoder runs the same fp32 ops as LlamaForward (kernels/cpu) on
// only the new positions, attending to the keys and values it cached for the
// earlier ones; a forward over the whole sequence gives the same logits up
// to rounding, and the same greedy tokens (tests/unit/generate_test.cc).
#ifndef LLAMAPRO_EVAL_GENERATE_H_
#define LLAMAPRO_EVAL_GENERATE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/llama.h"

namespace llamapro {

// A checkpoint in memory (fp32) with its tokenizer, for inference.
struct InferenceModel {
  std::string dir;
  LlamaConfig config;
  LlamaWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // Null when the checkpoint has none.
};

// Loads `dir` (a checkpoint directory, or a run's output_dir: its latest
// checkpoint). With `need_tokenizer`, a missing tokenizer.model is an error
// naming the directory.
absl::StatusOr<InferenceModel> LoadInferenceModel(const std::string& dir, bool need_tokenizer);

// One sequence decoded position by position, caching every block's keys and
// values. Not thread-safe.
class IncrementalDecoder {
 public:
  // `weights` must outlive the decoder. `capacity` positions at most
  // (<= max_position_embeddings).
  IncrementalDecoder(const LlamaConfig& config, const LlamaWeights* weights, int64_t capacity);

  // Runs `tokens` at the next positions (a prompt at once, or one token) and
  // returns the logits [V] of the last of them, valid until the next call.
  // InvalidArgument for an id outside the vocabulary; OutOfRange past capacity.
  absl::StatusOr<std::span<const float>> Append(std::span<const int32_t> tokens);
  // Forgets positions from `length` on (to score several continuations of
  // one prefix).
  void Truncate(int64_t length);
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }

 private:
  void Run(int64_t n);  // The blocks over x_ [n, C] at positions length_..length_+n-1.

  LlamaConfig config_;
  const LlamaWeights* weights_;
  int64_t capacity_, length_ = 0;
  std::vector<float> cos_, sin_;                   // RoPE tables [capacity, D/2].
  std::vector<std::vector<float>> keys_, values_;  // Per layer [capacity, Hkv*D].
  std::vector<float> x_, xn_, q_, k_, v_, attn_, branch_, gate_, up_, scores_, logits_;
};

// Index of the largest logit (the lowest index among equal ones).
int32_t ArgMax(std::span<const float> logits);

struct SamplingOptions {
  int64_t max_tokens = 256;
  double temperature = 0;         // 0: greedy. Otherwise softmax(logits / temperature).
  double top_p = 1;               // Nucleus: sample among the most likely tokens summing to top_p.
  uint64_t seed = 0;              // Sampling is a pure function of the seed.
  std::vector<std::string> stop;  // Generation ends before the first of these strings.
  bool stop_at_eos = true;        // End at the tokenizer's EOS id.
  bool use_cache = true;          // false: recompute the whole sequence for each token (tests).
};

struct Generation {
  std::vector<int32_t> tokens;  // Generated ids (the stop string's tokens included).
  std::string text;             // Their text, cut before the stop string.
  std::string finish_reason;    // "eos", "stop", "length" (max_tokens or the context).
  int64_t prompt_tokens = 0;
  double seconds = 0;
};

// Generates after `prompt` (ids, BOS included if wanted). `tokenizer` may be
// null only without stop strings (then `text` stays empty). `on_text`, when
// set, receives the text as it is produced (never a stop string or a part of
// a character), in order; concatenated it equals Generation::text.
absl::StatusOr<Generation> Generate(const InferenceModel& model, std::span<const int32_t> prompt,
                                    const SamplingOptions& options,
                                    const std::function<void(absl::string_view)>& on_text = {});

// Validates options (max_tokens >= 1, temperature >= 0, 0 < top_p <= 1),
// naming the bad one.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_GENERATE_H_
