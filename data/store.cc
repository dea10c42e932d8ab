#include "data/store.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/status_macros.h"
#include "data/varint.h"
#include "nlohmann/json.hpp"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/table.h"
#include "rocksdb/utilities/options_util.h"
#include "rocksdb/write_batch.h"

namespace llamapro {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kStoreKey[] = "store";
constexpr char kStoreFormat[] = "llamapro.token-store";
constexpr int kStoreVersion = 1;
constexpr const char* kFamilies[] = {"default", "corpora", "files", "documents", "offsets"};

constexpr uint8_t kHeldOutFlag = 1;
constexpr uint8_t kMaskFlag = 2;

absl::Status FromRocks(const rocksdb::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", status.ToString());
  if (status.IsNotFound()) return absl::NotFoundError(message);
  if (status.IsIOError() && status.ToString().find("lock") != std::string::npos) {
    return absl::UnavailableError(
        absl::StrCat(message, " (is another llamaproctl or coordinator using this store?)"));
  }
  if (status.IsCorruption()) return absl::DataLossError(message);
  return absl::InternalError(message);
}

std::string CorpusPrefix(uint32_t corpus_id) {
  std::string key;
  AppendBigEndian(corpus_id, 4, &key);
  return key;
}

std::string DocumentKey(uint32_t corpus_id, uint64_t number) {
  std::string key = CorpusPrefix(corpus_id);
  AppendBigEndian(number, 8, &key);
  return key;
}

std::string OffsetPrefix(uint32_t corpus_id, Split split) {
  std::string key = CorpusPrefix(corpus_id);
  key.push_back(static_cast<char>(split));
  return key;
}

std::string OffsetKey(uint32_t corpus_id, Split split, uint64_t position) {
  std::string key = OffsetPrefix(corpus_id, split);
  AppendBigEndian(position, 8, &key);
  return key;
}

std::string FileKey(uint32_t corpus_id, absl::string_view sha256_hex) {
  return absl::StrCat(CorpusPrefix(corpus_id), sha256_hex);
}

std::string EncodeDocument(const NewDocument& doc, bool held_out) {
  std::string value;
  value.reserve(2 + doc.tokens.size() * 2);
  uint8_t flags = held_out ? kHeldOutFlag : 0;
  if (!doc.loss_mask.empty()) flags |= kMaskFlag;
  value.push_back(static_cast<char>(flags));
  AppendVarint(doc.tokens.size(), &value);
  for (int32_t id : doc.tokens) AppendVarint(static_cast<uint32_t>(id), &value);
  if (!doc.loss_mask.empty()) {
    // Run lengths, alternating, starting with a run of 0s (possibly empty).
    std::vector<uint64_t> runs;
    uint8_t current = 0;
    uint64_t length = 0;
    for (uint8_t m : doc.loss_mask) {
      const uint8_t bit = m != 0 ? 1 : 0;
      if (bit != current) {
        runs.push_back(length);
        current = bit;
        length = 0;
      }
      ++length;
    }
    runs.push_back(length);
    AppendVarint(runs.size(), &value);
    for (uint64_t run : runs) AppendVarint(run, &value);
  }
  return value;
}

absl::StatusOr<Document> DecodeDocument(absl::string_view value, absl::string_view label) {
  auto corrupt = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat("token store: document ", label, " is corrupt (", what, ")"));
  };
  if (value.empty()) return corrupt("empty value");
  Document doc;
  const auto flags = static_cast<uint8_t>(value.front());
  value.remove_prefix(1);
  doc.held_out = (flags & kHeldOutFlag) != 0;
  uint64_t count = 0;
  if (!ReadVarint(&value, &count) || count > value.size()) return corrupt("token count");
  doc.tokens.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t id = 0;
    if (!ReadVarint(&value, &id) || id > INT32_MAX) return corrupt("token id");
    doc.tokens[i] = static_cast<int32_t>(id);
  }
  if ((flags & kMaskFlag) != 0) {
    uint64_t runs = 0;
    if (!ReadVarint(&value, &runs)) return corrupt("mask runs");
    doc.loss_mask.reserve(count);
    uint8_t bit = 0;
    for (uint64_t r = 0; r < runs; ++r) {
      uint64_t length = 0;
      if (!ReadVarint(&value, &length) || doc.loss_mask.size() + length > count) {
        return corrupt("mask run");
      }
      doc.loss_mask.insert(doc.loss_mask.end(), length, bit);
      bit ^= 1;
    }
    if (doc.loss_mask.size() != count) return corrupt("mask length");
  }
  if (!value.empty()) return corrupt("trailing bytes");
  return doc;
}

