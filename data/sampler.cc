#include "data/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "data/sft.h"

namespace llamapro {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Mix(uint64_t a, uint64_t b) { return SplitMix64(a ^ SplitMix64(b)); }

int32_t PadId(const StoreTokenizer& t) {
  if (t.pad_id >= 0) return t.pad_id;
  if (t.eos_id >= 0) return t.eos_id;
  return 0;
}

// Fills `out` with `length` positions of `split`'s stream from `begin`.
absl::Status ReadStream(const TokenStore& store, const StoreTokenizer& tokenizer,
                        const CorpusInfo& corpus, Split split, uint64_t begin, uint64_t length,
                        Sample* out) {
  out->tokens.clear();
  out->sources.clear();
  out->tokens.reserve(length);
  LP_ASSIGN_OR_RETURN(TokenStore::Located at, store.Locate(corpus.id, split, begin));
  uint64_t position = begin;
  while (true) {
    LP_ASSIGN_OR_RETURN(Document doc, store.ReadDocument(corpus.id, at.number));
    const uint64_t segment = store.StreamLength(corpus.kind, doc.tokens.size());
    const uint64_t offset = position - at.start;
    if (offset >= segment) {
      return absl::DataLossError(absl::StrCat("token store: offsets of corpus '", corpus.name,
                                              "' disagree with document ", at.number));
    }
    const uint64_t take = std::min(segment - offset, length - out->tokens.size());
    const bool bos = tokenizer.bos_id >= 0;
    for (uint64_t s = offset; s < offset + take; ++s) {
      if (bos && s == 0) {
        out->tokens.push_back(tokenizer.bos_id);
      } else if (s - (bos ? 1 : 0) < doc.tokens.size()) {
        out->tokens.push_back(doc.tokens[s - (bos ? 1 : 0)]);
      } else {
        out->tokens.push_back(tokenizer.eos_id);
      }
    }
    out->sources.push_back({at.number, offset, take});
    position += take;
    if (out->tokens.size() == length) return absl::OkStatus();
    auto next = store.NextInSplit(corpus.id, split, at.start);
    if (!next.ok()) {
      return absl::DataLossError(absl::StrCat("token store: the stream of corpus '", corpus.name,
                                              "' ends before position ", begin + length));
    }
    at = *next;
  }
}

// One conversation (SFT), fitted into seq_len + 1 tokens and padded.
absl::Status ReadConversation(const TokenStore& store, const StoreTokenizer& tokenizer,
                              const CorpusInfo& corpus, Split split, uint64_t ordinal,
                              int64_t seq_len, Sample* out) {
  LP_ASSIGN_OR_RETURN(TokenStore::Located at, store.Locate(corpus.id, split, ordinal));
  LP_ASSIGN_OR_RETURN(Document doc, store.ReadDocument(corpus.id, at.number));
  const auto length = static_cast<size_t>(seq_len + 1);
  RenderedConversation rendered{std::move(doc.tokens), std::move(doc.loss_mask)};
  if (rendered.loss_mask.size() != rendered.tokens.size()) {
    return absl::DataLossError(absl::StrCat("token store: conversation ", at.number, " of corpus '",
                                            corpus.name, "' has no loss mask"));
  }
  std::optional<RenderedConversation> fitted = TruncateConversation(rendered, seq_len + 1);
  if (fitted) {
    out->tokens = std::move(fitted->tokens);
    out->loss_mask = std::move(fitted->loss_mask);
  } else {
    // Even the first prompt does not fit: the sample carries no loss.
    rendered.tokens.resize(std::min(rendered.tokens.size(), length));
    out->tokens = std::move(rendered.tokens);
    out->loss_mask.assign(out->tokens.size(), 0);
  }
  out->sources = {{at.number, 0, out->tokens.size()}};
  out->tokens.resize(length, PadId(tokenizer));
  out->loss_mask.resize(length, 0);
  return absl::OkStatus();
}

int64_t Windows(const CorpusInfo& corpus, Split split, int64_t seq_len) {
  const uint64_t stream = split == Split::kTrain ? corpus.train_stream : corpus.held_out_stream;
  if (corpus.kind == CorpusKind::kSft) return static_cast<int64_t>(stream);
  return static_cast<int64_t>(stream / static_cast<uint64_t>(seq_len + 1));
}

absl::Status ReadWindow(const TokenStore& store, const StoreTokenizer& tokenizer,
                        const CorpusInfo& corpus, Split split, int64_t window, int64_t seq_len,
                        Sample* out) {
  if (corpus.kind == CorpusKind::kSft) {
    return ReadConversation(store, tokenizer, corpus, split, static_cast<uint64_t>(window), seq_len,
                            out);
  }
  const auto length = static_cast<uint64_t>(seq_len + 1);
  LP_RETURN_IF_ERROR(ReadStream(store, tokenizer, corpus, split,
                                static_cast<uint64_t>(window) * length, length, out));
  out->loss_mask.assign(length, 1);
  return absl::OkStatus();
}

absl::StatusOr<StoreTokenizer> BoundTokenizer(const TokenStore& store) {
  LP_ASSIGN_OR_RETURN(std::optional<StoreTokenizer> tokenizer, store.Tokenizer());
  if (!tokenizer) {
    return absl::FailedPreconditionError(
        absl::StrCat("token store ", store.dir(), " is empty (ingest a corpus first)"));
  }
  return *tokenizer;
}

}  // namespace

