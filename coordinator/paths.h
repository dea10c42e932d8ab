// Confinement of the paths in job specs: a job may only read and write under
// the coordinator's data dir or the extra roots it was started with, so a
// client cannot make workers read /etc or overwrite another tenant's files.
#ifndef LLAMAPRO_COORDINATOR_PATHS_H_
#define LLAMAPRO_COORDINATOR_PATHS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro::coordinator {

// Thread-safe (immutable after construction).
class PathPolicy {
 public:
  // `data_dir` and `roots` must exist; they are canonicalised (symlinks
  // resolved) once here.
  static absl::StatusOr<PathPolicy> Create(const std::string& data_dir,
                                           const std::vector<std::string>& roots);

  // Resolves `path` (relative paths against the data dir), normalises it and
  // resolves the symlinks of whatever part of it exists, and returns the
  // absolute result if it lies inside the data dir or a root. Otherwise, or
  // for an empty path, InvalidArgument naming `field`, e.g.
  //   spec.expand.model: /etc/passwd is outside the data dir /srv/llamapro
  absl::StatusOr<std::string> Resolve(absl::string_view field, absl::string_view path) const;

  const std::string& data_dir() const { return data_dir_; }

 private:
  std::string data_dir_;
  std::vector<std::string> roots_;  // data_dir_ first.
};

}  // namespace llamapro::coordinator

#endif  // LLAMAPRO_COORDINATOR_PATHS_H_