absl::string_view KindName(CorpusKind kind) {
  return kind == CorpusKind::kSft ? "sft" : "pretrain";
}

Json CorpusToJson(const CorpusInfo& c) {
  Json j;
  j["id"] = c.id;
  j["name"] = c.name;
  j["kind"] = std::string(KindName(c.kind));
  j["held_out_fraction"] = c.held_out_fraction;
  if (c.kind == CorpusKind::kSft) {
    j["sft_format"] = c.sft_format;
    j["chat_template"] = c.chat_template;
  }
  j["documents"] = c.documents;
  j["tokens"] = c.tokens;
  j["held_out_documents"] = c.held_out_documents;
  j["held_out_tokens"] = c.held_out_tokens;
  j["bytes"] = c.bytes;
  j["train_stream"] = c.train_stream;
  j["held_out_stream"] = c.held_out_stream;
  return j;
}

absl::StatusOr<CorpusInfo> CorpusFromJson(absl::string_view text) {
  try {
    Json j = Json::parse(text);
    CorpusInfo c;
    c.id = j.at("id").get<uint32_t>();
    c.name = j.at("name").get<std::string>();
    c.kind = j.at("kind").get<std::string>() == "sft" ? CorpusKind::kSft : CorpusKind::kPretrain;
    c.held_out_fraction = j.at("held_out_fraction").get<double>();
    c.sft_format = j.value("sft_format", "");
    c.chat_template = j.value("chat_template", "");
    c.documents = j.at("documents").get<uint64_t>();
    c.tokens = j.at("tokens").get<uint64_t>();
    c.held_out_documents = j.at("held_out_documents").get<uint64_t>();
    c.held_out_tokens = j.at("held_out_tokens").get<uint64_t>();
    c.bytes = j.at("bytes").get<uint64_t>();
    c.train_stream = j.at("train_stream").get<uint64_t>();
    c.held_out_stream = j.at("held_out_stream").get<uint64_t>();
    return c;
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat("token store: corpus record is corrupt: ", e.what()));
  }
}

Json FileToJson(const FileRecord& f) {
  Json j;
  j["sha256"] = f.sha256;
  j["path"] = f.path;
  j["bytes"] = f.bytes;
  j["records_done"] = f.records_done;
  j["documents"] = f.documents;
  j["tokens"] = f.tokens;
  j["malformed"] = f.malformed;
  j["empty"] = f.empty;
  j["complete"] = f.complete;
  return j;
}

uint64_t HashTokens(const std::vector<int32_t>& tokens) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : tokens) {
    auto u = static_cast<uint32_t>(id);
    for (int i = 0; i < 4; ++i) {
      h = (h ^ (u & 0xff)) * 0x100000001b3ull;
      u >>= 8;
    }
  }
  // Final avalanche (splitmix64), so nearby documents spread over [0, 2^64).
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

}  // namespace

