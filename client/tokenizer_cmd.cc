#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "base/file.h"
#include "client/commands.h"
#include "data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct TokenizerFlags {
  // train
  std::vector<std::string> inputs;
  int32_t vocab_size = 0;
  std::string out;
  int threads = 0;
  int64_t model_max_length = 4096;
  bool force = false, verbose = false;
  // encode / decode / info
  std::string tokenizer, text, file;
  std::vector<int32_t> ids;
  bool specials = false, json = false;
};

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path) {
  auto tokenizer = Tokenizer::Load(path);
  ThrowIfError(tokenizer.status());
  return std::move(*tokenizer);
}

void RunTrain(const TokenizerFlags& flags) {
  TokenizerTrainOptions options;
  options.inputs = flags.inputs;
  options.vocab_size = flags.vocab_size;
  options.out_dir = flags.out;
  options.force = flags.force;
  options.threads = flags.threads;
  options.model_max_length = flags.model_max_length;
  options.verbose = flags.verbose;
  ThrowIfError(TrainTokenizer(options));
  auto tokenizer = LoadTokenizer(flags.out);
  const TokenizerInfo& info = tokenizer->info();
  std::printf("trained %s (BPE, byte fallback, %d pieces) on %s\n", flags.out.c_str(),
              info.vocab_size, absl::StrJoin(flags.inputs, ", ").c_str());
  std::printf(
      "  files        tokenizer.model, tokenizer.vocab, tokenizer_config.json, "
      "special_tokens_map.json\n");
  std::printf("  fingerprint  %s\n", info.fingerprint.c_str());
}

void RunEncode(const TokenizerFlags& flags) {
  auto tokenizer = LoadTokenizer(flags.tokenizer);
  std::string text;
  if (!flags.file.empty()) {
    auto contents = ReadFile(flags.file);
    ThrowIfError(contents.status());
    text = std::move(*contents);
  } else if (!flags.text.empty()) {
    text = flags.text;
  } else {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::vector<int32_t> ids;
  ThrowIfError(flags.specials ? tokenizer->EncodeDocument(text, &ids)
                              : tokenizer->Encode(text, &ids));
  if (flags.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tokenizer->IdToPiece(id));
    nlohmann::json out = {{"ids", ids}, {"pieces", pieces}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(ids, " ").c_str());
  }
}

void RunDecode(const TokenizerFlags& flags) {
  auto tokenizer = LoadTokenizer(flags.tokenizer);
  auto text = tokenizer->Decode(flags.ids);
  ThrowIfError(text.status());
  std::fwrite(text->data(), 1, text->size(), stdout);
  std::fputc('\n', stdout);
}

void RunInfo(const TokenizerFlags& flags) {
  auto tokenizer = LoadTokenizer(flags.tokenizer);
  const TokenizerInfo& info = tokenizer->info();
  auto special = [&](int32_t id) -> nlohmann::json {
    if (id < 0) return nullptr;
    return {{"id", id}, {"piece", tokenizer->IdToPiece(id)}};
  };
  if (flags.json) {
    nlohmann::ordered_json out = {
        {"path", info.path},
        {"fingerprint", info.fingerprint},
        {"vocab_size", info.vocab_size},
        {"bos", special(info.bos_id)},
        {"eos", special(info.eos_id)},
        {"pad", special(info.pad_id)},
        {"unk", special(info.unk_id)},
        {"add_bos", info.add_bos},
        {"add_eos", info.add_eos},
    };
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  auto describe = [&](int32_t id) {
    return id < 0 ? std::string("none") : std::to_string(id) + " " + tokenizer->IdToPiece(id);
  };
  std::printf("tokenizer    %s\n", info.path.c_str());
  std::printf("fingerprint  %s\n", info.fingerprint.c_str());
  std::printf("vocab size   %d\n", info.vocab_size);
  std::printf("bos          %s\n", describe(info.bos_id).c_str());
  std::printf("eos          %s\n", describe(info.eos_id).c_str());
  std::printf("pad          %s\n", describe(info.pad_id).c_str());
  std::printf("unk          %s\n", describe(info.unk_id).c_str());
  std::printf("documents    %s<text>%s\n", info.add_bos ? "BOS " : "", info.add_eos ? " EOS" : "");
}

}  // namespace

void AddTokenizerCommand(CLI::App& app) {
  auto flags = std::make_shared<TokenizerFlags>();
  CLI::App* cmd = app.add_subcommand(
      "tokenizer", "Train, inspect and run SentencePiece tokenizers (tokenizer.model)");
  cmd->require_subcommand(1);

  CLI::App* train = cmd->add_subcommand(
      "train",
      "Train a LLaMA-style BPE tokenizer (byte fallback, digits split, whitespace kept) that "
      "transformers' LlamaTokenizer loads");
  train->add_option("--input", flags->inputs, "Plain-text training files, one sentence per line")
      ->required()
      ->expected(1, -1);
  train
      ->add_option("--vocab-size", flags->vocab_size,
                   "Vocabulary size (pieces, including <unk>, <s>, </s> and the 256 byte "
                   "pieces; so more than 259)")
      ->required();
  train->add_option("--out", flags->out, "Output directory (must not exist unless --force)")
      ->required();
  train->add_option("--threads", flags->threads, "Training threads (0: all cores)")
      ->capture_default_str();
  train
      ->add_option("--model-max-length", flags->model_max_length,
                   "model_max_length written to tokenizer_config.json")
      ->capture_default_str();
  train->add_flag("--force", flags->force, "Replace an existing output directory");
  train->add_flag("--verbose,-v", flags->verbose, "Show SentencePiece's training log");
  train->callback([flags] { RunTrain(*flags); });

  CLI::App* encode = cmd->add_subcommand("encode", "Print the token ids of a text");
  encode
      ->add_option("--tokenizer", flags->tokenizer,
                   "tokenizer.model, or a directory holding one (a checkpoint)")
      ->required();
  CLI::Option* text = encode->add_option("--text", flags->text, "Text to encode");
  CLI::Option* file =
      encode->add_option("--file", flags->file, "Encode this file's whole contents as one text");
  text->excludes(file);
  encode->add_flag("--specials", flags->specials,
                   "Add BOS/EOS as the model does for a document (tokenizer_config.json's "
                   "add_bos_token/add_eos_token)");
  encode->add_flag("--json", flags->json, "Print {\"ids\": [...], \"pieces\": [...]}");
  encode->footer("Without --text or --file, standard input is encoded.");
  encode->callback([flags] { RunEncode(*flags); });

  CLI::App* decode = cmd->add_subcommand("decode", "Print the text of token ids");
  decode
      ->add_option("--tokenizer", flags->tokenizer,
                   "tokenizer.model, or a directory holding one (a checkpoint)")
      ->required();
  decode->add_option("--ids", flags->ids, "Token ids, comma- or space-separated")
      ->required()
      ->delimiter(',');
  decode->callback([flags] { RunDecode(*flags); });

  CLI::App* info = cmd->add_subcommand(
      "info", "Show vocabulary size, special ids, BOS/EOS conventions and fingerprint");
  info->add_option("--tokenizer", flags->tokenizer,
                   "tokenizer.model, or a directory holding one (a checkpoint)")
      ->required();
  info->add_flag("--json", flags->json, "Print JSON");
  info->callback([flags] { RunInfo(*flags); });
}

}  // namespace llamapro::cli
