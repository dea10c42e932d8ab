// The translation of a `llamaproctl submit` file into SubmitJobRequests
// (docs/llamaproctl.md, `submit`). Pure functions of their inputs, no RPC,
// so the translation is testable without a coordinator; thread-safe.
//
// A submit file holds one or more YAML documents separated by `---` (a
// pipeline). Each document is one job: the submit keys
//   kind (required: expand | pretrain | sft | eval | ingest), name,
//   world_size, depends_on, max_restarts
// plus, for pretrain and sft, the job config of `llamaproctl train`
// (docs/config.md), which is validated here with ParseJobConfig and passed on
// verbatim (re-emitted without the submit keys) as train_config_yaml; for
// expand, eval and ingest, the keys of ExpandJob, EvalJob and IngestJob
// (proto/llamapro/v1/jobs.proto), where an unknown key is an error.
//
// Errors are InvalidArgument, of the form
//   <source>: document <k>: <key>: <what is wrong>
// with k counted from 1 in file order (empty documents count too, and are
// skipped). Paths are kept as written: the coordinator resolves relative ones
// against its data dir.
#ifndef LLAMAPRO_CLIENT_SUBMIT_SPEC_H_
#define LLAMAPRO_CLIENT_SUBMIT_SPEC_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "llamapro/v1/jobs.pb.h"

namespace llamapro::client {

// One job document of a submit file, translated.
struct SubmitDocument {
  int document = 0;  // Position in the file, from 1 (for messages).
  // spec filled in; request_id empty (the caller chooses it). spec.depends_on
  // holds the entries as written: job ids, and names of earlier documents
  // that ResolveDependencies replaces with those documents' job ids.
  v1::SubmitJobRequest request;
  // Parallel to spec.depends_on: the index (into the vector ParseSubmitFile
  // returns) of the earlier document an entry names, or -1 for a job id.
  std::vector<int> depends_on_documents;
};

// Translates the documents of `yaml_text` in order; `source` names the file
// in errors. Empty documents are skipped; a file without any job document is
// an error. Names must be distinct within a file, and a depends_on entry
// equal to the name of the document itself or of a later one is an error.
absl::StatusOr<std::vector<SubmitDocument>> ParseSubmitFile(absl::string_view yaml_text,
                                                            absl::string_view source);

// Reads `path` and parses it with source = path. An unreadable file is an
// error naming it.
absl::StatusOr<std::vector<SubmitDocument>> LoadSubmitFile(const std::string& path);

// Returns document.request with every depends_on entry that names an earlier
// document replaced by job_ids[that document's index]. Needs job_ids to hold
// the id of every document it names (CHECKed).
v1::SubmitJobRequest ResolveDependencies(const SubmitDocument& document,
                                         absl::Span<const std::string> job_ids);

// The inverse of rpc::JobKindName (exact, lower case); JOB_KIND_UNSPECIFIED for
// any other name.
v1::JobKind ParseJobKind(absl::string_view name);

// A random (version 4) UUID in its canonical text form, from the system's
// entropy source. Thread-safe.
std::string NewRequestId();

}  // namespace llamapro::client

#endif  // LLAMAPRO_CLIENT_SUBMIT_SPEC_H_
