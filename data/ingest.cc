#include "data/ingest.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "data/store.h"
#include "data/tokenizer.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

// A fixed set of threads running tasks in submission order of pickup.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  template <typename Result>
  std::future<Result> Submit(std::function<Result()> task) {
    auto packaged = std::make_shared<std::packaged_task<Result()>>(std::move(task));
    std::future<Result> future = packaged->get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.emplace_back([packaged] { (*packaged)(); });
    }
    wake_.notify_one();
    return future;
  }

 private:
  void Work() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

struct PendingRecord {
  uint64_t line = 0;
  std::string text;
  nlohmann::json json;
};

// Records read from a file, handed to a worker to tokenize.
struct Batch {
  uint64_t records = 0;  // Input records consumed, malformed and empty ones included.
  uint64_t malformed = 0;
  uint64_t empty = 0;
  uint64_t text_bytes = 0;
  std::vector<PendingRecord> pending;
  std::vector<std::string> problems;  // Found while reading.
};

struct TokenizedBatch {
  Batch source;  // pending cleared
  std::vector<NewDocument> documents;
  uint64_t tokens = 0;
  absl::Status status;  // Failure of the tokenizer itself (not a malformed record).
};

TokenizedBatch Tokenize(Batch batch, const Tokenizer& tokenizer, const IngestOptions& options,
                        const std::string& path) {
  TokenizedBatch out;
  out.documents.reserve(batch.pending.size());
  for (PendingRecord& record : batch.pending) {
    NewDocument doc;
    if (options.sft) {
      auto conversation = ParseSftRecord(record.json, *options.sft);
      if (!conversation.ok()) {
        ++batch.malformed;
        batch.problems.push_back(
            absl::StrCat(path, ":", record.line, ": ", conversation.status().message()));
        continue;
      }
      auto rendered = RenderConversation(*conversation, options.chat_template, tokenizer);
      if (!rendered.ok()) {
        ++batch.malformed;
        batch.problems.push_back(
            absl::StrCat(path, ":", record.line, ": ", rendered.status().message()));
        continue;
      }
      doc.tokens = std::move(rendered->tokens);
      doc.loss_mask = std::move(rendered->loss_mask);
    } else {
      absl::Status status = tokenizer.Encode(record.text, &doc.tokens);
      if (!status.ok()) {
        ++batch.malformed;
        batch.problems.push_back(absl::StrCat(path, ":", record.line, ": ", status.message()));
        continue;
      }
    }
    if (doc.tokens.empty()) {
      ++batch.empty;
      continue;
    }
    out.tokens += doc.tokens.size();
    out.documents.push_back(std::move(doc));
  }
  batch.pending.clear();
  batch.pending.shrink_to_fit();
  out.source = std::move(batch);
  return out;
}

int DefaultThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace

