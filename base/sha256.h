// SHA-256 (FIPS 180-4), used for content fingerprints (tokenizer models,
// ingested source files). Our own implementation: no OpenSSL dependency.
#ifndef LLAMAPRO_BASE_SHA256_H_
#define LLAMAPRO_BASE_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

// Streaming hasher: Update() any number of times, then Finish() once.
// Thread-compatible (one object per thread); cheap to copy.
class Sha256 {
 public:
  static constexpr size_t kDigestBytes = 32;
  using Digest = std::array<uint8_t, kDigestBytes>;

  Sha256();
  void Update(const void* data, size_t n);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // Returns the digest. The object must not be used afterwards (LP_CHECK).
  Digest Finish();

 private:
  void Compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

// Lower-case hex of a digest (64 characters).
std::string DigestHex(const Sha256::Digest& digest);

// SHA-256 of `data`, lower-case hex.
std::string Sha256Hex(absl::string_view data);

// SHA-256 of the file at `path`, lower-case hex, read in 1 MiB chunks (memory
// stays flat whatever the size). Errors name the path.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace llamapro

#endif  // LLAMAPRO_BASE_SHA256_H_
