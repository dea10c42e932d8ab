// llamaproctl: the command-line client. See docs/llamaproctl.md.
#include <cstdio>
#include <exception>

#include "CLI/CLI.hpp"
#include "base/version.h"
#include "client/commands.h"

namespace {

int Run(int argc, char** argv) {
  CLI::App app{
      "llamaproctl: block expansion (LLaMA Pro) for LLaMA-family checkpoints in Hugging Face "
      "layout.\nSee docs/llamaproctl.md for every subcommand and flag."};
  app.set_version_flag("--version", std::string("llamaproctl ") + llamapro::kVersion);
  app.require_subcommand(1);
  llamapro::cli::AddSynthCommand(app);
  llamapro::cli::AddExpandCommand(app);
  llamapro::cli::AddInspectCommand(app);
  llamapro::cli::AddScoreCommand(app);
  llamapro::cli::AddTokenizerCommand(app);
  llamapro::cli::AddIngestCommand(app);
  llamapro::cli::AddCorporaCommand(app);
  llamapro::cli::AddSamplesCommand(app);
  llamapro::cli::AddTrainCommand(app);
  llamapro::cli::AddEvalCommand(app);
  llamapro::cli::AddGenerateCommand(app);
  llamapro::cli::AddJobCommands(app);
  llamapro::cli::AddClusterCommands(app);
  llamapro::cli::AddHealthCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const llamapro::cli::CommandError& e) {
    // The full command path, e.g. "llamaproctl tokenizer train".
    std::string name = "llamaproctl";
    for (const CLI::App* sub = &app; !sub->get_subcommands().empty();) {
      sub = sub->get_subcommands().front();
      name += " " + sub->get_name();
    }
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    // Exceptions from libraries (allocation failures, CLI11 internals) end
    // here instead of terminating without a message.
    std::fprintf(stderr, "llamaproctl: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "llamaproctl: internal error: unknown exception\n");
  }
  return 2;
}
