#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "client/commands.h"
#include "data/store.h"
#include "eval/ppl.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/llama_params.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct PplFlags {
  std::string model, store;
  std::vector<std::string> corpora;
  int64_t seq_len = 2048, windows = 0, batch = 4;
  int threads = 0;
  bool json = false;
};

void RunPpl(const PplFlags& flags) {
  auto config = LoadLlamaConfig(flags.model);
  ThrowIfError(config.status());
  auto reader = CheckpointReader::Open(flags.model);
  ThrowIfError(reader.status());
  auto params = LoadLlamaParams(**reader, *config);
  ThrowIfError(params.status());
  auto store = TokenStore::Open(flags.store, TokenStore::Mode::kReadOnly);
  ThrowIfError(store.status());
  StoreDataSource data(store->get());
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const std::string& corpus : flags.corpora) {
    auto result = HeldOutPerplexity(
        &*params, data, corpus,
        {.seq_len = flags.seq_len, .max_windows = flags.windows, .batch = flags.batch});
    ThrowIfError(result.status());
    if (flags.json) {
      out.push_back({{"corpus", corpus},
                     {"perplexity", result->perplexity},
                     {"nll", result->nll},
                     {"tokens", result->targets},
                     {"windows", result->windows}});
    } else {
      std::printf("%-20s perplexity %10.4f  nll %.4f  (%lld tokens in %lld windows of %lld)\n",
                  corpus.c_str(), result->perplexity, result->nll,
                  static_cast<long long>(result->targets), static_cast<long long>(result->windows),
                  static_cast<long long>(flags.seq_len) + 1);
    }
  }
  if (flags.json) std::printf("%s\n", out.dump(2).c_str());
}

}  // namespace

void AddEvalCommand(CLI::App& app) {
  CLI::App* eval = app.add_subcommand("eval", "Evaluate a checkpoint.");
  eval->require_subcommand(1);
  auto flags = std::make_shared<PplFlags>();
  CLI::App* ppl = eval->add_subcommand(
      "ppl", "Perplexity on the held-out split of token-store corpora (forgetting monitor).");
  ppl->add_option("--model", flags->model, "Checkpoint directory")->required();
  ppl->add_option("--store", flags->store, "Token store directory")->required();
  ppl->add_option("--corpus", flags->corpora, "Corpus names (repeat, or several after one flag)")
      ->required()
      ->expected(1, -1);
  ppl->add_option("--seq-len", flags->seq_len, "Window length (a window has seq_len+1 tokens)")
      ->capture_default_str();
  ppl->add_option("--windows", flags->windows, "At most this many windows per corpus (0: all)")
      ->capture_default_str();
  ppl->add_option("--batch", flags->batch, "Windows per forward pass")->capture_default_str();
  ppl->add_option("--threads", flags->threads, "Threads (0: all cores)")->capture_default_str();
  ppl->add_flag("--json", flags->json, "Print a JSON list");
  ppl->callback([flags] { RunPpl(*flags); });
}

}  // namespace llamapro::cli
