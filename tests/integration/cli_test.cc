// llamaproctl end to end: the binary is run as a user would run it.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ScratchDir;

struct CliRun {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

CliRun Llamaproctl(const ScratchDir& dir, const std::string& args) {
  const std::string err_file = dir.Join("stderr.txt");
  const std::string command =
      std::string(LLAMAPROCTL_PATH) + " " + args + " 2>" + err_file + " </dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  CliRun run{-1, "", ""};
  if (pipe == nullptr) return run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) run.out.append(buffer, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.err = testing::ReadBytes(err_file);
  return run;
}

TEST(CliTest, SynthExpandVerifyInspectRoundTrip) {
  ScratchDir dir;
  CliRun synth = Llamaproctl(dir, "synth --out " + dir.Join("base") + " --layers 4 --quiet");
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  CliRun expand = Llamaproctl(dir, "expand --model " + dir.Join("base") + " --out " +
                                       dir.Join("pro") + " --add-blocks 2 --verify");
  ASSERT_EQ(expand.exit_code, 0) << expand.err;
  EXPECT_THAT(expand.out, HasSubstr("new blocks  2, 5"));
  EXPECT_THAT(expand.out, HasSubstr("logits bit-identical"));
  EXPECT_THAT(expand.err, HasSubstr("expand: 100%")) << "progress is reported";

  CliRun inspect = Llamaproctl(dir, "inspect --model " + dir.Join("pro") + " --json");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  auto json = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(json["config"]["num_hidden_layers"], 6);
  EXPECT_EQ(json["expansion"]["new_blocks"], nlohmann::json({2, 5}));
  EXPECT_EQ(json["expansion"]["lineage"].size(), 1u);
  EXPECT_EQ(json["parameters"]["blocks"].size(), 6u);

  CliRun table = Llamaproctl(dir, "inspect --model " + dir.Join("pro"));
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("new, stage 1 (trained in post-pretraining)"));
}

TEST(CliTest, ScoreIsIdenticalBeforeAndAfterExpansion) {
  ScratchDir dir;
  ASSERT_EQ(Llamaproctl(dir, "synth --out " + dir.Join("a") + " -q").exit_code, 0);
  ASSERT_EQ(Llamaproctl(dir, "expand -q --model " + dir.Join("a") + " --out " + dir.Join("b") +
                                 " --layout top --add-blocks 3")
                .exit_code,
            0);
  CliRun a = Llamaproctl(dir, "score --model " + dir.Join("a") + " --tokens 1,5,9,200,7 --json");
  CliRun b = Llamaproctl(dir, "score --model " + dir.Join("b") + " --tokens 1,5,9,200,7 --json");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  auto json = nlohmann::json::parse(a.out);
  EXPECT_EQ(json["tokens"], nlohmann::json({1, 5, 9, 200, 7}));
  ASSERT_EQ(json["logprobs"].size(), 4u);
  double nll = 0;
  for (const auto& lp : json["logprobs"]) {
    EXPECT_LT(lp.get<double>(), 0.0);
    nll -= lp.get<double>() / 4;
  }
  EXPECT_NEAR(json["nll"].get<double>(), nll, 1e-9);
}

