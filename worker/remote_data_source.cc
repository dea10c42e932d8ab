#include "worker/remote_data_source.h"

#include <algorithm>
#include <iterator>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace llamapro::worker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kFirstBackoff{100};
constexpr std::chrono::milliseconds kMaxBackoff{2000};
// Granularity at which a backoff pause notices `cancel`.
constexpr std::chrono::milliseconds kCancelPoll{50};

bool Cancelled(const std::atomic<bool>* cancel) {
  return cancel != nullptr && cancel->load(std::memory_order_relaxed);
}

// Pauses for `pause` unless `cancel` is set first.
void Backoff(std::chrono::milliseconds pause, const std::atomic<bool>* cancel) {
  const Clock::time_point until = Clock::now() + pause;
  while (!Cancelled(cancel)) {
    const Clock::time_point now = Clock::now();
    if (now >= until) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(until - now, kCancelPoll));
  }
}

grpc::Status DataLoss(const std::string& message) {
  return grpc::Status(grpc::StatusCode::DATA_LOSS, message);
}

// Reads every batch of a sample stream into `out`, checking that it holds
// exactly `count` samples with indices first, first + stride, ...
template <typename Reader>
grpc::Status ReadStream(grpc::ClientContext* context, Reader& reader, int64_t seq_len,
                        int64_t first, int64_t stride, int64_t count, std::vector<Sample>* out) {
  out->clear();
  v1::SampleBatch batch;
  grpc::Status malformed;
  while (malformed.ok() && reader->Read(&batch)) {
    for (const v1::SampleRecord& record : batch.samples()) {
      const int64_t position = static_cast<int64_t>(out->size());
      if (position >= count) {
        malformed = DataLoss(absl::StrCat("the stream holds more than the ", count,
                                          " samples asked for (from index ", first, ")"));
        break;
      }
      const int64_t expected = first + position * stride;
      if (record.index() != expected) {
        malformed = DataLoss(absl::StrCat("sample ", position, " of the stream has index ",
                                          record.index(), ", expected ", expected));
        break;
      }
      Sample sample;
      absl::Status decoded =
          DecodeSampleRecord(record, seq_len, absl::StrCat("sample ", expected), &sample);
      if (!decoded.ok()) {
        malformed = rpc::ToGrpc(decoded);
        break;
      }
      out->push_back(std::move(sample));
    }
  }
  if (!malformed.ok()) {
    // Finish() on a stream the server is still writing would wait for it.
    context->TryCancel();
    reader->Finish();
    return malformed;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return status;
  if (static_cast<int64_t>(out->size()) != count) {
    return DataLoss(absl::StrCat("the stream ended after ", out->size(), " of ", count,
                                 " samples (from index ", first, ")"));
  }
  return grpc::Status::OK;
}

}  // namespace

absl::Status DecodeSampleRecord(const v1::SampleRecord& record, int64_t seq_len,
                                absl::string_view what, Sample* sample) {
  const size_t width = static_cast<size_t>(seq_len) + 1;
  if (record.tokens().size() != width * sizeof(int32_t)) {
    return absl::DataLossError(absl::StrCat(what, ": ", record.tokens().size(),
                                            " token bytes, expected ", width * sizeof(int32_t),
                                            " (seq_len + 1 = ", width, " int32 ids)"));
  }
  if (record.loss_mask().size() != width) {
    return absl::DataLossError(absl::StrCat(what, ": ", record.loss_mask().size(),
                                            " loss-mask bytes, expected seq_len + 1 = ", width));
  }
  sample->index = record.index();
  sample->component = record.component();
  sample->window = 0;
  sample->epoch = 0;
  sample->sources.clear();
  sample->tokens.resize(width);
  const auto* bytes = reinterpret_cast<const uint8_t*>(record.tokens().data());
  for (size_t i = 0; i < width; ++i) {
    const uint8_t* b = bytes + 4 * i;
    // Little-endian on the wire, whatever this machine's byte order.
    const uint32_t bits = static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) |
                          (static_cast<uint32_t>(b[2]) << 16) | (static_cast<uint32_t>(b[3]) << 24);
    sample->tokens[i] = static_cast<int32_t>(bits);
  }
  sample->loss_mask.assign(record.loss_mask().begin(), record.loss_mask().end());
  return absl::OkStatus();
}

RemoteDataSource::RemoteDataSource(const std::shared_ptr<grpc::Channel>& channel,
                                   RemoteDataOptions options)
    : options_(std::move(options)), stub_(v1::DataService::NewStub(channel)) {}

