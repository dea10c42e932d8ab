#include <cstdio>
#include <memory>
#include <string>

#include "base/units.h"
#include "client/commands.h"
#include "data/store.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct CorporaFlags {
  std::string store;
  bool json = false;
};

void RunCorpora(const CorporaFlags& flags) {
  auto store = TokenStore::Open(flags.store, TokenStore::Mode::kReadOnly);
  ThrowIfError(store.status());
  auto corpora = (*store)->ListCorpora();
  ThrowIfError(corpora.status());
  auto tokenizer = (*store)->Tokenizer();
  ThrowIfError(tokenizer.status());
  if (flags.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const CorpusInfo& c : *corpora) {
      nlohmann::ordered_json entry = {{"name", c.name},
                                      {"kind", c.kind == CorpusKind::kSft ? "sft" : "pretrain"},
                                      {"documents", c.documents},
                                      {"tokens", c.tokens},
                                      {"held_out_documents", c.held_out_documents},
                                      {"held_out_tokens", c.held_out_tokens},
                                      {"bytes", c.bytes}};
      if (c.kind == CorpusKind::kSft) {
        entry["sft_format"] = c.sft_format;
        entry["chat_template"] = c.chat_template;
      }
      out.push_back(std::move(entry));
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  if (*tokenizer) {
    std::printf("store %s, tokenizer %s (sha256 %.16s..., vocab %d)\n\n", flags.store.c_str(),
                (*tokenizer)->path.c_str(), (*tokenizer)->fingerprint.c_str(),
                (*tokenizer)->vocab_size);
  }
  std::printf("%-24s %-9s %12s %15s %15s %12s\n", "name", "kind", "documents", "tokens",
              "held_out_tokens", "bytes");
  for (const CorpusInfo& c : *corpora) {
    std::printf("%-24s %-9s %12llu %15llu %15llu %12s\n", c.name.c_str(),
                c.kind == CorpusKind::kSft ? "sft" : "pretrain",
                static_cast<unsigned long long>(c.documents),
                static_cast<unsigned long long>(c.tokens),
                static_cast<unsigned long long>(c.held_out_tokens), FormatBytes(c.bytes).c_str());
  }
  if (corpora->empty()) std::printf("(no corpora)\n");
}

}  // namespace

void AddCorporaCommand(CLI::App& app) {
  auto flags = std::make_shared<CorporaFlags>();
  CLI::App* cmd = app.add_subcommand("corpora", "List the corpora of a token store.");
  cmd->add_option("--store", flags->store, "Token store directory")->required();
  cmd->add_flag("--json", flags->json,
                "Print a JSON list (name, kind, documents, tokens, held_out_documents, "
                "held_out_tokens, bytes)");
  cmd->callback([flags] { RunCorpora(*flags); });
}

}  // namespace llamapro::cli