uint64_t PermuteIndex(uint64_t i, uint64_t n, uint64_t key) {
  if (n <= 1) return 0;
  int bits = 0;
  while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
  if (bits % 2 != 0) ++bits;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t x = i;
  do {  // Cycle walking: the domain is at most 4n, so a few rounds on average.
    uint64_t left = x >> half;
    uint64_t right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = Mix(right, key + round) & mask;
      const uint64_t new_right = left ^ f;
      left = right;
      right = new_right;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

absl::StatusOr<std::vector<MixtureComponent>> ParseMixture(absl::string_view spec) {
  std::vector<MixtureComponent> mixture;
  for (absl::string_view part : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    MixtureComponent component;
    const size_t colon = part.rfind(':');
    if (colon == absl::string_view::npos) {
      component.corpus = std::string(part);
    } else {
      component.corpus = std::string(absl::StripAsciiWhitespace(part.substr(0, colon)));
      if (!absl::SimpleAtod(part.substr(colon + 1), &component.weight) || !(component.weight > 0) ||
          !std::isfinite(component.weight)) {
        return absl::InvalidArgumentError(
            absl::StrCat("mixture entry '", part, "': the weight must be a positive number"));
      }
    }
    if (component.corpus.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("mixture entry '", part, "' has no corpus"));
    }
    for (const MixtureComponent& other : mixture) {
      if (other.corpus == component.corpus) {
        return absl::InvalidArgumentError(
            absl::StrCat("corpus '", component.corpus, "' appears twice in the mixture"));
      }
    }
    mixture.push_back(std::move(component));
  }
  if (mixture.empty()) {
    return absl::InvalidArgumentError(
        "empty mixture: give corpus[:weight],... e.g. code:0.7,web:0.3");
  }
  return mixture;
}

absl::StatusOr<std::unique_ptr<Sampler>> Sampler::Create(const TokenStore* store,
                                                         const SamplerOptions& options) {
  if (options.seq_len < 1) return absl::InvalidArgumentError("seq_len must be positive");
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " of world size ", options.world_size, " is invalid"));
  }
  if (options.start < 0) return absl::InvalidArgumentError("start must be >= 0");
  if (options.mixture.empty()) return absl::InvalidArgumentError("the mixture is empty");
  auto sampler = std::unique_ptr<Sampler>(new Sampler());
  sampler->store_ = store;
  sampler->options_ = options;
  LP_ASSIGN_OR_RETURN(sampler->tokenizer_, BoundTokenizer(*store));
  double total = 0;
  for (const MixtureComponent& c : options.mixture) {
    if (!(c.weight > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("corpus '", c.corpus, "' has weight ",
                                                     c.weight, "; weights must be positive"));
    }
    total += c.weight;
  }
  double smallest = 1;
  for (const MixtureComponent& c : options.mixture) {
    LP_ASSIGN_OR_RETURN(CorpusInfo corpus, store->GetCorpus(c.corpus));
    const int64_t windows = Windows(corpus, Split::kTrain, options.seq_len);
    if (windows == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("corpus '", c.corpus, "' has ", corpus.train_stream,
                       corpus.kind == CorpusKind::kSft ? " training conversations"
                                                       : " positions in its training stream",
                       ", not enough for one sample of ", options.seq_len + 1, " tokens"));
    }
    sampler->corpora_.push_back(std::move(corpus));
    sampler->windows_.push_back(windows);
    sampler->weights_.push_back(c.weight / total);
    smallest = std::min(smallest, c.weight / total);
  }
  // Every corpus gets at least one slot per block, so per-block counts are
  // never negative (see CumulativeCount).
  sampler->block_ = std::max<int64_t>(1024, static_cast<int64_t>(std::ceil(2.0 / smallest)));
  sampler->next_ = options.start + options.rank;
  return sampler;
}

