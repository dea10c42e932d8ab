#include "data/data_source.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

// The corpus sizes are part of the key: a corpus that grew (another ingest)
// gives a different sample order, so a cached sampler must not serve it.
std::string SamplerKey(const TokenStore& store, const SamplerOptions& options) {
  std::string key = absl::StrCat(options.seq_len, "/", options.seed);
  for (const MixtureComponent& c : options.mixture) {
    absl::StrAppend(&key, "/", c.corpus, ":", c.weight);
    absl::StatusOr<CorpusInfo> info = store.GetCorpus(c.corpus);
    if (info.ok()) absl::StrAppend(&key, "@", info->train_stream);
  }
  return key;
}

}  // namespace

absl::StatusOr<StoreTokenizer> StoreDataSource::Tokenizer() {
  LP_ASSIGN_OR_RETURN(std::optional<StoreTokenizer> tokenizer, store_->Tokenizer());
  if (!tokenizer) {
    return absl::FailedPreconditionError(
        absl::StrCat("token store ", store_->dir(), " holds no corpus yet"));
  }
  return *tokenizer;
}

absl::Status StoreDataSource::ReadSamples(const SamplerOptions& options, int64_t start,
                                          int64_t stride, int64_t count, std::vector<Sample>* out) {
  if (start < 0 || stride < 1 || count < 0) {
    return absl::InvalidArgumentError("start must be >= 0, stride >= 1, count >= 0");
  }
  const std::string key = SamplerKey(*store_, options);
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Sampler>& sampler = samplers_[key];
  if (sampler == nullptr) {
    SamplerOptions base = options;
    base.rank = 0;
    base.world_size = 1;
    base.start = 0;
    auto created = Sampler::Create(store_, base);
    if (!created.ok()) {
      samplers_.erase(key);
      return created.status();
    }
    sampler = std::move(*created);
  }
  out->clear();
  out->reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    LP_ASSIGN_OR_RETURN(Sample sample, sampler->Get(start + i * stride));
    out->push_back(std::move(sample));
  }
  return absl::OkStatus();
}

absl::StatusOr<HeldOutReader*> StoreDataSource::HeldOut(const std::string& corpus,
                                                        int64_t seq_len) {
  std::string key = absl::StrCat(corpus, "/", seq_len);
  absl::StatusOr<CorpusInfo> info = store_->GetCorpus(corpus);
  if (info.ok()) absl::StrAppend(&key, "@", info->held_out_stream);
  std::unique_ptr<HeldOutReader>& reader = held_out_[key];
  if (reader == nullptr) {
    auto created = HeldOutReader::Create(store_, corpus, seq_len);
    if (!created.ok()) {
      held_out_.erase(key);
      return created.status();
    }
    reader = std::move(*created);
  }
  return reader.get();
}

absl::StatusOr<int64_t> StoreDataSource::HeldOutWindows(const std::string& corpus,
                                                        int64_t seq_len) {
  std::lock_guard<std::mutex> lock(mutex_);
  LP_ASSIGN_OR_RETURN(HeldOutReader * reader, HeldOut(corpus, seq_len));
  return reader->size();
}

absl::Status StoreDataSource::ReadHeldOut(const std::string& corpus, int64_t seq_len, int64_t start,
                                          int64_t count, std::vector<Sample>* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  LP_ASSIGN_OR_RETURN(HeldOutReader * reader, HeldOut(corpus, seq_len));
  out->clear();
  for (int64_t i = 0; i < count; ++i) {
    LP_ASSIGN_OR_RETURN(Sample sample, reader->Get(start + i));
    out->push_back(std::move(sample));
  }
  return absl::OkStatus();
}

}  // namespace llamapro
