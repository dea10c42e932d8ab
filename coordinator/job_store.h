// Durable jobs and job events, in column families of the coordinator's one
// RocksDB (the token store's database, DESIGN.md):
//   jobs        job number (8 bytes BE) -> llamapro.v1.Job
//   job_events  job number (8 BE) + event sequence (8 BE) -> llamapro.v1.JobEvent
// A job and the events that changed it are written in one WriteBatch, so a
// coordinator killed at any moment reloads a consistent history.
#ifndef LLAMAPRO_COORDINATOR_JOB_STORE_H_
#define LLAMAPRO_COORDINATOR_JOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/store.h"
#include "llamapro/v1/jobs.pb.h"

namespace llamapro::coordinator {

// The column families the coordinator adds to the token store's database.
const std::vector<std::string>& JobStoreFamilies();

struct StoredJob {
  uint64_t number = 0;
  v1::Job job;
  std::vector<v1::JobEvent> events;  // In sequence order.
};

// Thread-safe (RocksDB serialises writes).
class JobStore {
 public:
  // `store` must have been opened with JobStoreFamilies() and outlive this.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(TokenStore* store);

  // Every job with its events, in job-number order. A record that does not
  // parse is an error naming its key (the database is damaged).
  absl::StatusOr<std::vector<StoredJob>> LoadAll() const;

  // Writes the job's current record and `events` (its new ones) together.
  // `sync`: fsync the
  // write-ahead log (state changes); progress updates skip it (a killed
  // process loses nothing either way, only a machine crash could).
  absl::Status Write(uint64_t number, const v1::Job& job, const std::vector<v1::JobEvent>& events,
                     bool sync);

 private:
  explicit JobStore(TokenStore* store) : store_(store) {}
  TokenStore* store_;
};

}  // namespace llamapro::coordinator

#endif  // LLAMAPRO_COORDINATOR_JOB_STORE_H_
