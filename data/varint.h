// LEB128 varints: the compact encoding of token ids in the token store.
#ifndef LLAMAPRO_DATA_VARINT_H_
#define LLAMAPRO_DATA_VARINT_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace llamapro {

inline void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Reads one varint from the front of `*in`, advancing it. False on a
// truncated or over-long (more than 10 bytes) encoding.
inline bool ReadVarint(absl::string_view* in, uint64_t* value) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return true;
    }
  }
  return false;
}

// Fixed-width big-endian integers: keys sort numerically.
inline void AppendBigEndian(uint64_t value, int bytes, std::string* out) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

inline uint64_t ReadBigEndian(absl::string_view in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value = (value << 8) | static_cast<uint8_t>(in[i]);
  return value;
}

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_VARINT_H_