TokenStore::~TokenStore() {
  if (db_) {
    for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(
    const std::string& dir, Mode mode, const std::vector<std::string>& extra_families) {
  auto store = std::unique_ptr<TokenStore>(new TokenStore());
  store->dir_ = dir;
  store->mode_ = mode;
  if (mode == Mode::kReadOnly && !PathExists(JoinPath(dir, "CURRENT"))) {
    return absl::NotFoundError(
        absl::StrCat("no token store at ", dir, " (create one with llamaproctl ingest --store)"));
  }
  if (mode == Mode::kReadWrite && PathExists(dir) && !IsDirectory(dir)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " is not a directory"));
  }
  if (mode == Mode::kReadWrite && IsDirectory(dir) && !PathExists(JoinPath(dir, "CURRENT"))) {
    std::error_code ec;
    if (!std::filesystem::is_empty(dir, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, " exists and is not a token store; refusing to write into it"));
    }
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.compression = rocksdb::kLZ4Compression;
  options.bottommost_compression = rocksdb::kZSTD;
  options.max_background_jobs = 2;
  // Memory bound while ingesting: at most two 32 MB memtables per family,
  // whatever the input size.
  options.write_buffer_size = 32u << 20;
  options.max_write_buffer_number = 2;
  options.keep_log_file_num = 3;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  std::vector<std::string> names(std::begin(kFamilies), std::end(kFamilies));
  auto add_name = [&names](const std::string& name) {
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  };
  for (const std::string& name : extra_families) add_name(name);
  if (PathExists(JoinPath(dir, "CURRENT"))) {
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(options), dir, &existing).ok()) {
      for (const std::string& name : existing) add_name(name);
    }
  }
  for (const std::string& name : names) {
    rocksdb::ColumnFamilyOptions family_options(options);
    families.emplace_back(name, family_options);
  }
  rocksdb::DB* db = nullptr;
  rocksdb::Status status =
      mode == Mode::kReadOnly
          ? rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(options), dir, families,
                                         &store->handles_, &db)
          : rocksdb::DB::Open(rocksdb::DBOptions(options), dir, families, &store->handles_, &db);
  LP_RETURN_IF_ERROR(FromRocks(status, absl::StrCat("cannot open token store ", dir)));
  store->db_.reset(db);
  store->meta_ = store->handles_[0];
  store->corpora_ = store->handles_[1];
  store->files_ = store->handles_[2];
  store->documents_ = store->handles_[3];
  store->offsets_ = store->handles_[4];
  LP_RETURN_IF_ERROR(store->Init());
  return store;
}

absl::Status TokenStore::Init() {
  LP_ASSIGN_OR_RETURN(std::optional<std::string> record, Get(meta_, kStoreKey));
  if (!record) {
    if (mode_ == Mode::kReadOnly) return absl::OkStatus();
    Json j;
    j["format"] = kStoreFormat;
    j["version"] = kStoreVersion;
    j["next_corpus_id"] = 1;
    j["tokenizer"] = nullptr;
    return FromRocks(db_->Put(rocksdb::WriteOptions(), meta_, kStoreKey, j.dump()),
                     "cannot initialise the token store");
  }
  try {
    Json j = Json::parse(*record);
    if (j.value("format", "") != kStoreFormat) {
      return absl::InvalidArgumentError(absl::StrCat(dir_, " is a RocksDB but not a token store"));
    }
    if (j.value("version", 0) != kStoreVersion) {
      return absl::FailedPreconditionError(absl::StrCat(dir_, ": token store version ",
                                                        j.value("version", 0),
                                                        " (this build reads ", kStoreVersion, ")"));
    }
    if (!j["tokenizer"].is_null()) {
      const Json& t = j["tokenizer"];
      tokenizer_ = StoreTokenizer{.fingerprint = t.at("fingerprint"),
                                  .path = t.value("path", ""),
                                  .vocab_size = t.at("vocab_size"),
                                  .bos_id = t.at("bos_id"),
                                  .eos_id = t.at("eos_id"),
                                  .pad_id = t.at("pad_id")};
    }
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat(dir_, ": store record is corrupt: ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> TokenStore::Get(rocksdb::ColumnFamilyHandle* family,
                                                           absl::string_view key) const {
  std::string value;
  rocksdb::Status status =
      db_->Get(rocksdb::ReadOptions(), family, rocksdb::Slice(key.data(), key.size()), &value);
  if (status.IsNotFound()) return std::optional<std::string>();
  LP_RETURN_IF_ERROR(FromRocks(status, absl::StrCat("cannot read token store ", dir_)));
  return std::optional<std::string>(std::move(value));
}

absl::StatusOr<std::optional<StoreTokenizer>> TokenStore::Tokenizer() const { return tokenizer_; }

absl::Status TokenStore::BindTokenizer(const StoreTokenizer& tokenizer) {
  if (tokenizer_) {
    if (tokenizer_->fingerprint != tokenizer.fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "token store ", dir_, " holds documents tokenized with ", tokenizer_->path, " (sha256 ",
          tokenizer_->fingerprint.substr(0, 16), "...), not with ", tokenizer.path, " (sha256 ",
          tokenizer.fingerprint.substr(0, 16), "...): use that tokenizer, or another store"));
    }
    return absl::OkStatus();
  }
  LP_ASSIGN_OR_RETURN(std::optional<std::string> record, Get(meta_, kStoreKey));
  Json j = Json::parse(record.value_or("{}"));
  j["tokenizer"] = {{"fingerprint", tokenizer.fingerprint}, {"path", tokenizer.path},
                    {"vocab_size", tokenizer.vocab_size},   {"bos_id", tokenizer.bos_id},
                    {"eos_id", tokenizer.eos_id},           {"pad_id", tokenizer.pad_id}};
  LP_RETURN_IF_ERROR(FromRocks(db_->Put(rocksdb::WriteOptions(), meta_, kStoreKey, j.dump()),
                               "cannot bind the token store's tokenizer"));
  tokenizer_ = tokenizer;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CorpusInfo>> TokenStore::ListCorpora() const {
  std::vector<CorpusInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), corpora_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    LP_ASSIGN_OR_RETURN(CorpusInfo c, CorpusFromJson(it->value().ToString()));
    out.push_back(std::move(c));
  }
  LP_RETURN_IF_ERROR(FromRocks(it->status(), "cannot list corpora"));
  return out;
}

