// Human-readable sizes and durations, and parsing of size flags.
#ifndef LLAMAPRO_BASE_UNITS_H_
#define LLAMAPRO_BASE_UNITS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

// "13.48 GB", "512.0 MB", "17 B" (decimal units, as Hugging Face uses).
std::string FormatBytes(uint64_t bytes);
// "7.24B", "110.3M", "4.1K", "12".
std::string FormatCount(uint64_t count);

// Parses "5GB", "500MB", "2GiB", "1048576", "1.5GB" (case-insensitive; KB/MB/GB/TB
// are powers of 1000, KiB/MiB/GiB/TiB powers of 1024).
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

}  // namespace llamapro

#endif  // LLAMAPRO_BASE_UNITS_H_