absl::StatusOr<IngestReport> Ingest(const IngestOptions& options,
                                    const std::function<void(const IngestProgress&)>& progress) {
  const auto start = Clock::now();
  if (options.inputs.empty()) return absl::InvalidArgumentError("no input files given");
  if (options.corpus.empty()) return absl::InvalidArgumentError("--corpus is required");
  if (!(options.held_out >= 0 && options.held_out < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--held-out ", options.held_out, " must be in [0, 1)"));
  }
  IngestProgress state;
  state.files_total = static_cast<int64_t>(options.inputs.size());
  std::vector<uint64_t> sizes;
  for (const std::string& path : options.inputs) {
    LP_ASSIGN_OR_RETURN(File file, File::OpenForRead(path));
    LP_ASSIGN_OR_RETURN(uint64_t size, file.Size());
    sizes.push_back(size);
    state.bytes_total += size;
  }

  LP_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(options.tokenizer));
  const TokenizerInfo& info = tokenizer->info();
  std::unique_ptr<TokenStore> owned_store;
  TokenStore* store = options.store;
  if (store == nullptr) {
    LP_ASSIGN_OR_RETURN(owned_store,
                        TokenStore::Open(options.store_dir, TokenStore::Mode::kReadWrite));
    store = owned_store.get();
  }
  LP_RETURN_IF_ERROR(store->BindTokenizer(StoreTokenizer{.fingerprint = info.fingerprint,
                                                         .path = info.path,
                                                         .vocab_size = info.vocab_size,
                                                         .bos_id = info.bos_id,
                                                         .eos_id = info.eos_id,
                                                         .pad_id = info.pad_id}));
  CorpusInfo spec;
  spec.name = options.corpus;
  spec.held_out_fraction = options.held_out;
  if (options.sft) {
    spec.kind = CorpusKind::kSft;
    spec.sft_format = std::string(SftFormatName(*options.sft));
    spec.chat_template = std::string(ChatTemplateName(options.chat_template));
  }
  LP_ASSIGN_OR_RETURN(CorpusInfo corpus, store->GetOrCreateCorpus(spec));

  const int threads = options.threads > 0 ? options.threads : DefaultThreads();
  ThreadPool pool(threads);
  const size_t max_in_flight = static_cast<size_t>(threads) + 1;
  InputOptions input = options.input;
  input.keep_json = options.sft.has_value();

  IngestReport report;
  auto note_problems = [&](const std::vector<std::string>& problems) {
    for (const std::string& p : problems) {
      if (report.problems.size() < options.max_reported_problems) report.problems.push_back(p);
    }
  };
  auto report_progress = [&](uint64_t partial_bytes) {
    if (!progress) return;
    IngestProgress now = state;
    now.bytes_read += partial_bytes;
    now.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    progress(now);
  };

  for (size_t f = 0; f < options.inputs.size(); ++f) {
    const std::string& path = options.inputs[f];
    LP_ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
    LP_ASSIGN_OR_RETURN(std::optional<FileRecord> existing, store->GetFile(corpus.id, sha));
    if (existing && existing->complete) {
      ++report.files_skipped;
      report.skipped.push_back(existing->path == path
                                   ? path
                                   : absl::StrCat(path, " (same content as ", existing->path, ")"));
      ++state.files_done;
      state.bytes_read += sizes[f];
      report_progress(0);
      continue;
    }
    FileRecord file;
    if (existing) {
      file = *existing;
      ++report.files_resumed;
    } else {
      file.sha256 = sha;
      file.path = path;
      file.bytes = sizes[f];
    }
    const uint64_t resume_after = file.records_done;
    LP_ASSIGN_OR_RETURN(std::unique_ptr<InputReader> reader, InputReader::Open(path, input));

    std::deque<std::future<TokenizedBatch>> in_flight;
    absl::Status failure;  // A strict-mode stop, committed up to the bad record first.
    auto commit_oldest = [&](bool last) -> absl::Status {
      if (options.cancel != nullptr && options.cancel->load()) {
        return absl::CancelledError(absl::StrCat("ingest cancelled while reading ", path));
      }
      TokenizedBatch done = in_flight.front().get();
      in_flight.pop_front();
      LP_RETURN_IF_ERROR(done.status);
      note_problems(done.source.problems);
      if (options.strict && done.source.malformed > 0 && failure.ok()) {
        failure = absl::InvalidArgumentError(
            absl::StrCat("malformed record (--strict): ",
                         done.source.problems.empty() ? path : done.source.problems.front()));
      }
      file.records_done += done.source.records;
      file.documents += done.documents.size();
      file.tokens += done.tokens;
      file.malformed += done.source.malformed;
      file.empty += done.source.empty;
      file.complete = last && in_flight.empty() && failure.ok();
      if (file.complete && file.documents == 0 && file.malformed == 0) {
        // A file without a single document is worth a word, not a silent pass.
        ++file.malformed;
        ++report.malformed;
        const std::string problem = absl::StrCat(path, ": no documents (empty file)");
        note_problems({problem});
        if (options.strict) {
          failure =
              absl::InvalidArgumentError(absl::StrCat("malformed input (--strict): ", problem));
          file.complete = false;
        }
      }
      const uint64_t held_out_before = corpus.held_out_documents;
      LP_RETURN_IF_ERROR(store->Append(&corpus, done.documents, file));
      report.held_out_documents += corpus.held_out_documents - held_out_before;
      report.documents += done.documents.size();
      report.tokens += done.tokens;
      report.malformed += done.source.malformed;
      report.empty += done.source.empty;
      state.documents += done.documents.size();
      state.tokens += done.tokens;
      report_progress(reader->bytes_consumed());
      return absl::OkStatus();
    };
    auto submit = [&](Batch batch) -> absl::Status {
      if (in_flight.size() >= max_in_flight) LP_RETURN_IF_ERROR(commit_oldest(false));
      const Tokenizer* tok = tokenizer.get();
      in_flight.push_back(
          pool.Submit<TokenizedBatch>([tok, &options, path, b = std::move(batch)]() mutable {
            return Tokenize(std::move(b), *tok, options, path);
          }));
      return absl::OkStatus();
    };

    Batch batch;
    uint64_t record_index = 0;
    InputRecord record;
    while (failure.ok()) {
      LP_ASSIGN_OR_RETURN(bool more, reader->Next(&record));
      if (!more) break;
      if (++record_index <= resume_after) continue;  // Committed by an earlier run.
      ++batch.records;
      if (!record.error.empty()) {
        ++batch.malformed;
        batch.problems.push_back(absl::StrCat(path, ":", record.number, ": ", record.error));
        if (options.strict) {
          // Commit what came before the bad record, then stop.
          --batch.records;
          --batch.malformed;
          batch.problems.pop_back();
          failure = absl::InvalidArgumentError(absl::StrCat(
              "malformed record (--strict): ", path, ":", record.number, ": ", record.error));
          note_problems({absl::StrCat(path, ":", record.number, ": ", record.error)});
          break;
        }
      } else if (record.empty) {
        ++batch.empty;
      } else {
        batch.text_bytes += record.bytes;
        batch.pending.push_back({record.number, std::move(record.text), std::move(record.json)});
      }
      if (batch.pending.size() >= options.batch_documents ||
          batch.text_bytes >= options.batch_bytes) {
        LP_RETURN_IF_ERROR(submit(std::move(batch)));
        batch = Batch();
      }
    }
    LP_RETURN_IF_ERROR(submit(std::move(batch)));
    while (!in_flight.empty()) LP_RETURN_IF_ERROR(commit_oldest(true));
    LP_RETURN_IF_ERROR(failure);
    ++report.files_ingested;
    ++state.files_done;
    state.bytes_read += sizes[f];
    report_progress(0);
  }
  LP_RETURN_IF_ERROR(store->Sync());
  report.bytes = state.bytes_read;
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

}  // namespace llamapro
