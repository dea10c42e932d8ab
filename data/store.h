// The token store: one embedded RocksDB directory holding tokenized corpora.
//
// Column families:
//   default    "store" -> the store record (tokenizer it is bound to, next corpus id)
//   corpora    corpus name -> corpus record (JSON)
//   files      corpus id (4 bytes BE) + SHA-256 of a source file -> ingestion progress (JSON)
//   documents  corpus id (4 BE) + document number (8 BE) -> document (flags, varint ids,
//              optional loss-mask runs); a corpus is one contiguous key range
//   offsets    corpus id (4 BE) + split (1) + stream position (8 BE) -> document number,
//              so the document holding any position of a split's token stream is one
//              SeekForPrev away (no index in memory, whatever the corpus size)
//
// A document's "stream length" is what it occupies when documents are joined:
// BOS + tokens + EOS for pretraining text (the ids the bound tokenizer
// defines), and 1 (one sample) for an SFT conversation.
//
// Every change is a RocksDB WriteBatch: documents, their offsets, the corpus
// counters and the source file's progress are committed together, so a
// process killed at any moment leaves a consistent store that a rerun
// completes. Thread-safe: RocksDB serialises writes; reads are concurrent.
#ifndef LLAMAPRO_DATA_STORE_H_
#define LLAMAPRO_DATA_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace llamapro {

// The tokenizer a store is bound to: documents from any other are refused.
struct StoreTokenizer {
  std::string fingerprint;  // SHA-256 of tokenizer.model.
  std::string path;         // Where it was loaded from, for messages.
  int32_t vocab_size = 0;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t pad_id = -1;
};

enum class CorpusKind { kPretrain, kSft };

struct CorpusInfo {
  uint32_t id = 0;
  std::string name;
  CorpusKind kind = CorpusKind::kPretrain;
  double held_out_fraction = 0.005;
  std::string sft_format;     // SFT: "sharegpt" | "alpaca".
  std::string chat_template;  // SFT: template the conversations were rendered with.
  uint64_t documents = 0;     // All documents (training + held-out).
  uint64_t tokens = 0;        // Their token ids (BOS/EOS of joining not counted).
  uint64_t held_out_documents = 0;
  uint64_t held_out_tokens = 0;
  uint64_t bytes = 0;            // Source bytes of the ingested files.
  uint64_t train_stream = 0;     // Length of the training split's stream.
  uint64_t held_out_stream = 0;  // Length of the held-out split's stream.
};

// Progress of one source file in one corpus (keyed by content hash).
struct FileRecord {
  std::string sha256;  // Hex.
  std::string path;    // As first given.
  uint64_t bytes = 0;
  uint64_t records_done = 0;  // Input records (lines, or the file) consumed so far.
  uint64_t documents = 0;     // Documents stored from it.
  uint64_t tokens = 0;
  uint64_t malformed = 0;  // Records refused as malformed.
  uint64_t empty = 0;      // Records without text, skipped.
  bool complete = false;
};

enum class Split : uint8_t { kTrain = 0, kHeldOut = 1 };

struct Document {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss_mask;  // Empty for pretraining text.
  bool held_out = false;
};

// A document to append; the store assigns its number and split.
struct NewDocument {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss_mask;  // SFT only.
};

class TokenStore {
 public:
  enum class Mode { kReadWrite, kReadOnly };

  // Opens (creating in kReadWrite mode) the store at `dir`. A read-only open
  // works while another process writes (it sees the state at open time).
  //
  // `extra_families` are column families of the same RocksDB that belong to
  // whoever embeds the store (the coordinator keeps jobs and events beside
  // the corpora); they are created when missing and reached through db() and
  // Family(). Families that exist on disk but are not named are opened too
  // (RocksDB requires it), so any tool can open the coordinator's store.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(
      const std::string& dir, Mode mode, const std::vector<std::string>& extra_families = {});
  ~TokenStore();
  TokenStore(const TokenStore&) = delete;
  TokenStore& operator=(const TokenStore&) = delete;

  const std::string& dir() const { return dir_; }

  // The bound tokenizer, or nullopt for a store without documents yet.
  absl::StatusOr<std::optional<StoreTokenizer>> Tokenizer() const;
  // Binds an empty store to `tokenizer`, or checks that it is the bound one;
  // a different tokenizer is refused naming both.
  absl::Status BindTokenizer(const StoreTokenizer& tokenizer);

  absl::StatusOr<std::vector<CorpusInfo>> ListCorpora() const;
  // NotFound naming the corpora that exist.
  absl::StatusOr<CorpusInfo> GetCorpus(absl::string_view name) const;
  // Returns the corpus, creating it with `spec`'s kind and settings if it does
  // not exist; refuses a spec whose kind, held-out fraction or SFT settings
  // differ from the existing corpus's.
  absl::StatusOr<CorpusInfo> GetOrCreateCorpus(const CorpusInfo& spec);

  absl::StatusOr<std::optional<FileRecord>> GetFile(uint32_t corpus_id,
                                                    absl::string_view sha256_hex) const;

  // Atomically appends `documents` to `corpus` (numbering them after its
  // current last; the held-out split is chosen by a hash of each document's
  // tokens and the corpus's fraction), updates `*corpus`'s counters and
  // stores `file`'s progress. `file` counters must already include these
  // documents. `*corpus` must be the current record (GetCorpus).
  absl::Status Append(CorpusInfo* corpus, const std::vector<NewDocument>& documents,
                      const FileRecord& file);

  absl::StatusOr<Document> ReadDocument(uint32_t corpus_id, uint64_t number) const;

  // The document of `split` that covers stream position `position`: its
  // number and the position where it starts. OutOfRange past the end.
  struct Located {
    uint64_t number = 0;
    uint64_t start = 0;
  };
  absl::StatusOr<Located> Locate(uint32_t corpus_id, Split split, uint64_t position) const;
  // The next document of `split` after the one starting at `start`
  // (NotFound at the end).
  absl::StatusOr<Located> NextInSplit(uint32_t corpus_id, Split split, uint64_t start) const;

  // Stream length of a document with `tokens` ids in a corpus of `kind`.
  uint64_t StreamLength(CorpusKind kind, uint64_t tokens) const;
  // True when a document with these tokens goes to the held-out split.
  static bool IsHeldOut(const std::vector<int32_t>& tokens, double fraction);

  // SHA-256 over every key and value of every column family, in order: two
  // stores with equal digests hold the same data.
  absl::StatusOr<std::string> ContentsDigest() const;

  // Makes every committed write durable (fsyncs the write-ahead log).
  absl::Status Sync();

  // The embedding process's view of the database (see Open): the handle of
  // an extra column family, or null if it was not opened.
  rocksdb::DB* db() const { return db_.get(); }
  rocksdb::ColumnFamilyHandle* Family(absl::string_view name) const;

 private:
  TokenStore() = default;
  absl::Status Init();
  absl::StatusOr<std::optional<std::string>> Get(rocksdb::ColumnFamilyHandle* family,
                                                 absl::string_view key) const;

  std::string dir_;
  Mode mode_ = Mode::kReadOnly;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* corpora_ = nullptr;
  rocksdb::ColumnFamilyHandle* files_ = nullptr;
  rocksdb::ColumnFamilyHandle* documents_ = nullptr;
  rocksdb::ColumnFamilyHandle* offsets_ = nullptr;
  std::optional<StoreTokenizer> tokenizer_;  // Cached after BindTokenizer / open.
};

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_STORE_H_