absl::StatusOr<CorpusInfo> TokenStore::GetCorpus(absl::string_view name) const {
  LP_ASSIGN_OR_RETURN(std::optional<std::string> record, Get(corpora_, name));
  if (!record) {
    LP_ASSIGN_OR_RETURN(std::vector<CorpusInfo> all, ListCorpora());
    std::vector<std::string> names;
    names.reserve(all.size());
    for (const CorpusInfo& c : all) names.push_back(c.name);
    return absl::NotFoundError(
        absl::StrCat("no corpus '", name, "' in token store ", dir_,
                     "; it holds: ", names.empty() ? "(no corpora)" : absl::StrJoin(names, ", ")));
  }
  return CorpusFromJson(*record);
}

absl::StatusOr<CorpusInfo> TokenStore::GetOrCreateCorpus(const CorpusInfo& spec) {
  if (spec.name.empty() || spec.name.size() > 200) {
    return absl::InvalidArgumentError("a corpus name must have 1 to 200 characters");
  }
  if (!(spec.held_out_fraction >= 0 && spec.held_out_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("held-out fraction ", spec.held_out_fraction, " must be in [0, 1)"));
  }
  LP_ASSIGN_OR_RETURN(std::optional<std::string> record, Get(corpora_, spec.name));
  if (record) {
    LP_ASSIGN_OR_RETURN(CorpusInfo existing, CorpusFromJson(*record));
    auto differs = [&](absl::string_view what, const std::string& have, const std::string& want) {
      return absl::FailedPreconditionError(
          absl::StrCat("corpus '", spec.name, "' in ", dir_, " was created with ", what, " ", have,
                       "; this ingest asks for ", want, " (use another corpus name)"));
    };
    if (existing.kind != spec.kind) {
      return differs("kind", std::string(KindName(existing.kind)),
                     std::string(KindName(spec.kind)));
    }
    if (existing.held_out_fraction != spec.held_out_fraction) {
      return differs("held-out fraction", absl::StrCat(existing.held_out_fraction),
                     absl::StrCat(spec.held_out_fraction));
    }
    if (existing.sft_format != spec.sft_format) {
      return differs("SFT format", existing.sft_format, spec.sft_format);
    }
    if (existing.chat_template != spec.chat_template) {
      return differs("chat template", existing.chat_template, spec.chat_template);
    }
    return existing;
  }
  LP_ASSIGN_OR_RETURN(std::optional<std::string> store_record, Get(meta_, kStoreKey));
  Json meta = Json::parse(store_record.value_or("{}"));
  CorpusInfo created = spec;
  created.id = meta.value("next_corpus_id", 1u);
  created.documents = created.tokens = created.held_out_documents = created.held_out_tokens = 0;
  created.bytes = created.train_stream = created.held_out_stream = 0;
  meta["next_corpus_id"] = created.id + 1;
  rocksdb::WriteBatch batch;
  batch.Put(meta_, kStoreKey, meta.dump());
  batch.Put(corpora_, created.name, CorpusToJson(created).dump());
  rocksdb::WriteOptions write_options;
  write_options.sync = true;
  LP_RETURN_IF_ERROR(FromRocks(db_->Write(write_options, &batch), "cannot create corpus"));
  return created;
}

