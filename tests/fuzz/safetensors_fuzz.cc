// libFuzzer target: the safetensors header parser on arbitrary bytes. Besides
// not crashing, an accepted header must satisfy the invariants the rest of the
// code relies on (checked with LP_CHECK, so a violation aborts the fuzzer).
#include <cstddef>
#include <cstdint>

#include "base/check.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto header = llamapro::ParseSafetensorsHeader(bytes, size, "fuzz.safetensors");
  if (!header.ok()) {
    LP_CHECK(!header.status().message().empty());
    return 0;
  }
  LP_CHECK(header->data_start == 8 + header->header_bytes);
  LP_CHECK(header->data_start <= size);
  uint64_t cursor = 0;
  for (const llamapro::TensorInfo& t : header->tensors) {
    LP_CHECK(t.begin == cursor, "contiguous data");
    LP_CHECK(t.end >= t.begin);
    LP_CHECK(t.NumBytes() == static_cast<uint64_t>(t.NumElements()) * llamapro::DTypeSize(t.dtype));
    cursor = t.end;
  }
  LP_CHECK(header->data_start + cursor == size, "data ends at the end of the file");
  return 0;
}
