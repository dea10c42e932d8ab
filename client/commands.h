// Subcommands of llamaproctl. Each Add*Command registers its flags on `app`
// and a callback that runs it; failures are reported by throwing
// CommandError, which main() prints as "llamaproctl <cmd>: error: ..." with
// exit status 1.
#ifndef LLAMAPRO_CLIENT_COMMANDS_H_
#define LLAMAPRO_CLIENT_COMMANDS_H_

#include <stdexcept>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace llamapro::cli {

class CommandError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws CommandError carrying the status message unless `status` is OK.
void ThrowIfError(const absl::Status& status);

void AddSynthCommand(CLI::App& app);
void AddExpandCommand(CLI::App& app);
void AddInspectCommand(CLI::App& app);
void AddScoreCommand(CLI::App& app);
void AddTokenizerCommand(CLI::App& app);
void AddIngestCommand(CLI::App& app);
void AddCorporaCommand(CLI::App& app);
void AddSamplesCommand(CLI::App& app);
void AddTrainCommand(CLI::App& app);
void AddEvalCommand(CLI::App& app);
// generate: text after a prompt, streamed.
void AddGenerateCommand(CLI::App& app);
// submit, jobs, get, watch, cancel: jobs on a coordinator.
void AddJobCommands(CLI::App& app);
// workers, up: the coordinator's workers; a local coordinator and workers.
void AddClusterCommands(CLI::App& app);
// health: a coordinator's gRPC health service, or a /metrics page.
void AddHealthCommand(CLI::App& app);

}  // namespace llamapro::cli

#endif  // LLAMAPRO_CLIENT_COMMANDS_H_
