#include "coordinator/paths.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace llamapro::coordinator {
namespace {

namespace fs = std::filesystem;

// `inner` equals `root` or lies below it (both absolute and normal).
bool IsWithin(const fs::path& inner, const fs::path& root) {
  auto r = root.begin();
  auto i = inner.begin();
  for (; r != root.end(); ++r, ++i) {
    if (r->empty()) continue;  // A trailing separator.
    if (i == inner.end() || *i != *r) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<PathPolicy> PathPolicy::Create(const std::string& data_dir,
                                              const std::vector<std::string>& roots) {
  PathPolicy policy;
  std::vector<std::string> all = {data_dir};
  all.insert(all.end(), roots.begin(), roots.end());
  for (const std::string& root : all) {
    std::error_code ec;
    fs::path canonical = fs::canonical(root, ec);
    if (ec || !fs::is_directory(canonical)) {
      return absl::InvalidArgumentError(
          absl::StrCat(root, ": not an existing directory (", ec ? ec.message() : "a file", ")"));
    }
    policy.roots_.push_back(canonical.string());
  }
  policy.data_dir_ = policy.roots_.front();
  return policy;
}

absl::StatusOr<std::string> PathPolicy::Resolve(absl::string_view field,
                                                absl::string_view path) const {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": contains a NUL byte"));
  }
  fs::path p(std::string(path.data(), path.size()));
  if (p.is_relative()) p = fs::path(data_dir_) / p;
  // weakly_canonical resolves the symlinks of the existing prefix and
  // normalises the rest lexically ("a/../.." cannot climb out).
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(p, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": cannot resolve ", path, ": ", ec.message()));
  }
  for (const std::string& root : roots_) {
    if (IsWithin(resolved, fs::path(root))) return resolved.string();
  }
  std::string where = roots_.size() == 1 ? absl::StrCat("the data dir ", data_dir_)
                                         : absl::StrCat("the data dir and allowed roots (",
                                                        absl::StrJoin(roots_, ", "), ")");
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", path, " is outside ", where));
}

}  // namespace llamapro::coordinator
