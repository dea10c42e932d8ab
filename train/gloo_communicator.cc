// The Gloo implementation of Communicator (train/communicator.h): CPU ranks
// connected over Gloo's TCP transport, bootstrapped through a RendezvousStore.
//
// Gloo reports failures by throwing (gloo::IoException for a peer gone or a
// timeout, gloo::EnforceNotMet for a broken precondition, gloo::Exception for
// the rest); every call into it is made through CallGloo, which turns them
// into statuses. Exceptions thrown by StoreAdapter (ours) cross Gloo on the
// way back and are caught there too.
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "train/communicator.h"

namespace llamapro {
namespace {

std::string PrefixedKey(absl::string_view prefix, absl::string_view key) {
  return prefix.empty() ? std::string(key) : absl::StrCat(prefix, "/", key);
}

// Gloo's messages carry no error code: a timeout is recognised by its text
// ("Timed out waiting 2000ms for recv operation", "Connect timeout ...").
absl::Status StatusFromIoError(absl::string_view what, absl::string_view message) {
  std::string text = absl::StrCat(what, ": ", message);
  const std::string lower = absl::AsciiStrToLower(message);
  if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
    return absl::DeadlineExceededError(text);
  }
  return absl::UnavailableError(text);
}

// Runs `fn` (calls into Gloo) and turns whatever Gloo throws into a status
// whose message starts with `what`.
template <typename Fn>
absl::Status CallGloo(absl::string_view what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const gloo::IoException& e) {
    return StatusFromIoError(what, e.what());
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(absl::StrCat(what, ": Gloo check failed: ", e.what()));
  } catch (const gloo::Exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

// Gloo's view of our RendezvousStore, with every key under `prefix`. Gloo's
// own stores block in get() until the key exists; so does this one. A failed
// store call is kept (error()) with its code and thrown to Gloo as an
// IoException, which is how Gloo's stores report failures.
class StoreAdapter : public gloo::rendezvous::Store {
 public:
  StoreAdapter(RendezvousStore* store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    ThrowIfError(
        store_->Set(PrefixedKey(prefix_, key), absl::string_view(data.data(), data.size())));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::vector<std::string>> values =
        store_->Wait({PrefixedKey(prefix_, key)}, timeout_);
    ThrowIfError(values.status());
    const std::string& value = values->front();
    return std::vector<char>(value.begin(), value.end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> prefixed;
    prefixed.reserve(keys.size());
    for (const std::string& key : keys) prefixed.push_back(PrefixedKey(prefix_, key));
    ThrowIfError(store_->Wait(prefixed, std::min(timeout, timeout_)).status());
  }

  // The first store failure, or OK.
  const absl::Status& error() const { return error_; }

 private:
  void ThrowIfError(const absl::Status& status) {
    if (status.ok()) return;
    if (error_.ok()) error_ = status;
    throw gloo::IoException(std::string(status.message()));
  }

  RendezvousStore* const store_;
  const std::string prefix_;
  const std::chrono::milliseconds timeout_;
  absl::Status error_;
};

// Elementwise sum with the signature AllreduceOptions::Func wants; `out` may
// alias `a`. One addition per element per ring step: the order of the terms
// is fixed by the ring, not by this loop.
template <typename T>
void SumInto(void* out, const void* a, const void* b, size_t n) {
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}

template <typename T>
constexpr absl::string_view TypeName();
template <>
constexpr absl::string_view TypeName<float>() {
  return "float";
}
template <>
constexpr absl::string_view TypeName<double>() {
  return "double";
}
template <>
constexpr absl::string_view TypeName<int64_t>() {
  return "int64";
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, std::chrono::milliseconds timeout)
      : context_(std::move(context)), timeout_(timeout) {}

  int rank() const override { return context_->rank; }
  int world_size() const override { return context_->size; }

  absl::Status AllReduceSum(float* data, size_t n) override { return AllReduce(data, n); }
  absl::Status AllReduceSum(double* data, size_t n) override { return AllReduce(data, n); }
  absl::Status AllReduceSum(int64_t* data, size_t n) override { return AllReduce(data, n); }

  // Gloo's allgatherv: every rank sends its block to every other; `out` is
  // laid out in rank order (copies, no arithmetic: identical everywhere).
  absl::Status AllGather(const float* in, float* out, const std::vector<size_t>& counts) override {
    if (counts.size() != static_cast<size_t>(world_size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("all-gather with ", counts.size(), " counts in a group of ", world_size()));
    }
    size_t total = 0;
    for (size_t c : counts) total += c;
    if (total == 0) return absl::OkStatus();
    return CallGloo(absl::StrCat("Gloo all-gather of ", total, " float values (rank ", rank(),
                                 " of ", world_size(), ")"),
                    [&] {
                      gloo::AllgathervOptions options(context_);
                      // Gloo reads the input only; its API takes a mutable pointer.
                      options.setInput(const_cast<float*>(in), counts[rank()]);
                      options.setOutput(out, counts);
                      options.setTimeout(timeout_);
                      gloo::allgatherv(options);
                    });
  }

  absl::Status Barrier() override {
    return CallGloo(absl::StrCat("Gloo barrier (rank ", rank(), " of ", world_size(), ")"), [&] {
      gloo::BarrierOptions options(context_);
      options.setTimeout(timeout_);
      gloo::barrier(options);
    });
  }

 private:
  // Gloo's ring all-reduce (gloo/allreduce.h, Algorithm::RING): a
  // reduce-scatter then an all-gather around the ring rank -> rank - 1, in
  // segments of at most 1 MiB (AllreduceOptions::kMaxSegmentSize), so buffers
  // of any size stream through 2 MiB of scratch and need no chunking here.
  // Each element's sum is accumulated along the ring in an order fixed by the
  // world size and n alone, and the all-gather copies the finished sums, so
  // every rank gets the same bits, run after run. (Algorithm::BCUBE, or
  // UNSPECIFIED which may pick differently in other Gloo versions, is not
  // used for that reason.)
  template <typename T>
  absl::Status AllReduce(T* data, size_t n) {
    if (n == 0) return absl::OkStatus();  // Gloo refuses empty buffers.
    return CallGloo(absl::StrCat("Gloo all-reduce of ", n, " ", TypeName<T>(), " values (rank ",
                                 rank(), " of ", world_size(), ")"),
                    [&] {
                      gloo::AllreduceOptions options(context_);
                      options.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
                      options.setOutput(data, n);
                      options.setReduceFunction(&SumInto<T>);
                      options.setTimeout(timeout_);
                      gloo::allreduce(options);
                    });
  }

  std::shared_ptr<gloo::Context> context_;
  const std::chrono::milliseconds timeout_;
};

// Every rank announces itself and waits for all the others, so that a rank
// that never comes is reported by number (rather than as whichever Gloo key
// the first wait happened to be on).
absl::Status JoinAll(int rank, int world_size, RendezvousStore* store, const GlooOptions& options) {
  auto joined_key = [&](int r) { return PrefixedKey(options.prefix, absl::StrCat("joined/", r)); };
  LP_RETURN_IF_ERROR(store->Set(joined_key(rank), ""));
  std::vector<std::string> keys;
  keys.reserve(world_size);
  for (int r = 0; r < world_size; ++r) keys.push_back(joined_key(r));
  absl::Status status = store->Wait(keys, options.timeout).status();
  if (!absl::IsDeadlineExceeded(status)) return status;
  std::vector<int> missing;
  for (int r = 0; r < world_size; ++r) {
    if (!store->Wait({joined_key(r)}, std::chrono::milliseconds(0)).ok()) missing.push_back(r);
  }
  return absl::DeadlineExceededError(
      absl::StrCat("Gloo rendezvous (rank ", rank, " of ", world_size, ", prefix \"",
                   options.prefix, "\"): rank(s) ", absl::StrJoin(missing, ", "),
                   " did not join within ", options.timeout.count(), " ms"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeGlooCommunicator(int rank, int world_size,
                                                                   RendezvousStore* store,
                                                                   const GlooOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gloo communicator: rank ", rank, " is not in [0, ", world_size, ")"));
  }
  if (store == nullptr) {
    return absl::InvalidArgumentError("Gloo communicator: no rendezvous store");
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Gloo communicator: timeout must be positive, got ", options.timeout.count(), " ms"));
  }
  // One rank has no peers to talk to (and Gloo's ring wants a neighbour).
  if (world_size == 1) return std::make_unique<LocalCommunicator>();

  std::shared_ptr<gloo::transport::Device> device;
  LP_RETURN_IF_ERROR(CallGloo(
      absl::StrCat("Gloo TCP device on \"", options.interface_address, "\" (rank ", rank, ")"),
      [&] {
        gloo::transport::tcp::attr attr;
        attr.hostname = options.interface_address;
        device = gloo::transport::tcp::CreateDevice(attr);
      }));
  LP_RETURN_IF_ERROR(JoinAll(rank, world_size, store, options));

  auto context = std::make_shared<gloo::rendezvous::Context>(rank, world_size);
  StoreAdapter adapter(store, PrefixedKey(options.prefix, "gloo"), options.timeout);
  absl::Status connected =
      CallGloo(absl::StrCat("Gloo connect (rank ", rank, " of ", world_size, ")"), [&] {
        context->setTimeout(options.timeout);
        context->connectFullMesh(adapter, device);
      });
  if (!connected.ok()) {
    // A store failure keeps its own code (DeadlineExceeded naming the keys).
    if (!adapter.error().ok()) {
      return absl::Status(adapter.error().code(),
                          absl::StrCat("Gloo connect (rank ", rank, " of ", world_size,
                                       "): ", adapter.error().message()));
    }
    return connected;
  }
  return std::make_unique<GlooCommunicator>(std::move(context), options.timeout);
}

absl::StatusOr<MeshCommunicators> MakeGlooMesh(int rank, int dp, int tp, RendezvousStore* store,
                                               const GlooOptions& options) {
  if (dp < 1 || tp < 1 || rank < 0 || rank >= dp * tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gloo mesh: rank ", rank, " is not in a dp ", dp, " x tp ", tp, " mesh"));
  }
  MeshCommunicators mesh;
  mesh.at = MeshCoordinates::Of(rank, dp, tp);
  GlooOptions group = options;
  group.prefix = PrefixedKey(options.prefix, absl::StrCat("tp/", mesh.at.dp_rank));
  LP_ASSIGN_OR_RETURN(mesh.tp, MakeGlooCommunicator(mesh.at.tp_rank, tp, store, group));
  group.prefix = PrefixedKey(options.prefix, absl::StrCat("dp/", mesh.at.tp_rank));
  LP_ASSIGN_OR_RETURN(mesh.dp, MakeGlooCommunicator(mesh.at.dp_rank, dp, store, group));
  return mesh;
}

}  // namespace llamapro
