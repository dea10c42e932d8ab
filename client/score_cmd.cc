#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/llama.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct ScoreFlags {
  std::string model;
  std::vector<int64_t> tokens;
  bool json = false;
};

void RunScore(const ScoreFlags& flags) {
  if (flags.tokens.size() < 2) {
    throw CommandError("--tokens needs at least two token ids (the first is context only)");
  }
  auto config = LoadLlamaConfig(flags.model);
  ThrowIfError(config.status());
  std::vector<int32_t> tokens;
  for (int64_t t : flags.tokens) {
    if (t < 0 || t >= config->vocab_size) {
      throw CommandError(
          absl::StrCat("token id ", t, " is outside the vocabulary [0, ", config->vocab_size, ")"));
    }
    tokens.push_back(static_cast<int32_t>(t));
  }
  auto reader = CheckpointReader::Open(flags.model);
  ThrowIfError(reader.status());
  const auto seq_len = static_cast<int64_t>(tokens.size());
  auto logits = StreamingLogits(**reader, *config, tokens, 1, seq_len);
  ThrowIfError(logits.status());
  const int64_t vocab = config->vocab_size;
  cpu::LogSoftmax(logits->data(), seq_len, vocab);
  std::vector<double> logprobs;
  double nll = 0;
  for (int64_t t = 0; t + 1 < seq_len; ++t) {
    const double lp = (*logits)[t * vocab + tokens[t + 1]];
    logprobs.push_back(lp);
    nll -= lp;
  }
  nll /= static_cast<double>(logprobs.size());
  if (flags.json) {
    nlohmann::ordered_json out;
    out["tokens"] = flags.tokens;
    out["logprobs"] = logprobs;
    out["nll"] = nll;
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("%8s  %8s  %12s\n", "position", "token", "logprob");
  for (size_t i = 0; i < logprobs.size(); ++i) {
    std::printf("%8zu  %8d  %12.6f\n", i + 1, tokens[i + 1], logprobs[i]);
  }
  std::printf("mean NLL %.6f nats/token, perplexity %.4f over %zu predictions\n", nll,
              std::exp(nll), logprobs.size());
}

}  // namespace

void AddScoreCommand(CLI::App& app) {
  auto flags = std::make_shared<ScoreFlags>();
  CLI::App* cmd = app.add_subcommand(
      "score",
      "Log-probability of each next token of a sequence under a checkpoint, and the mean NLL.");
  cmd->add_option("--model", flags->model, "Checkpoint directory")->required();
  cmd->add_option("--tokens", flags->tokens, "Token ids, comma-separated (e.g. 1,5,9)")
      ->required()
      ->delimiter(',');
  cmd->add_flag("--json", flags->json,
                "Print {\"tokens\": [...], \"logprobs\": [...], \"nll\": x}");
  cmd->callback([flags] { RunScore(*flags); });
}

}  // namespace llamapro::cli
