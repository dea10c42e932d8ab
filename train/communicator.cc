// The file-backed RendezvousStore (train/communicator.h).
#include "train/communicator.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

// Keys are arbitrary bytes ("job/7/attempt/0/rank_1", "../x"): hex-encoding
// them gives names of [0-9a-f] only, so no key can name a path outside the
// directory, collide with another key, or with WriteFileAtomic's hidden
// temporary files (".<name>.tmp-..."). Names stay under the usual 255-byte
// limit: longer keys are named by their SHA-256 instead (a different first
// letter keeps the two kinds apart).
constexpr size_t kMaxHexKeyBytes = 120;

std::string FileNameForKey(absl::string_view key) {
  if (key.size() <= kMaxHexKeyBytes) return absl::StrCat("k", absl::BytesToHexString(key));
  return absl::StrCat("h", Sha256Hex(key));
}

class FileRendezvousStore : public RendezvousStore {
 public:
  explicit FileRendezvousStore(std::string dir) : dir_(std::move(dir)) {}

  absl::Status Set(absl::string_view key, absl::string_view value) override {
    // Created on first use: the ranks race to create it, and MakeDirs accepts
    // a directory that already exists.
    LP_RETURN_IF_ERROR(MakeDirs(dir_));
    absl::Status status = WriteFileAtomic(PathForKey(key), value);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("rendezvous store: cannot set key \"", key,
                                                      "\": ", status.message()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                std::chrono::milliseconds timeout) override {
    const Clock::time_point deadline = Clock::now() + timeout;
    std::vector<std::string> values(keys.size());
    std::vector<bool> found(keys.size(), false);
    // Back-off between scans of the directory: quick at first (ranks usually
    // arrive together), then at most every 50 ms.
    std::chrono::milliseconds pause(1);
    constexpr std::chrono::milliseconds kMaxPause(50);
    while (true) {
      bool all_found = true;
      for (size_t i = 0; i < keys.size(); ++i) {
        if (found[i]) continue;
        absl::StatusOr<std::string> value = ReadFile(PathForKey(keys[i]));
        if (value.ok()) {
          values[i] = *std::move(value);
          found[i] = true;
        } else if (absl::IsNotFound(value.status())) {
          all_found = false;
        } else {
          return absl::Status(value.status().code(),
                              absl::StrCat("rendezvous store: cannot read key \"", keys[i],
                                           "\": ", value.status().message()));
        }
      }
      if (all_found) return values;
      const Clock::time_point now = Clock::now();
      if (now >= deadline) break;
      std::this_thread::sleep_for(
          std::min<Clock::duration>(pause, deadline - now));  // Polling, not synchronization.
      pause = std::min(pause * 2, kMaxPause);
    }
    std::vector<std::string> missing;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!found[i]) missing.push_back(absl::StrCat("\"", absl::CHexEscape(keys[i]), "\""));
    }
    return absl::DeadlineExceededError(absl::StrCat("rendezvous store ", dir_, ": timed out after ",
                                                    timeout.count(), " ms waiting for key(s) ",
                                                    absl::StrJoin(missing, ", ")));
  }

 private:
  std::string PathForKey(absl::string_view key) const {
    return JoinPath(dir_, FileNameForKey(key));
  }

  const std::string dir_;
};

}  // namespace

std::unique_ptr<RendezvousStore> MakeFileRendezvousStore(const std::string& dir) {
  return std::make_unique<FileRendezvousStore>(dir);
}

}  // namespace llamapro