absl::StatusOr<std::optional<FileRecord>> TokenStore::GetFile(uint32_t corpus_id,
                                                              absl::string_view sha256_hex) const {
  LP_ASSIGN_OR_RETURN(std::optional<std::string> record,
                      Get(files_, FileKey(corpus_id, sha256_hex)));
  if (!record) return std::optional<FileRecord>();
  try {
    Json j = Json::parse(*record);
    FileRecord f;
    f.sha256 = j.at("sha256");
    f.path = j.at("path");
    f.bytes = j.at("bytes");
    f.records_done = j.at("records_done");
    f.documents = j.at("documents");
    f.tokens = j.at("tokens");
    f.malformed = j.at("malformed");
    f.empty = j.at("empty");
    f.complete = j.at("complete");
    return std::optional<FileRecord>(std::move(f));
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat("token store: file record is corrupt: ", e.what()));
  }
}

uint64_t TokenStore::StreamLength(CorpusKind kind, uint64_t tokens) const {
  if (kind == CorpusKind::kSft) return 1;
  uint64_t length = tokens;
  if (tokenizer_ && tokenizer_->bos_id >= 0) ++length;
  if (tokenizer_ && tokenizer_->eos_id >= 0) ++length;
  return length;
}

bool TokenStore::IsHeldOut(const std::vector<int32_t>& tokens, double fraction) {
  if (fraction <= 0) return false;
  const double u = static_cast<double>(HashTokens(tokens) >> 11) * 0x1p-53;
  return u < fraction;
}

absl::Status TokenStore::Append(CorpusInfo* corpus, const std::vector<NewDocument>& documents,
                                const FileRecord& file) {
  if (mode_ == Mode::kReadOnly) return absl::FailedPreconditionError("token store is read-only");
  if (!tokenizer_) return absl::FailedPreconditionError("bind a tokenizer before appending");
  rocksdb::WriteBatch batch;
  CorpusInfo next = *corpus;
  for (const NewDocument& doc : documents) {
    if (doc.tokens.empty()) return absl::InvalidArgumentError("a document has no tokens");
    if (!doc.loss_mask.empty() && doc.loss_mask.size() != doc.tokens.size()) {
      return absl::InvalidArgumentError("loss mask and tokens differ in length");
    }
    for (int32_t id : doc.tokens) {
      if (id < 0 || id >= tokenizer_->vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside [0, ", tokenizer_->vocab_size, ")"));
      }
    }
    const bool held_out = IsHeldOut(doc.tokens, next.held_out_fraction);
    const uint64_t number = next.documents++;
    const uint64_t length = StreamLength(next.kind, doc.tokens.size());
    next.tokens += doc.tokens.size();
    uint64_t* stream = held_out ? &next.held_out_stream : &next.train_stream;
    const std::string offset_key =
        OffsetKey(next.id, held_out ? Split::kHeldOut : Split::kTrain, *stream);
    *stream += length;
    if (held_out) {
      ++next.held_out_documents;
      next.held_out_tokens += doc.tokens.size();
    }
    batch.Put(documents_, DocumentKey(next.id, number), EncodeDocument(doc, held_out));
    std::string number_value;
    AppendBigEndian(number, 8, &number_value);
    batch.Put(offsets_, offset_key, number_value);
  }
  // A file's bytes count once, with its first batch.
  LP_ASSIGN_OR_RETURN(std::optional<FileRecord> previous, GetFile(next.id, file.sha256));
  if (!previous) next.bytes += file.bytes;
  batch.Put(corpora_, next.name, CorpusToJson(next).dump());
  batch.Put(files_, FileKey(next.id, file.sha256), FileToJson(file).dump());
  LP_RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &batch),
                               absl::StrCat("cannot write to token store ", dir_)));
  *corpus = next;
  return absl::OkStatus();
}

