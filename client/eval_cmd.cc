#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/progress.h"
#include "data/store.h"
#include "eval/choice.h"
#include "eval/code.h"
#include "eval/generate.h"
#include "eval/jsonl.h"
#include "eval/ppl.h"
#include "eval/results.h"
#include "eval/shift.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/llama_params.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"

namespace llamapro::cli {
namespace {

struct PplFlags {
  std::string model, store;
  std::vector<std::string> corpora;
  std::vector<std::string> files;
  std::string format = "auto", text_field = "text";
  bool split_lines = false;
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
  if (flags.corpora.empty() == flags.files.empty()) {
    throw CommandError("give --corpus (with --store) or --file, not both and not neither");
  }
  if (!flags.corpora.empty() && flags.store.empty()) {
    throw CommandError("--corpus needs --store (the token store holding the corpora)");
  }
  const PerplexityOptions options{.seq_len = flags.seq_len,
                                  .max_windows = flags.windows,
                                  .batch = flags.batch,
                                  .threads = flags.threads};
  std::unique_ptr<TokenStore> store;
  std::unique_ptr<StoreDataSource> data;
  std::unique_ptr<Tokenizer> tokenizer;
  InputOptions input;
  if (!flags.corpora.empty()) {
    auto opened = TokenStore::Open(flags.store, TokenStore::Mode::kReadOnly);
    ThrowIfError(opened.status());
    store = *std::move(opened);
    data = std::make_unique<StoreDataSource>(store.get());
  } else {
    auto loaded = Tokenizer::Load(flags.model);
    ThrowIfError(loaded.status());
    tokenizer = *std::move(loaded);
    auto format = ParseInputFormat(flags.format);
    ThrowIfError(format.status());
    input = {.format = *format, .text_field = flags.text_field, .split_lines = flags.split_lines};
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const std::string& corpus : flags.corpora.empty() ? flags.files : flags.corpora) {
    auto result = data != nullptr ? HeldOutPerplexity(&*params, *data, corpus, options)
                                  : FilePerplexity(&*params, *tokenizer, corpus, input, options);
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

// --- Shared by the evaluations below ---------------------------------------

struct ModelFlags {
  std::string model;
  std::string results;  // Empty: <model>/eval/<task>-<input stem>.json; "-": none.
  bool json = false;
  bool quiet = false;
  int threads = 0;
};

void AddModelFlags(CLI::App* cmd, ModelFlags* flags) {
  cmd->add_option("--model", flags->model,
                  "Checkpoint directory (or a training run's output_dir: its latest checkpoint)")
      ->required();
  cmd->add_option("--results", flags->results,
                  "Where to write the results JSON (default: MODEL/eval/TASK-INPUT.json; '-': "
                  "nowhere)");
  cmd->add_option("--threads", flags->threads, "Threads of the GEMMs (0: all cores)")
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "Print the results JSON on stdout instead of a summary");
  cmd->add_flag("--quiet", flags->quiet, "No progress on stderr");
}

void AddSamplingFlags(CLI::App* cmd, SamplingOptions* options) {
  cmd->add_option("--max-tokens", options->max_tokens, "Tokens to generate at most")
      ->capture_default_str();
  cmd->add_option("--temperature", options->temperature, "Sampling temperature; 0 decodes greedily")
      ->capture_default_str();
  cmd->add_option("--top-p", options->top_p,
                  "Nucleus sampling: the most likely tokens summing to this probability")
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "Seed of the sampler")->capture_default_str();
  cmd->add_option("--stop", options->stop, "Stop before this string (repeatable)");
}

InferenceModel LoadModel(const ModelFlags& flags, bool need_tokenizer) {
  cpu::SetNumThreads(flags.threads);
  auto dir = ResolveModelDir(flags.model);
  ThrowIfError(dir.status());
  auto model = LoadInferenceModel(*dir, need_tokenizer);
  ThrowIfError(model.status());
  return *std::move(model);
}

// Writes `results` where --results says (the default beside the checkpoint)
// and prints it with --json; returns the path written ("" for none).
std::string WriteResults(const ModelFlags& flags, const InferenceModel& model,
                         const std::string& task, const std::string& input,
                         const nlohmann::ordered_json& results) {
  std::string path = flags.results;
  if (path.empty()) path = DefaultResultsPath(model.dir, task, input);
  if (path != "-") ThrowIfError(WriteJsonFile(path, results));
  if (flags.json) std::printf("%s\n", results.dump(2).c_str());
  return path == "-" ? "" : path;
}

std::function<void(int64_t, int64_t)> Progress(ProgressBar* bar,
                                               std::chrono::steady_clock::time_point start) {
  return [bar, start](int64_t done, int64_t total) {
    bar->Update(done, total, 0, 0,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
}

// --- eval choice ---------------------------------------------------------------

struct ChoiceFlags {
  ModelFlags model;
  std::string tasks, fewshot;
  ChoiceOptions options;
};

void RunChoice(const ChoiceFlags& flags) {
  const InferenceModel model = LoadModel(flags.model, /*need_tokenizer=*/true);
  auto questions = ReadChoiceTask(flags.tasks);
  ThrowIfError(questions.status());
  std::vector<ChoiceQuestion> fewshot_file;
  const std::vector<ChoiceQuestion>* fewshot = &*questions;
  if (!flags.fewshot.empty()) {
    auto read = ReadChoiceTask(flags.fewshot);
    ThrowIfError(read.status());
    fewshot_file = *std::move(read);
    fewshot = &fewshot_file;
  }
  ProgressBar bar("choice", "questions", !flags.model.quiet);
  const auto start = std::chrono::steady_clock::now();
  auto result = EvaluateChoice(model, *questions, *fewshot, flags.options, Progress(&bar, start));
  bar.Finish();
  ThrowIfError(result.status());
  nlohmann::ordered_json out = {{"task", "choice"},
                                {"model", model.dir},
                                {"tasks", flags.tasks},
                                {"fewshot", flags.fewshot.empty() ? flags.tasks : flags.fewshot},
                                {"shots", flags.options.shots},
                                {"seed", flags.options.seed}};
  out.update(ToJson(*result));
  const std::string path = WriteResults(flags.model, model, "choice", flags.tasks, out);
  if (!flags.model.json) {
    std::printf("%lld questions, %d-shot: acc %.4f +- %.4f, acc_norm %.4f +- %.4f\n",
                static_cast<long long>(result->questions), flags.options.shots, result->acc,
                result->acc_stderr, result->acc_norm, result->acc_norm_stderr);
    if (!path.empty()) std::printf("results: %s\n", path.c_str());
  }
}

// --- eval generate ---------------------------------------------------------------

struct GenerateFlags {
  ModelFlags model;
  std::string prompts;
  SamplingOptions sampling;
};

void RunEvalGenerate(const GenerateFlags& flags) {
  const InferenceModel model = LoadModel(flags.model, /*need_tokenizer=*/true);
  auto prompts = ReadPrompts(flags.prompts);
  ThrowIfError(prompts.status());
  ProgressBar bar("generate", "prompts", !flags.model.quiet);
  const auto start = std::chrono::steady_clock::now();
  nlohmann::ordered_json outputs = nlohmann::ordered_json::array();
  int64_t tokens = 0;
  for (size_t i = 0; i < prompts->size(); ++i) {
    auto ids = PromptIds(*model.tokenizer, (*prompts)[i]);
    ThrowIfError(ids.status());
    auto generation = Generate(model, *ids, flags.sampling);
    ThrowIfError(generation.status());
    tokens += static_cast<int64_t>(generation->tokens.size());
    outputs.push_back({{"prompt", (*prompts)[i]},
                       {"completion", generation->text},
                       {"tokens", generation->tokens.size()},
                       {"finish_reason", generation->finish_reason}});
    Progress(&bar, start)(static_cast<int64_t>(i + 1), static_cast<int64_t>(prompts->size()));
  }
  bar.Finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::ordered_json out = {{"task", "generate"},
                                {"model", model.dir},
                                {"prompts", flags.prompts},
                                {"max_tokens", flags.sampling.max_tokens},
                                {"temperature", flags.sampling.temperature},
                                {"top_p", flags.sampling.top_p},
                                {"seed", flags.sampling.seed},
                                {"tokens_per_second", seconds > 0 ? tokens / seconds : 0},
                                {"outputs", outputs}};
  const std::string path = WriteResults(flags.model, model, "generate", flags.prompts, out);
  if (!flags.model.json) {
    std::printf("%zu prompts, %lld tokens generated (%.1f tokens/s)\n", prompts->size(),
                static_cast<long long>(tokens), seconds > 0 ? tokens / seconds : 0);
    if (!path.empty()) std::printf("results: %s\n", path.c_str());
  }
}

// --- eval shift ---------------------------------------------------------------

struct ShiftFlags {
  ModelFlags model;
  std::string base, prompts;
  ShiftOptions options;
};

void RunShift(const ShiftFlags& flags) {
  const InferenceModel tuned = LoadModel(flags.model, /*need_tokenizer=*/true);
  ModelFlags base_flags = flags.model;
  base_flags.model = flags.base;
  const InferenceModel base = LoadModel(base_flags, /*need_tokenizer=*/false);
  auto prompts = ReadPrompts(flags.prompts);
  ThrowIfError(prompts.status());
  ProgressBar bar("shift", "prompts", !flags.model.quiet);
  auto result = TokenShift(tuned, base, *prompts, flags.options,
                           Progress(&bar, std::chrono::steady_clock::now()));
  bar.Finish();
  ThrowIfError(result.status());
  nlohmann::ordered_json out = {{"task", "shift"},
                                {"model", tuned.dir},
                                {"base", base.dir},
                                {"prompts", flags.prompts},
                                {"max_tokens", flags.options.max_tokens}};
  out.update(ToJson(*result));
  const std::string path = WriteResults(flags.model, tuned, "shift", flags.prompts, out);
  if (!flags.model.json) {
    std::printf(
        "%lld positions of %lld prompts: unshifted %.1f %%, marginal %.1f %%, shifted "
        "%.1f %%\n",
        static_cast<long long>(result->positions), static_cast<long long>(result->prompts),
        100 * result->unshifted_fraction, 100 * result->marginal_fraction,
        100 * result->shifted_fraction);
    if (!path.empty()) std::printf("results: %s\n", path.c_str());
  }
}

// --- eval code ---------------------------------------------------------------

struct CodeFlags {
  ModelFlags model;
  std::string tasks;
  CodeOptions options;
  double memory_mb = 512;
};

void RunCode(CodeFlags flags) {
  const InferenceModel model = LoadModel(flags.model, /*need_tokenizer=*/true);
  auto tasks = ReadCodeTasks(flags.tasks);
  ThrowIfError(tasks.status());
  flags.options.limits.memory_bytes = static_cast<int64_t>(flags.memory_mb * (1 << 20));
  flags.options.limits.cpu_seconds = flags.options.limits.wall_seconds;
  ProgressBar bar("code", "tasks", !flags.model.quiet);
  auto result =
      EvaluateCode(model, *tasks, flags.options, Progress(&bar, std::chrono::steady_clock::now()));
  bar.Finish();
  ThrowIfError(result.status());
  nlohmann::ordered_json out = {{"task", "code"},
                                {"model", model.dir},
                                {"tasks", flags.tasks},
                                {"samples", flags.options.samples},
                                {"temperature", flags.options.sampling.temperature}};
  out.update(ToJson(*result));
  const std::string path = WriteResults(flags.model, model, "code", flags.tasks, out);
  if (!flags.model.json) {
    std::printf("%lld tasks, %d sample(s) each: pass@1 %.4f\n",
                static_cast<long long>(result->tasks), flags.options.samples, result->pass_at_1);
    if (!path.empty()) std::printf("results: %s\n", path.c_str());
  }
}

// --- generate ---------------------------------------------------------------

struct StreamFlags {
  ModelFlags model;
  std::string prompt;
  SamplingOptions sampling;
  bool no_cache = false;
};

void RunStream(StreamFlags flags) {
  const InferenceModel model = LoadModel(flags.model, /*need_tokenizer=*/true);
  auto ids = PromptIds(*model.tokenizer, flags.prompt);
  ThrowIfError(ids.status());
  flags.sampling.use_cache = !flags.no_cache;
  auto generation = Generate(model, *ids, flags.sampling, [](absl::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  ThrowIfError(generation.status());
  std::printf("\n");
  if (!flags.model.quiet) {
    std::fprintf(stderr, "[%zu tokens after a %lld-token prompt in %.2f s (%.1f tokens/s); %s]\n",
                 generation->tokens.size(), static_cast<long long>(generation->prompt_tokens),
                 generation->seconds,
                 generation->seconds > 0 ? generation->tokens.size() / generation->seconds : 0,
                 generation->finish_reason.c_str());
  }
}

}  // namespace

void AddGenerateCommand(CLI::App& app) {
  auto flags = std::make_shared<StreamFlags>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate text after a prompt, streaming it to stdout (KV-cached decoding).");
  cmd->add_option("--model", flags->model.model,
                  "Checkpoint directory (or a training run's output_dir)")
      ->required();
  cmd->add_option("--prompt", flags->prompt, "The prompt text")->required();
  AddSamplingFlags(cmd, &flags->sampling);
  cmd->add_option("--threads", flags->model.threads, "Threads of the GEMMs (0: all cores)")
      ->capture_default_str();
  cmd->add_flag("--no-cache", flags->no_cache,
                "Recompute the whole sequence for every token (slow; for checking the cache)");
  cmd->add_flag("--quiet", flags->model.quiet, "No statistics line on stderr");
  cmd->callback([flags] { RunStream(*flags); });
}

void AddEvalCommand(CLI::App& app) {
  CLI::App* eval = app.add_subcommand("eval", "Evaluate a checkpoint.");
  eval->require_subcommand(1);
  auto flags = std::make_shared<PplFlags>();
  CLI::App* ppl = eval->add_subcommand(
      "ppl",
      "Perplexity on the held-out split of token-store corpora (forgetting monitor), or on text "
      "/ JSON-lines files.");
  ppl->add_option("--model", flags->model, "Checkpoint directory")->required();
  ppl->add_option("--store", flags->store, "Token store directory (with --corpus)");
  ppl->add_option("--corpus", flags->corpora, "Corpus names (repeat, or several after one flag)")
      ->expected(1, -1);
  ppl->add_option("--file", flags->files,
                  "Text or JSON-lines files instead (.gz/.zst too), tokenized with the model's "
                  "tokenizer")
      ->expected(1, -1);
  ppl->add_option("--format", flags->format, "--file format: auto, txt or jsonl")
      ->capture_default_str();
  ppl->add_option("--text-field", flags->text_field, "JSON-lines field holding a document")
      ->capture_default_str();
  ppl->add_flag("--split-lines", flags->split_lines,
                "Text files: one document per non-empty line (default: the whole file)");
  ppl->add_option("--seq-len", flags->seq_len, "Window length (a window has seq_len+1 tokens)")
      ->capture_default_str();
  ppl->add_option("--windows", flags->windows, "At most this many windows per corpus (0: all)")
      ->capture_default_str();
  ppl->add_option("--batch", flags->batch, "Windows per forward pass")->capture_default_str();
  ppl->add_option("--threads", flags->threads, "Threads (0: all cores)")->capture_default_str();
  ppl->add_flag("--json", flags->json, "Print a JSON list");
  ppl->callback([flags] { RunPpl(*flags); });

  {
    auto f = std::make_shared<ChoiceFlags>();
    CLI::App* cmd = eval->add_subcommand(
        "choice",
        "Multiple-choice log-likelihood task (ARC, HellaSwag, MMLU, ... exported as JSON lines): "
        "acc and acc_norm with standard errors.");
    AddModelFlags(cmd, &f->model);
    cmd->add_option("--tasks", f->tasks,
                    "JSON lines {\"context\", \"choices\": [...], \"gold\": index}")
        ->required();
    cmd->add_option(
        "--fewshot", f->fewshot,
        "Where k-shot examples come from (default: --tasks, never the question itself)");
    cmd->add_option("--shots", f->options.shots, "Examples prepended to each question (k)")
        ->capture_default_str();
    cmd->add_option("--seed", f->options.seed, "Seed of the example draw")->capture_default_str();
    cmd->add_option("--delimiter", f->options.delimiter, "Between a context and a choice")
        ->capture_default_str();
    cmd->add_option("--description", f->options.description, "Text before every prompt");
    cmd->add_option("--limit", f->options.limit, "Only the first N questions (0: all)")
        ->capture_default_str();
    cmd->callback([f] { RunChoice(*f); });
  }
  {
    auto f = std::make_shared<GenerateFlags>();
    CLI::App* cmd = eval->add_subcommand(
        "generate", "Generate a completion for every prompt of a JSON-lines file {\"prompt\"}.");
    AddModelFlags(cmd, &f->model);
    cmd->add_option("--prompts", f->prompts, "JSON lines {\"prompt\": text}")->required();
    AddSamplingFlags(cmd, &f->sampling);
    cmd->callback([f] { RunEvalGenerate(*f); });
  }
  {
    auto f = std::make_shared<CodeFlags>();
    CLI::App* cmd = eval->add_subcommand(
        "code",
        "HumanEval/MBPP pass@1: complete each task, run it against its tests in the Python "
        "sandbox (docs/sandbox.md).");
    AddModelFlags(cmd, &f->model);
    cmd->add_option("--tasks", f->tasks, "JSON lines in HumanEval or MBPP format")->required();
    AddSamplingFlags(cmd, &f->options.sampling);
    cmd->add_option("--samples", f->options.samples,
                    "Completions per task (> 1 needs --temperature > 0)")
        ->capture_default_str();
    cmd->add_option("--timeout", f->options.limits.wall_seconds,
                    "Seconds each program may run (wall clock, and CPU)")
        ->capture_default_str();
    cmd->add_option("--memory-mb", f->memory_mb, "Address space of each program (MiB)")
        ->capture_default_str();
    cmd->add_option("--python", f->options.python, "The interpreter the sandbox runs")
        ->capture_default_str();
    cmd->add_option("--limit", f->options.limit, "Only the first N tasks (0: all)")
        ->capture_default_str();
    cmd->callback([f] { RunCode(*f); });
  }
  {
    auto f = std::make_shared<ShiftFlags>();
    CLI::App* cmd = eval->add_subcommand(
        "shift",
        "Token-distribution shift (the paper's appendix G): decode greedily with --model, rank "
        "each token under --base; unshifted (rank 1), marginal (2-3), shifted (>3).");
    AddModelFlags(cmd, &f->model);
    cmd->add_option("--base", f->base, "The base model the tuned one is compared with")->required();
    cmd->add_option("--prompts", f->prompts, "JSON lines {\"prompt\": text}")->required();
    cmd->add_option("--max-tokens", f->options.max_tokens, "Tokens decoded per prompt")
        ->capture_default_str();
    cmd->add_option("--limit", f->options.limit, "Only the first N prompts (0: all)")
        ->capture_default_str();
    cmd->callback([f] { RunShift(*f); });
  }
}

}  // namespace llamapro::cli
