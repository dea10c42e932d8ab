#include "coordinator/job_store.h"

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"

namespace llamapro::coordinator {
namespace {

constexpr char kJobs[] = "jobs";
constexpr char kEvents[] = "job_events";

void AppendBigEndian(uint64_t value, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

uint64_t ReadBigEndian(const char* data) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | static_cast<uint8_t>(data[i]);
  return value;
}

absl::Status FromRocks(const rocksdb::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", status.ToString()));
}

}  // namespace

const std::vector<std::string>& JobStoreFamilies() {
  static const std::vector<std::string> kFamilies = {kJobs, kEvents};
  return kFamilies;
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(TokenStore* store) {
  for (const std::string& name : JobStoreFamilies()) {
    if (store->Family(name) == nullptr) {
      return absl::InternalError(
          absl::StrCat(store->dir(), ": column family ", name, " was not opened"));
    }
  }
  return std::unique_ptr<JobStore>(new JobStore(store));
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadAll() const {
  std::vector<StoredJob> jobs;
  rocksdb::DB* db = store_->db();
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db->NewIterator(rocksdb::ReadOptions(), store_->Family(kJobs)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->key().size() != 8) {
        return absl::DataLossError(absl::StrCat(store_->dir(), ": malformed job key"));
      }
      StoredJob stored;
      stored.number = ReadBigEndian(it->key().data());
      if (!stored.job.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat(store_->dir(), ": job record ", stored.number, " does not parse"));
      }
      jobs.push_back(std::move(stored));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "cannot read jobs");
  }
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions(), store_->Family(kEvents)));
  size_t j = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 16) {
      return absl::DataLossError(absl::StrCat(store_->dir(), ": malformed job event key"));
    }
    const uint64_t number = ReadBigEndian(it->key().data());
    while (j < jobs.size() && jobs[j].number < number) ++j;
    if (j == jobs.size() || jobs[j].number != number) continue;  // Events of no job: ignored.
    v1::JobEvent event;
    if (!event.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat(store_->dir(), ": event ",
                                              ReadBigEndian(it->key().data() + 8), " of job ",
                                              number, " does not parse"));
    }
    jobs[j].events.push_back(std::move(event));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "cannot read job events");
  return jobs;
}

absl::Status JobStore::Write(uint64_t number, const v1::Job& job,
                             const std::vector<v1::JobEvent>& events, bool sync) {
  rocksdb::WriteBatch batch;
  std::string key;
  AppendBigEndian(number, &key);
  auto status = batch.Put(store_->Family(kJobs), key, job.SerializeAsString());
  for (const v1::JobEvent& event : events) {
    std::string event_key = key;
    AppendBigEndian(static_cast<uint64_t>(event.sequence()), &event_key);
    if (status.ok())
      status = batch.Put(store_->Family(kEvents), event_key, event.SerializeAsString());
  }
  if (!status.ok()) return FromRocks(status, "cannot build job write");
  rocksdb::WriteOptions options;
  options.sync = sync;
  return FromRocks(store_->db()->Write(options, &batch),
                   absl::StrCat("cannot write job ", job.id()));
}

}  // namespace llamapro::coordinator
