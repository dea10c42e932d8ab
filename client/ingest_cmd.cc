#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/units.h"
#include "client/commands.h"
#include "client/progress.h"
#include "data/ingest.h"

namespace llamapro::cli {
namespace {

struct IngestFlags {
  std::string store, corpus, tokenizer, text_field = "text", format = "auto", sft_format,
                                        chat_template = "llama2-chat";
  std::vector<std::string> inputs;
  double held_out = 0.005;
  bool split_lines = false, strict = false, quiet = false;
  int threads = 0;
};

void RunIngest(const IngestFlags& flags) {
  IngestOptions options;
  options.store_dir = flags.store;
  options.corpus = flags.corpus;
  options.tokenizer = flags.tokenizer;
  options.inputs = flags.inputs;
  auto format = ParseInputFormat(flags.format);
  ThrowIfError(format.status());
  options.input.format = *format;
  options.input.text_field = flags.text_field;
  options.input.split_lines = flags.split_lines;
  options.held_out = flags.held_out;
  options.strict = flags.strict;
  options.threads = flags.threads;
  if (!flags.sft_format.empty()) {
    auto sft = ParseSftFormat(flags.sft_format);
    ThrowIfError(sft.status());
    options.sft = *sft;
    auto chat_template = ParseChatTemplate(flags.chat_template);
    ThrowIfError(chat_template.status());
    options.chat_template = *chat_template;
  }
  ProgressBar bar("ingest", "files", !flags.quiet);
  auto report = Ingest(options, [&bar](const IngestProgress& p) {
    bar.Update(p.files_done, p.files_total, p.bytes_read, p.bytes_total, p.seconds,
               absl::StrCat(FormatCount(p.documents), " docs ", FormatCount(p.tokens), " tokens"));
  });
  bar.Finish();
  ThrowIfError(report.status());
  const double rate = report->seconds > 0 ? report->tokens / report->seconds : 0;
  std::printf("ingested into corpus '%s' of %s\n", flags.corpus.c_str(), flags.store.c_str());
  std::printf("  files       %lld ingested, %lld resumed, %lld already present (skipped)\n",
              static_cast<long long>(report->files_ingested),
              static_cast<long long>(report->files_resumed),
              static_cast<long long>(report->files_skipped));
  std::printf("  documents   %llu (%llu held out), %llu tokens, %s read\n",
              static_cast<unsigned long long>(report->documents),
              static_cast<unsigned long long>(report->held_out_documents),
              static_cast<unsigned long long>(report->tokens), FormatBytes(report->bytes).c_str());
  std::printf("  time        %.2f s (%.0f tokens/s)\n", report->seconds, rate);
  if (report->empty > 0) {
    std::printf("  empty       %llu records without text skipped\n",
                static_cast<unsigned long long>(report->empty));
  }
  if (report->malformed > 0) {
    std::fprintf(stderr, "ingest: %llu malformed records skipped (--strict makes them fatal):\n",
                 static_cast<unsigned long long>(report->malformed));
    for (const std::string& problem : report->problems) {
      std::fprintf(stderr, "  %s\n", problem.c_str());
    }
    if (report->malformed > report->problems.size()) {
      std::fprintf(stderr, "  ... and %llu more\n",
                   static_cast<unsigned long long>(report->malformed - report->problems.size()));
    }
  }
  for (const std::string& skipped : report->skipped) {
    std::printf("  skipped     %s (already ingested)\n", skipped.c_str());
  }
}

}  // namespace

void AddIngestCommand(CLI::App& app) {
  auto flags = std::make_shared<IngestFlags>();
  CLI::App* cmd = app.add_subcommand(
      "ingest",
      "Tokenize text/JSONL (optionally .gz/.zst) files into a corpus of a token store; "
      "idempotent and resumable.");
  cmd->add_option("--store", flags->store, "Token store directory (created if missing)")
      ->required();
  cmd->add_option("--corpus", flags->corpus, "Corpus name (created on first ingest)")->required();
  cmd->add_option("--tokenizer", flags->tokenizer,
                  "tokenizer.model, or a checkpoint directory holding one")
      ->required();
  cmd->add_option("inputs", flags->inputs, "Input files, ingested in this order")->required();
  cmd->add_option("--format", flags->format,
                  "Input format: auto (by extension: *.jsonl[.gz|.zst] is JSONL, else text)")
      ->check(CLI::IsMember({"auto", "txt", "jsonl"}))
      ->capture_default_str();
  cmd->add_option("--text-field", flags->text_field, "JSONL field holding the document text")
      ->capture_default_str();
  cmd->add_flag("--split-lines", flags->split_lines,
                "Text files: one document per non-empty line (default: one per file)");
  cmd->add_option("--held-out", flags->held_out,
                  "Fraction of documents held out for evaluation, chosen by document hash")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  cmd->add_flag("--strict", flags->strict, "Fail on the first malformed record");
  cmd->add_option("--sft-format", flags->sft_format,
                  "Ingest instruction data: sharegpt or alpaca JSONL (default: plain text)")
      ->check(CLI::IsMember({"sharegpt", "alpaca"}));
  cmd->add_option("--template", flags->chat_template, "Chat template for --sft-format")
      ->check(CLI::IsMember({"llama2-chat", "alpaca", "plain"}))
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Tokenizing threads (0: all cores)")
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", flags->quiet, "No progress output");
  cmd->callback([flags] { RunIngest(*flags); });
}

}  // namespace llamapro::cli
