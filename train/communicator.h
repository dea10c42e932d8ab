// How the ranks of a job find each other and connect: rendezvous stores and
// the Gloo communicator. The Communicator interface itself is in
// base/collectives.h.
#ifndef LLAMAPRO_TRAIN_COMMUNICATOR_H_
#define LLAMAPRO_TRAIN_COMMUNICATOR_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/collectives.h"

namespace llamapro {

// A key-value store the ranks of a job share to find each other (the
// coordinator's rendezvous, or a directory for tests). Thread-safe.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(absl::string_view key, absl::string_view value) = 0;
  // Waits until every key exists (or the timeout passes: DeadlineExceeded
  // naming the missing keys) and returns their values in order.
  virtual absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                        std::chrono::milliseconds timeout) = 0;
};

// A RendezvousStore in a directory shared by the ranks (one file per key,
// written through a temporary file and renamed). For tests and single-machine
// runs without a coordinator.
std::unique_ptr<RendezvousStore> MakeFileRendezvousStore(const std::string& dir);

struct GlooOptions {
  std::string interface_address = "127.0.0.1";  // Where this rank listens.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::string prefix;  // Keys are namespaced by it (e.g. "job/<id>/attempt/<n>").
};

// Connects `world_size` ranks over Gloo's TCP transport, bootstrapped through
// `store`. Blocks until every rank has joined or the timeout passes.
absl::StatusOr<std::unique_ptr<Communicator>> MakeGlooCommunicator(int rank, int world_size,
                                                                   RendezvousStore* store,
                                                                   const GlooOptions& options);

// The group communicators of one rank of a DP x TP job (MeshCoordinates):
// `tp` connects the tp ranks of its replica, `dp` the dp ranks that share its
// TP rank. A group of one rank is a LocalCommunicator. Every rank of the job
// calls this with the same dp, tp and options; the groups' Gloo keys are
// namespaced under options.prefix ("tp/<replica>", "dp/<tp rank>").
struct MeshCommunicators {
  MeshCoordinates at;
  std::unique_ptr<Communicator> tp, dp;
};
absl::StatusOr<MeshCommunicators> MakeGlooMesh(int rank, int dp, int tp, RendezvousStore* store,
                                               const GlooOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_COMMUNICATOR_H_
