// Deterministic training samples from the token store.
//
// Pretraining corpora: a corpus's training documents, each as [BOS] tokens
// [EOS] (the ids of the store's tokenizer), are joined into one stream and
// cut into windows of seq_len + 1 tokens (inputs are the first seq_len,
// targets the last seq_len); the tail shorter than a window is not used.
// SFT corpora: one conversation per sample, fitted into seq_len + 1 tokens by
// TruncateConversation and padded (no packing: a sample never mixes two
// conversations, so no cross-sample attention masking is needed).
//
// A mixture is a list of (corpus, weight). Global sample i is assigned to a
// corpus by a seeded schedule that, in every block of B consecutive samples,
// gives each corpus its weight's share exactly (to +-1 sample); the k-th
// sample of a corpus is window perm_e(k mod W) of epoch e = k / W, with perm_e
// a seeded pseudo-random permutation of the W windows, computed on demand.
// Everything is a pure function of (seed, store contents, mixture, seq_len):
// any sample can be computed directly from its index, so data-parallel rank r
// of w reads samples start + r, start + r + w, ..., and a resumed job starts
// at the exact global index where it stopped. Held-out documents are never
// part of a training stream; HeldOutReader serves them for evaluation.
#ifndef LLAMAPRO_DATA_SAMPLER_H_
#define LLAMAPRO_DATA_SAMPLER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/store.h"

namespace llamapro {

struct MixtureComponent {
  std::string corpus;
  double weight = 1.0;
};
// "code:0.7,math:0.3"; a bare name has weight 1. Weights are normalised.
absl::StatusOr<std::vector<MixtureComponent>> ParseMixture(absl::string_view spec);

// Where a sample's tokens came from.
struct SampleSource {
  uint64_t document = 0;  // Document number in its corpus.
  uint64_t offset = 0;    // First position used within the document's stream segment.
  uint64_t length = 0;    // Positions used.
};

struct Sample {
  int64_t index = 0;               // Global sample index.
  int component = 0;               // Index into the mixture.
  int64_t window = 0;              // Window (or conversation ordinal) within the corpus split.
  int64_t epoch = 0;               // How many times the corpus was exhausted before this sample.
  std::vector<int32_t> tokens;     // seq_len + 1.
  std::vector<uint8_t> loss_mask;  // seq_len + 1; 1 where tokens[t] is a training target.
  std::vector<SampleSource> sources;
};

struct SamplerOptions {
  std::vector<MixtureComponent> mixture;
  int64_t seq_len = 2048;
  uint64_t seed = 0;
  int64_t rank = 0;        // This reader's data-parallel rank...
  int64_t world_size = 1;  // ...of this many.
  int64_t start = 0;       // Global index where reading starts (rank r reads start + r first).
};

// Not thread-safe (it caches the current schedule block); use one per thread.
// The store must outlive it.
class Sampler {
 public:
  static absl::StatusOr<std::unique_ptr<Sampler>> Create(const TokenStore* store,
                                                         const SamplerOptions& options);

  // The sample with global index `index` (any index >= 0, in any order).
  absl::StatusOr<Sample> Get(int64_t index);
  // This reader's next sample: start + rank, then every world_size-th.
  absl::StatusOr<Sample> Next();
  int64_t next_index() const { return next_; }

  const std::vector<CorpusInfo>& corpora() const { return corpora_; }
  // Training windows (or conversations) per epoch of each component.
  const std::vector<int64_t>& windows() const { return windows_; }
  // Samples per schedule block.
  int64_t block_size() const { return block_; }

 private:
  Sampler() = default;
  const std::vector<int>& BlockSlots(int64_t block);
  int64_t CumulativeCount(int component, int64_t blocks) const;

  const TokenStore* store_ = nullptr;
  SamplerOptions options_;
  StoreTokenizer tokenizer_;
  std::vector<CorpusInfo> corpora_;
  std::vector<double> weights_;  // Normalised.
  std::vector<int64_t> windows_;
  int64_t block_ = 0;
  int64_t next_ = 0;
  int64_t cached_block_ = -1;
  std::vector<int> slots_;  // Component of each slot of the cached block.
};

// Fixed, ordered windows of a corpus's held-out split (for perplexity): no
// shuffling, no mixing. Not thread-safe.
class HeldOutReader {
 public:
  static absl::StatusOr<std::unique_ptr<HeldOutReader>> Create(const TokenStore* store,
                                                               absl::string_view corpus,
                                                               int64_t seq_len);
  int64_t size() const { return windows_; }
  absl::StatusOr<Sample> Get(int64_t window);

 private:
  HeldOutReader() = default;
  const TokenStore* store_ = nullptr;
  StoreTokenizer tokenizer_;
  CorpusInfo corpus_;
  int64_t seq_len_ = 0;
  int64_t windows_ = 0;
};

// A pseudo-random permutation of [0, n) keyed by `key` (a Feistel network
// with cycle walking): Permute(i) for i in [0, n) hits every value once.
uint64_t PermuteIndex(uint64_t i, uint64_t n, uint64_t key);

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_SAMPLER_H_