absl::Status RemoteDataSource::Call(
    const char* method, const std::function<grpc::Status(grpc::ClientContext*)>& attempt) {
  std::optional<Clock::time_point> give_up;
  std::chrono::milliseconds backoff = kFirstBackoff;
  while (true) {
    grpc::ClientContext context;
    rpc::PrepareContext(&context, options_.connection, options_.call_timeout);
    const grpc::Status status = attempt(&context);
    if (status.ok()) return absl::OkStatus();
    const std::string message = absl::StrCat("coordinator ", options_.connection.address, ": ",
                                             method, ": ", status.error_message());
    absl::Status error(static_cast<absl::StatusCode>(status.error_code()), message);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return error;
    const Clock::time_point now = Clock::now();
    if (!give_up) give_up = now + options_.retry_for;
    if (now + backoff > *give_up) {
      return absl::UnavailableError(absl::StrCat(
          message, " (still unavailable after ",
          std::chrono::duration_cast<std::chrono::seconds>(options_.retry_for).count(), " s)"));
    }
    if (Cancelled(options_.cancel)) {
      return absl::CancelledError(absl::StrCat(message, " (cancelled while retrying)"));
    }
    if (options_.on_retry) options_.on_retry(error);
    Backoff(backoff, options_.cancel);
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

absl::StatusOr<StoreTokenizer> RemoteDataSource::Tokenizer() {
  v1::StoreInfoResponse info;
  LP_RETURN_IF_ERROR(Call("StoreInfo", [&](grpc::ClientContext* context) {
    return stub_->StoreInfo(context, v1::StoreInfoRequest(), &info);
  }));
  if (info.tokenizer_fingerprint().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("coordinator ", options_.connection.address,
                                                      ": its token store holds no corpus yet"));
  }
  StoreTokenizer tokenizer;
  tokenizer.fingerprint = info.tokenizer_fingerprint();
  tokenizer.path = info.tokenizer_path();
  tokenizer.vocab_size = info.vocab_size();
  tokenizer.bos_id = info.bos_id();
  tokenizer.eos_id = info.eos_id();
  tokenizer.pad_id = info.pad_id();
  return tokenizer;
}

absl::Status RemoteDataSource::ReadSamples(const SamplerOptions& options, int64_t start,
                                           int64_t stride, int64_t count,
                                           std::vector<Sample>* out) {
  if (start < 0 || stride < 1 || count < 0) {
    return absl::InvalidArgumentError("start must be >= 0, stride >= 1, count >= 0");
  }
  out->clear();
  out->reserve(static_cast<size_t>(count));
  v1::ReadSamplesRequest request;
  for (const MixtureComponent& component : options.mixture) {
    v1::MixtureEntry* entry = request.add_mixture();
    entry->set_corpus(component.corpus);
    entry->set_weight(component.weight);
  }
  request.set_seq_len(options.seq_len);
  request.set_seed(options.seed);
  request.set_stride(stride);
  std::vector<Sample> chunk;
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min(kMaxSamplesPerCall, count - done);
    const int64_t first = start + done * stride;
    request.set_start(first);
    request.set_count(n);
    LP_RETURN_IF_ERROR(Call("ReadSamples", [&](grpc::ClientContext* context) {
      auto reader = stub_->ReadSamples(context, request);
      return ReadStream(context, reader, options.seq_len, first, stride, n, &chunk);
    }));
    std::move(chunk.begin(), chunk.end(), std::back_inserter(*out));
    done += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RemoteDataSource::HeldOutWindows(const std::string& corpus,
                                                         int64_t seq_len) {
  v1::HeldOutInfoRequest request;
  request.set_corpus(corpus);
  request.set_seq_len(seq_len);
  v1::HeldOutInfoResponse response;
  LP_RETURN_IF_ERROR(Call("HeldOutInfo", [&](grpc::ClientContext* context) {
    return stub_->HeldOutInfo(context, request, &response);
  }));
  return response.windows();
}

absl::Status RemoteDataSource::ReadHeldOut(const std::string& corpus, int64_t seq_len,
                                           int64_t start, int64_t count, std::vector<Sample>* out) {
  if (start < 0 || count < 0) return absl::InvalidArgumentError("start and count must be >= 0");
  out->clear();
  out->reserve(static_cast<size_t>(count));
  v1::ReadHeldOutRequest request;
  request.set_corpus(corpus);
  request.set_seq_len(seq_len);
  std::vector<Sample> chunk;
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min(kMaxSamplesPerCall, count - done);
    request.set_start(start + done);
    request.set_count(n);
    LP_RETURN_IF_ERROR(Call("ReadHeldOut", [&](grpc::ClientContext* context) {
      auto reader = stub_->ReadHeldOut(context, request);
      return ReadStream(context, reader, seq_len, start + done, 1, n, &chunk);
    }));
    std::move(chunk.begin(), chunk.end(), std::back_inserter(*out));
    done += n;
  }
  return absl::OkStatus();
}

}  // namespace llamapro::worker
