// Corpus ingestion: input files -> tokenized documents in the token store.
//
// Files are read in the order given, records in file order; documents are
// numbered in that order, so the store's contents are a pure function of the
// inputs (not of thread timing or batch boundaries). Tokenization runs on all
// cores; batches are committed in order, each atomically with the source
// file's progress, so an ingest killed at any point leaves a consistent store
// and a rerun continues where it stopped and ends with exactly the contents
// an uninterrupted run produces. A file already ingested (by content hash) is
// skipped, so ingesting the same inputs twice is a no-op.
#ifndef LLAMAPRO_DATA_INGEST_H_
#define LLAMAPRO_DATA_INGEST_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/readers.h"
#include "data/sft.h"
#include "data/store.h"

namespace llamapro {

struct IngestOptions {
  std::string store_dir;
  // An open store to write into instead of opening store_dir (the
  // coordinator's, which holds it open). Not owned. Ingests into one store
  // must not run concurrently.
  TokenStore* store = nullptr;
  // Set by another thread to stop between commits: the ingest returns
  // Cancelled; what it committed stays, and a rerun continues from there.
  const std::atomic<bool>* cancel = nullptr;
  std::string corpus;
  std::string tokenizer;  // tokenizer.model, or a directory holding one.
  std::vector<std::string> inputs;
  InputOptions input;            // Format, text field, split lines.
  double held_out = 0.005;       // Fraction of documents held out (by document hash).
  bool strict = false;           // A malformed record fails the ingest.
  std::optional<SftFormat> sft;  // Set: the inputs are SFT conversations.
  ChatTemplate chat_template = ChatTemplate::kLlama2Chat;
  int threads = 0;                    // Tokenizing threads; 0: all cores.
  size_t batch_documents = 2048;      // A commit holds at most this many documents...
  size_t batch_bytes = 8u << 20;      // ...or this many bytes of text.
  size_t max_reported_problems = 10;  // Malformed records quoted in the report.
};

struct IngestProgress {
  int64_t files_done = 0, files_total = 0;
  uint64_t documents = 0;  // Stored by this run.
  uint64_t tokens = 0;
  uint64_t bytes_read = 0;  // Of the files, by this run.
  uint64_t bytes_total = 0;
  double seconds = 0;
};

struct IngestReport {
  int64_t files_ingested = 0;
  int64_t files_skipped = 0;  // Already in the store (same content).
  int64_t files_resumed = 0;  // Partly ingested by an interrupted run.
  uint64_t documents = 0;     // Stored by this run.
  uint64_t tokens = 0;
  uint64_t held_out_documents = 0;
  uint64_t bytes = 0;  // Read by this run.
  uint64_t malformed = 0;
  uint64_t empty = 0;
  std::vector<std::string> problems;  // "file:line: reason", the first few.
  std::vector<std::string> skipped;   // Files skipped as already ingested.
  double seconds = 0;
};

// Runs an ingest. With `strict`, the first malformed record is an error
// naming file:line (documents committed before it stay; a rerun without
// --strict continues). Errors name the file, the store or the option.
absl::StatusOr<IngestReport> Ingest(const IngestOptions& options,
                                    const std::function<void(const IngestProgress&)>& progress);

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_INGEST_H_