// Samples of `component` among the first blocks * B: each corpus gets the
// floor of its share, and the samples left over go to the largest remainders
// (ties to the earlier component). Within [C(b), C(b+1)) the count is >= 0
// because every share of a block is >= 1 sample.
int64_t Sampler::CumulativeCount(int component, int64_t blocks) const {
  const int64_t n = blocks * block_;
  const size_t k = weights_.size();
  std::vector<double> fraction(k);
  int64_t assigned = 0;
  int64_t mine = 0;
  for (size_t c = 0; c < k; ++c) {
    const double share = weights_[c] * static_cast<double>(n);
    const auto whole = static_cast<int64_t>(std::floor(share));
    fraction[c] = share - static_cast<double>(whole);
    assigned += whole;
    if (static_cast<int>(c) == component) mine = whole;
  }
  const int64_t left = n - assigned;
  // Rank of `component` by remainder (descending, ties by index).
  int64_t better = 0;
  for (size_t c = 0; c < k; ++c) {
    if (fraction[c] > fraction[component] ||
        (fraction[c] == fraction[component] && static_cast<int>(c) < component)) {
      ++better;
    }
  }
  return mine + (better < left ? 1 : 0);
}

const std::vector<int>& Sampler::BlockSlots(int64_t block) {
  if (block == cached_block_) return slots_;
  slots_.clear();
  for (size_t c = 0; c < weights_.size(); ++c) {
    const int64_t count = CumulativeCount(static_cast<int>(c), block + 1) -
                          CumulativeCount(static_cast<int>(c), block);
    slots_.insert(slots_.end(), static_cast<size_t>(count), static_cast<int>(c));
  }
  // Seeded Fisher-Yates shuffle of the block's slots.
  uint64_t state = Mix(options_.seed, static_cast<uint64_t>(block) ^ 0x5eedb10cull);
  for (size_t i = slots_.size(); i > 1; --i) {
    state = SplitMix64(state);
    std::swap(slots_[i - 1], slots_[state % i]);
  }
  cached_block_ = block;
  return slots_;
}

absl::StatusOr<Sample> Sampler::Get(int64_t index) {
  if (index < 0) return absl::InvalidArgumentError("sample index must be >= 0");
  const int64_t block = index / block_;
  const int64_t slot = index % block_;
  const std::vector<int>& slots = BlockSlots(block);
  const int component = slots[slot];
  int64_t k = CumulativeCount(component, block);
  for (int64_t s = 0; s < slot; ++s) k += slots[s] == component ? 1 : 0;

  const CorpusInfo& corpus = corpora_[component];
  const int64_t windows = windows_[component];
  Sample sample;
  sample.index = index;
  sample.component = component;
  sample.epoch = k / windows;
  const uint64_t key = Mix(Mix(options_.seed, corpus.id), static_cast<uint64_t>(sample.epoch));
  sample.window = static_cast<int64_t>(
      PermuteIndex(static_cast<uint64_t>(k % windows), static_cast<uint64_t>(windows), key));
  LP_RETURN_IF_ERROR(ReadWindow(*store_, tokenizer_, corpus, Split::kTrain, sample.window,
                                options_.seq_len, &sample));
  return sample;
}

absl::StatusOr<Sample> Sampler::Next() {
  LP_ASSIGN_OR_RETURN(Sample sample, Get(next_));
  next_ += options_.world_size;
  return sample;
}

absl::StatusOr<std::unique_ptr<HeldOutReader>> HeldOutReader::Create(const TokenStore* store,
                                                                     absl::string_view corpus,
                                                                     int64_t seq_len) {
  if (seq_len < 1) return absl::InvalidArgumentError("seq_len must be positive");
  auto reader = std::unique_ptr<HeldOutReader>(new HeldOutReader());
  reader->store_ = store;
  reader->seq_len_ = seq_len;
  LP_ASSIGN_OR_RETURN(reader->tokenizer_, BoundTokenizer(*store));
  LP_ASSIGN_OR_RETURN(reader->corpus_, store->GetCorpus(corpus));
  reader->windows_ = Windows(reader->corpus_, Split::kHeldOut, seq_len);
  return reader;
}

absl::StatusOr<Sample> HeldOutReader::Get(int64_t window) {
  if (window < 0 || window >= windows_) {
    return absl::OutOfRangeError(absl::StrCat("held-out window ", window, " of corpus '",
                                              corpus_.name, "' is outside [0, ", windows_, ")"));
  }
  Sample sample;
  sample.index = window;
  sample.window = window;
  LP_RETURN_IF_ERROR(
      ReadWindow(*store_, tokenizer_, corpus_, Split::kHeldOut, window, seq_len_, &sample));
  return sample;
}

}  // namespace llamapro