absl::StatusOr<Document> TokenStore::ReadDocument(uint32_t corpus_id, uint64_t number) const {
  LP_ASSIGN_OR_RETURN(std::optional<std::string> value,
                      Get(documents_, DocumentKey(corpus_id, number)));
  const std::string label = absl::StrCat(corpus_id, "/", number);
  if (!value) return absl::NotFoundError(absl::StrCat("token store: no document ", label));
  return DecodeDocument(*value, label);
}

absl::StatusOr<TokenStore::Located> TokenStore::Locate(uint32_t corpus_id, Split split,
                                                       uint64_t position) const {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), offsets_));
  const std::string prefix = OffsetPrefix(corpus_id, split);
  it->SeekForPrev(OffsetKey(corpus_id, split, position));
  LP_RETURN_IF_ERROR(FromRocks(it->status(), "cannot read token store offsets"));
  if (!it->Valid() || !it->key().starts_with(rocksdb::Slice(prefix))) {
    return absl::OutOfRangeError(absl::StrCat("no document at stream position ", position));
  }
  absl::string_view key(it->key().data(), it->key().size());
  return Located{.number = ReadBigEndian(it->value().ToString(), 8),
                 .start = ReadBigEndian(key.substr(prefix.size()), 8)};
}

absl::StatusOr<TokenStore::Located> TokenStore::NextInSplit(uint32_t corpus_id, Split split,
                                                            uint64_t start) const {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), offsets_));
  const std::string prefix = OffsetPrefix(corpus_id, split);
  it->Seek(OffsetKey(corpus_id, split, start + 1));
  LP_RETURN_IF_ERROR(FromRocks(it->status(), "cannot read token store offsets"));
  if (!it->Valid() || !it->key().starts_with(rocksdb::Slice(prefix))) {
    return absl::NotFoundError("no further document");
  }
  absl::string_view key(it->key().data(), it->key().size());
  return Located{.number = ReadBigEndian(it->value().ToString(), 8),
                 .start = ReadBigEndian(key.substr(prefix.size()), 8)};
}

absl::StatusOr<std::string> TokenStore::ContentsDigest() const {
  Sha256 hash;
  // The token families only: the embedder's own families are not corpora.
  for (size_t f = 0; f < std::size(kFamilies); ++f) {
    rocksdb::ColumnFamilyHandle* family = handles_[f];
    hash.Update(family->GetName());
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), family));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string lengths;
      AppendBigEndian(it->key().size(), 8, &lengths);
      AppendBigEndian(it->value().size(), 8, &lengths);
      hash.Update(lengths);
      hash.Update(absl::string_view(it->key().data(), it->key().size()));
      hash.Update(absl::string_view(it->value().data(), it->value().size()));
    }
    LP_RETURN_IF_ERROR(FromRocks(it->status(), "cannot read token store"));
  }
  return DigestHex(hash.Finish());
}

rocksdb::ColumnFamilyHandle* TokenStore::Family(absl::string_view name) const {
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    if (handle->GetName() == name) return handle;
  }
  return nullptr;
}

absl::Status TokenStore::Sync() {
  if (mode_ == Mode::kReadOnly) return absl::OkStatus();
  return FromRocks(db_->SyncWAL(), absl::StrCat("cannot sync token store ", dir_));
}

}  // namespace llamapro
