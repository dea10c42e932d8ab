#include "client/commands.h"

namespace llamapro::cli {

void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw CommandError(std::string(status.message()));
}

}  // namespace llamapro::cli
