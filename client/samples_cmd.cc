#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct SamplesFlags {
  std::string store, mixture, tokenizer;
  int64_t seq_len = 2048, start = 0, count = 4, rank = 0, world_size = 1;
  uint64_t seed = 0;
  bool json = false, held_out = false;
};

void RunSamples(const SamplesFlags& flags) {
  auto store = TokenStore::Open(flags.store, TokenStore::Mode::kReadOnly);
  ThrowIfError(store.status());
  std::unique_ptr<Tokenizer> tokenizer;
  if (!flags.tokenizer.empty()) {
    auto loaded = Tokenizer::Load(flags.tokenizer);
    ThrowIfError(loaded.status());
    tokenizer = std::move(*loaded);
  }
  auto mixture = ParseMixture(flags.mixture);
  ThrowIfError(mixture.status());
  std::vector<Sample> samples;
  std::vector<std::string> names;
  for (const MixtureComponent& c : *mixture) names.push_back(c.corpus);
  if (flags.held_out) {
    if (mixture->size() != 1) throw CommandError("--held-out reads one corpus: give one name");
    auto reader = HeldOutReader::Create(store->get(), mixture->front().corpus, flags.seq_len);
    ThrowIfError(reader.status());
    for (int64_t i = flags.start; i < flags.start + flags.count && i < (*reader)->size(); ++i) {
      auto sample = (*reader)->Get(i);
      ThrowIfError(sample.status());
      samples.push_back(std::move(*sample));
    }
  } else {
    SamplerOptions options{.mixture = *mixture,
                           .seq_len = flags.seq_len,
                           .seed = flags.seed,
                           .rank = flags.rank,
                           .world_size = flags.world_size,
                           .start = flags.start};
    auto sampler = Sampler::Create(store->get(), options);
    ThrowIfError(sampler.status());
    for (int64_t i = 0; i < flags.count; ++i) {
      auto sample = (*sampler)->Next();
      ThrowIfError(sample.status());
      samples.push_back(std::move(*sample));
    }
  }
  for (const Sample& s : samples) {
    std::string text;
    if (tokenizer) {
      auto decoded = tokenizer->Decode(s.tokens);
      ThrowIfError(decoded.status());
      text = *decoded;
    }
    int64_t targets = 0;
    for (size_t t = 1; t < s.loss_mask.size(); ++t) targets += s.loss_mask[t];
    if (flags.json) {
      nlohmann::ordered_json j = {{"index", s.index},   {"corpus", names[s.component]},
                                  {"window", s.window}, {"epoch", s.epoch},
                                  {"tokens", s.tokens}, {"loss_mask", s.loss_mask}};
      if (tokenizer) j["text"] = text;
      std::printf("%s\n", j.dump().c_str());
      continue;
    }
    std::printf("sample %lld: corpus %s, window %lld, epoch %lld, %zu tokens, %lld targets\n",
                static_cast<long long>(s.index), names[s.component].c_str(),
                static_cast<long long>(s.window), static_cast<long long>(s.epoch), s.tokens.size(),
                static_cast<long long>(targets));
    if (tokenizer) {
      std::printf("  %s\n", text.c_str());
    } else {
      std::vector<int32_t> head(s.tokens.begin(),
                                s.tokens.begin() + std::min<size_t>(16, s.tokens.size()));
      std::printf("  tokens %s%s\n", absl::StrJoin(head, " ").c_str(),
                  s.tokens.size() > head.size() ? " ..." : "");
    }
  }
}

}  // namespace

void AddSamplesCommand(CLI::App& app) {
  auto flags = std::make_shared<SamplesFlags>();
  CLI::App* cmd = app.add_subcommand(
      "samples", "Print training samples exactly as a job with these settings would read them.");
  cmd->add_option("--store", flags->store, "Token store directory")->required();
  cmd->add_option("--mixture", flags->mixture,
                  "Corpora and weights: name[:weight],... (e.g. code:0.7,math:0.3)")
      ->required();
  cmd->add_option("--seq-len", flags->seq_len, "Sequence length (a sample has seq_len+1 tokens)")
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--start", flags->start, "First global sample index")->capture_default_str();
  cmd->add_option("--count", flags->count, "Samples to print")->capture_default_str();
  cmd->add_option("--rank", flags->rank, "Data-parallel rank of this reader")
      ->capture_default_str();
  cmd->add_option("--world-size", flags->world_size, "Data-parallel readers")
      ->capture_default_str();
  cmd->add_option("--tokenizer", flags->tokenizer, "Decode samples with this tokenizer");
  cmd->add_flag("--held-out", flags->held_out,
                "Read the held-out windows of one corpus (in order) instead");
  cmd->add_flag("--json", flags->json, "One JSON object per sample");
  cmd->callback([flags] { RunSamples(*flags); });
}

}  // namespace llamapro::cli
