// Where a training or evaluation run gets its data: the token store itself
// (llamaproctl train, embedded) or the coordinator's DataService (a worker;
// implemented in worker/, since the engine knows nothing of gRPC). Either
// way the samples are those of data/sampler.h: the same indices give the
// same tokens.
#ifndef LLAMAPRO_DATA_DATA_SOURCE_H_
#define LLAMAPRO_DATA_DATA_SOURCE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/sampler.h"
#include "data/store.h"

namespace llamapro {

// Thread-safe.
class DataSource {
 public:
  virtual ~DataSource() = default;
  // The tokenizer the store is bound to.
  virtual absl::StatusOr<StoreTokenizer> Tokenizer() = 0;
  // Training samples start, start + stride, ... (count of them) of the
  // mixture, seq_len and seed in `options` (its rank/world/start ignored).
  virtual absl::Status ReadSamples(const SamplerOptions& options, int64_t start, int64_t stride,
                                   int64_t count, std::vector<Sample>* out) = 0;
  // Held-out windows of a corpus (fixed order).
  virtual absl::StatusOr<int64_t> HeldOutWindows(const std::string& corpus, int64_t seq_len) = 0;
  virtual absl::Status ReadHeldOut(const std::string& corpus, int64_t seq_len, int64_t start,
                                   int64_t count, std::vector<Sample>* out) = 0;
};

// A DataSource over a TokenStore in this process. Samplers are cached per
// (mixture, seq_len, seed); calls are serialised (a Sampler is not
// thread-safe). `store` must outlive it.
class StoreDataSource : public DataSource {
 public:
  explicit StoreDataSource(const TokenStore* store) : store_(store) {}
  absl::StatusOr<StoreTokenizer> Tokenizer() override;
  absl::Status ReadSamples(const SamplerOptions& options, int64_t start, int64_t stride,
                           int64_t count, std::vector<Sample>* out) override;
  absl::StatusOr<int64_t> HeldOutWindows(const std::string& corpus, int64_t seq_len) override;
  absl::Status ReadHeldOut(const std::string& corpus, int64_t seq_len, int64_t start, int64_t count,
                           std::vector<Sample>* out) override;

 private:
  absl::StatusOr<HeldOutReader*> HeldOut(const std::string& corpus, int64_t seq_len);
  const TokenStore* store_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Sampler>> samplers_;
  std::map<std::string, std::unique_ptr<HeldOutReader>> held_out_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_DATA_SOURCE_H_