TEST(CliTest, ErrorsAreClearAndExitNonZero) {
  ScratchDir dir;
  ASSERT_EQ(Llamaproctl(dir, "synth -q --out " + dir.Join("m") + " --layers 6").exit_code, 0);
  CliRun uneven = Llamaproctl(
      dir, "expand --model " + dir.Join("m") + " --out " + dir.Join("x") + " --add-blocks 4");
  EXPECT_EQ(uneven.exit_code, 1);
  EXPECT_THAT(uneven.err, HasSubstr("llamaproctl expand: error: cannot split 6 blocks into 4 "
                                    "equal groups; valid group counts (--add-blocks) for 6 "
                                    "blocks: 1, 2, 3, 6"));
  CliRun exists = Llamaproctl(dir, "synth -q --out " + dir.Join("m"));
  EXPECT_EQ(exists.exit_code, 1);
  EXPECT_THAT(exists.err, HasSubstr("already exists (use --force to replace it)"));
  CliRun missing = Llamaproctl(dir, "inspect --model " + dir.Join("nope"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope/config.json"));
  CliRun bad_token = Llamaproctl(dir, "score --model " + dir.Join("m") + " --tokens 1,99999");
  EXPECT_EQ(bad_token.exit_code, 1);
  EXPECT_THAT(bad_token.err, HasSubstr("token id 99999 is outside the vocabulary [0, 512)"));
  CliRun usage = Llamaproctl(dir, "expand --out x");
  EXPECT_NE(usage.exit_code, 0);
  EXPECT_THAT(usage.err, HasSubstr("--model is required"));
  EXPECT_THAT(dir.Entries(), ElementsAre("m", "stderr.txt"));
}

TEST(CliTest, TokenizerIngestCorporaAndSamplesWorkTogether) {
  ScratchDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "document " + std::to_string(i) + " says the quick brown fox jumps over " +
            std::to_string(i * 7) + " lazy dogs\n";
  }
  testing::WriteBytes(dir.Join("corpus.txt"), text);
  CliRun train = Llamaproctl(dir, "tokenizer train --input " + dir.Join("corpus.txt") +
                                      " --vocab-size 300 --out " + dir.Join("tok"));
  ASSERT_EQ(train.exit_code, 0) << train.err;
  CliRun ingest = Llamaproctl(dir, "ingest --store " + dir.Join("store") +
                                       " --corpus web --split-lines --tokenizer " +
                                       dir.Join("tok") + " " + dir.Join("corpus.txt"));
  ASSERT_EQ(ingest.exit_code, 0) << ingest.err;
  EXPECT_THAT(ingest.out, HasSubstr("documents   400"));
  EXPECT_THAT(ingest.err, HasSubstr("ingest: 100%")) << "progress is reported";
  CliRun again = Llamaproctl(dir, "ingest -q --store " + dir.Join("store") +
                                      " --corpus web --split-lines --tokenizer " + dir.Join("tok") +
                                      " " + dir.Join("corpus.txt"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("1 already present (skipped)"));

  CliRun corpora = Llamaproctl(dir, "corpora --json --store " + dir.Join("store"));
  ASSERT_EQ(corpora.exit_code, 0) << corpora.err;
  auto list = nlohmann::json::parse(corpora.out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["name"], "web");
  EXPECT_EQ(list[0]["documents"], 400);
  EXPECT_GT(list[0]["tokens"].get<int>(), 400 * 10);

  CliRun samples = Llamaproctl(dir, "samples --json --store " + dir.Join("store") +
                                        " --mixture web --seq-len 16 --count 3 --start 5 "
                                        "--tokenizer " +
                                        dir.Join("tok"));
  ASSERT_EQ(samples.exit_code, 0) << samples.err;
  auto first = nlohmann::json::parse(samples.out.substr(0, samples.out.find('\n')));
  EXPECT_EQ(first["index"], 5);
  EXPECT_EQ(first["tokens"].size(), 17u);
  EXPECT_THAT(first["text"].get<std::string>(),
              ::testing::ContainsRegex("document|quick|brown|fox|jumps|over|lazy|dogs|says"));

  CliRun mismatch =
      Llamaproctl(dir, "ingest --store " + dir.Join("store") + " --corpus web --tokenizer " +
                           dir.Join("nope.model") + " " + dir.Join("corpus.txt"));
  EXPECT_EQ(mismatch.exit_code, 1);
  EXPECT_THAT(mismatch.err, HasSubstr("nope.model"));
}

TEST(CliTest, TrainResumeAndEvalWorkTogether) {
  ScratchDir dir;
  std::string text;
  for (int i = 0; i < 600; ++i) {
    text += "line " + std::to_string(i % 37) + " of the domain corpus: block expansion keeps " +
            std::to_string(i * 13 % 101) + " things\n";
  }
  testing::WriteBytes(dir.Join("corpus.txt"), text);
  ASSERT_EQ(Llamaproctl(dir, "tokenizer train --input " + dir.Join("corpus.txt") +
                                 " --vocab-size 300 --out " + dir.Join("tok"))
                .exit_code,
            0);
  ASSERT_EQ(Llamaproctl(dir, "synth -q --layers 2 --vocab 300 --out " + dir.Join("base")).exit_code,
            0);
  ASSERT_EQ(Llamaproctl(dir, "expand -q --model " + dir.Join("base") + " --out " + dir.Join("pro") +
                                 " --add-blocks 2")
                .exit_code,
            0);
  ASSERT_EQ(Llamaproctl(dir, "ingest -q --store " + dir.Join("store") +
                                 " --corpus text --split-lines --held-out 0.2 --tokenizer " +
                                 dir.Join("tok") + " " + dir.Join("corpus.txt"))
                .exit_code,
            0);
  testing::WriteBytes(dir.Join("job.yaml"), R"(model: pro
output_dir: run
data: {store: store, mixture: text, seq_len: 16}
optimizer: {lr: 1.0e-3}
schedule: {warmup_steps: 1}
batch: {sequences: 4, micro_batch: 2}
steps: 6
eval: {corpora: [text], interval: 3, windows: 4}
checkpoint: {interval: 3, keep: 1}
)");
  CliRun first = Llamaproctl(dir, "train --config " + dir.Join("job.yaml") + " --stop-after 3");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_THAT(first.out, HasSubstr("trainable    blocks 1, 3:"));
  EXPECT_THAT(first.out, HasSubstr("FLOPs/token"));
  EXPECT_THAT(first.out, HasSubstr("eval step 3  text"));
  EXPECT_THAT(first.err, HasSubstr("step 3/6 loss"));
  CliRun again = Llamaproctl(dir, "train --config " + dir.Join("job.yaml"));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("--resume"));
  CliRun resumed = Llamaproctl(dir, "train -q --config " + dir.Join("job.yaml") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_THAT(resumed.out, HasSubstr("resuming     from"));
  EXPECT_THAT(resumed.out, HasSubstr("done         step 6"));
  EXPECT_EQ(testing::ReadBytes(dir.Join("run/latest")), "checkpoint-000006\n");
  EXPECT_FALSE(std::filesystem::exists(dir.Join("run/checkpoint-000003"))) << "keep: 1";

  CliRun ppl = Llamaproctl(dir, "eval ppl --json --seq-len 16 --windows 4 --model " +
                                    dir.Join("run/checkpoint-000006") + " --store " +
                                    dir.Join("store") + " --corpus text");
  ASSERT_EQ(ppl.exit_code, 0) << ppl.err;
  auto result = nlohmann::json::parse(ppl.out);
  ASSERT_EQ(result.size(), 1u);
  EXPECT_GT(result[0]["perplexity"].get<double>(), 1.0);
  EXPECT_EQ(result[0]["windows"], 4);
  CliRun bad = Llamaproctl(dir, "train --config " + dir.Join("nope.yaml"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("nope.yaml"));
}

TEST(CliTest, EverySubcommandHasHelpListingItsFlags) {
  ScratchDir dir;
  const std::pair<const char*, std::vector<const char*>> commands[] = {
      {"synth", {"--out", "--preset", "--scale", "--dtype", "--tied", "--seed"}},
      {"expand",
       {"--model", "--out", "--add-blocks", "--groups", "--layout", "--positions", "--dtype",
        "--shard-size", "--verify", "--force"}},
      {"inspect", {"--model", "--json"}},
      {"score", {"--model", "--tokens", "--json"}},
      {"ingest",
       {"--store", "--corpus", "--tokenizer", "--format", "--text-field", "--split-lines",
        "--held-out", "--strict", "--sft-format", "--template", "--threads"}},
      {"corpora", {"--store", "--json"}},
      {"samples",
       {"--store", "--mixture", "--seq-len", "--seed", "--start", "--count", "--rank",
        "--world-size", "--tokenizer", "--held-out", "--json"}},
      {"tokenizer train", {"--input", "--vocab-size", "--out", "--threads", "--force"}},
      {"train", {"--config", "--resume", "--stop-after", "--quiet"}},
      {"eval ppl",
       {"--model", "--store", "--corpus", "--seq-len", "--windows", "--batch", "--threads",
        "--json"}},
  };
  for (const auto& [command, flags] : commands) {
    CliRun help = Llamaproctl(dir, std::string(command) + " --help");
    EXPECT_EQ(help.exit_code, 0) << command;
    for (const char* flag : flags) EXPECT_THAT(help.out, HasSubstr(flag)) << command;
  }
  CliRun top = Llamaproctl(dir, "--help");
  for (const char* command : {"synth", "expand", "inspect", "score", "tokenizer", "ingest",
                              "corpora", "samples", "train", "eval"}) {
    EXPECT_THAT(top.out, HasSubstr(command));
  }
}

}  // namespace
}  // namespace llamapro
