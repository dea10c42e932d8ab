// The evaluations beyond perplexity: generation with a KV cache, multiple-
// choice log-likelihood tasks, the token-shift analysis.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "eval/choice.h"
#include "eval/code.h"
#include "eval/generate.h"
#include "eval/ppl.h"
#include "eval/scoring.h"
#include "eval/shift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/llama_params.h"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;

// A tiny random model with the test tokenizer (500 ids; the model has 512).
InferenceModel TinyModel(const testing::ScratchDir& dir, const std::string& name, uint64_t seed,
                         Architecture architecture = Architecture::kLlama,
                         int64_t sliding_window = 0) {
  SynthSpec spec = testing::SmallSpec(2, 4, 2, /*tied=*/false, /*bias=*/false, DType::kF32, seed);
  spec.architecture = architecture;
  spec.sliding_window = sliding_window;
  spec.vocab_size = 512;
  const std::string path = dir.Join(name);
  testing::WriteCheckpoint(spec, path);
  std::filesystem::copy_file(testing::TestTokenizerPath(), path + "/tokenizer.model");
  auto model = LoadInferenceModel(path, /*need_tokenizer=*/true);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

std::vector<int32_t> Ids(const InferenceModel& model, const std::string& text) {
  auto ids = PromptIds(*model.tokenizer, text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return *ids;
}

double MaxRelativeError(std::span<const float> got, std::span<const float> want) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    norm = std::max(norm, std::abs(static_cast<double>(want[i])));
  }
  return err / norm;
}

void ExpectCacheMatchesFullForward(const InferenceModel& model) {
  const std::vector<int32_t> prompt = Ids(model, "the quick brown fox jumps over");
  std::vector<int32_t> sequence = prompt;
  for (int32_t t : {17, 250, 3, 499, 42, 8, 100, 7, 7, 300}) sequence.push_back(t);
  const auto n = static_cast<int64_t>(sequence.size());
  auto full = ForwardLogits(model.config, model.weights, sequence, 1, n);
  ASSERT_TRUE(full.ok()) << full.status();
  const int64_t v = model.config.vocab_size;
  IncrementalDecoder decoder(model.config, &model.weights, n);
  auto logits = decoder.Append(prompt);
  ASSERT_TRUE(logits.ok()) << logits.status();
  for (int64_t t = static_cast<int64_t>(prompt.size()) - 1; t < n; ++t) {
    const auto want = std::span<const float>(*full).subspan(t * v, v);
    EXPECT_LT(MaxRelativeError(*logits, want), 1e-5) << "position " << t;
    EXPECT_EQ(ArgMax(*logits), ArgMax(want)) << "position " << t;
    if (t + 1 < n) {
      logits = decoder.Append(std::span<const int32_t>(sequence).subspan(t + 1, 1));
      ASSERT_TRUE(logits.ok()) << logits.status();
    }
  }
  EXPECT_EQ(decoder.length(), n);
  EXPECT_THAT(decoder.Append(std::vector<int32_t>{1}).status().message(),
              HasSubstr("the decoder holds"));
}

TEST(GenerateTest, CachedLogitsEqualThoseOfAFullForward) {
  testing::ScratchDir dir;
  ExpectCacheMatchesFullForward(TinyModel(dir, "llama", 3));
}

TEST(GenerateTest, CachedLogitsRespectMistralsSlidingWindow) {
  testing::ScratchDir dir;
  ExpectCacheMatchesFullForward(TinyModel(dir, "mistral", 4, Architecture::kMistral, 5));
}

TEST(GenerateTest, GenerationWithAndWithoutTheCacheYieldsIdenticalTokens) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 5);
  const std::vector<int32_t> prompt = Ids(model, "once upon a time");
  SamplingOptions options{.max_tokens = 48, .stop_at_eos = false};
  auto cached = Generate(model, prompt, options);
  options.use_cache = false;
  auto uncached = Generate(model, prompt, options);
  ASSERT_TRUE(cached.ok() && uncached.ok()) << cached.status() << uncached.status();
  EXPECT_EQ(cached->tokens.size(), 48u);
  EXPECT_EQ(cached->tokens, uncached->tokens);
  EXPECT_EQ(cached->text, uncached->text);
  EXPECT_EQ(cached->finish_reason, "length");
}

TEST(GenerateTest, SamplingIsAPureFunctionOfTheSeed) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 6);
  const std::vector<int32_t> prompt = Ids(model, "hello world");
  SamplingOptions options{
      .max_tokens = 32, .temperature = 1.5, .top_p = 0.95, .seed = 7, .stop_at_eos = false};
  auto a = Generate(model, prompt, options);
  auto b = Generate(model, prompt, options);
  options.seed = 8;
  auto c = Generate(model, prompt, options);
  options.temperature = 0;
  auto greedy = Generate(model, prompt, options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && greedy.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_NE(a->tokens, c->tokens);
  EXPECT_NE(a->tokens, greedy->tokens);
  // top_p so small that only the most likely token remains: greedy.
  options.temperature = 1.0;
  options.top_p = 1e-9;
  auto nucleus = Generate(model, prompt, options);
  ASSERT_TRUE(nucleus.ok());
  EXPECT_EQ(nucleus->tokens, greedy->tokens);
}

TEST(GenerateTest, StopStringsEndTheTextAndTheStreamAddsUpToIt) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 9);
  const std::vector<int32_t> prompt = Ids(model, "the");
  SamplingOptions options{.max_tokens = 40, .stop_at_eos = false};
  auto free = Generate(model, prompt, options);
  ASSERT_TRUE(free.ok());
  ASSERT_GT(free->text.size(), 12u) << free->text;
  const std::string stop = free->text.substr(8, 3);
  options.stop = {stop};
  std::string streamed;
  auto stopped =
      Generate(model, prompt, options, [&](absl::string_view s) { absl::StrAppend(&streamed, s); });
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, "stop");
  EXPECT_EQ(stopped->text, free->text.substr(0, free->text.find(stop)));
  EXPECT_EQ(streamed, stopped->text);
  // Without a stop string the stream is the whole text.
  options.stop.clear();
  streamed.clear();
  auto all =
      Generate(model, prompt, options, [&](absl::string_view s) { absl::StrAppend(&streamed, s); });
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(streamed, all->text);
}

TEST(GenerateTest, BadOptionsAreNamed) {
  EXPECT_THAT(ValidateSamplingOptions({.max_tokens = 0}).message(), HasSubstr("max_tokens"));
  EXPECT_THAT(ValidateSamplingOptions({.temperature = -1}).message(), HasSubstr("temperature"));
  EXPECT_THAT(ValidateSamplingOptions({.top_p = 0}).message(), HasSubstr("top_p"));
  EXPECT_THAT(ValidateSamplingOptions({.stop = {""}}).message(), HasSubstr("stop string"));
}

// The choice task scored by hand: each continuation's tokens by the
// harness's rule, its log-likelihood from the streaming forward pass (a
// different code path) with a log-softmax computed here in double.
TEST(ChoiceTest, AccuracyAndNormalisedAccuracyEqualAHandComputation) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 11);
  const std::vector<std::string> words = testing::RandomDocuments(40, 1, 6, 77);
  std::vector<ChoiceQuestion> questions;
  for (int i = 0; i < 8; ++i) {
    ChoiceQuestion q;
    q.context = absl::StrCat("Question: ", words[i], "\nAnswer:");
    for (int c = 0; c < 4; ++c) q.choices.push_back(words[8 + i * 4 + c]);
    q.gold = (i * 3) % 4;
    questions.push_back(q);
  }
  auto reader = CheckpointReader::Open(model.dir);
  ASSERT_TRUE(reader.ok());
  const Tokenizer& tok = *model.tokenizer;
  int expected_acc = 0, expected_norm = 0;
  std::vector<std::vector<double>> expected_ll;
  for (const ChoiceQuestion& q : questions) {
    std::vector<double> lls;
    int best = 0, best_norm = 0;
    for (size_t c = 0; c < q.choices.size(); ++c) {
      const std::string cont = " " + q.choices[c];
      std::vector<int32_t> context, whole;
      ASSERT_TRUE(tok.Encode(q.context, &context).ok());
      ASSERT_TRUE(tok.Encode(q.context + cont, &whole).ok());
      whole.insert(whole.begin(), tok.info().bos_id);
      const size_t start = context.size() + 1;
      ASSERT_LT(start, whole.size());
      const auto n = static_cast<int64_t>(whole.size()) - 1;
      auto logits =
          StreamingLogits(**reader, model.config, std::span<const int32_t>(whole).first(n), 1, n);
      ASSERT_TRUE(logits.ok());
      const int64_t v = model.config.vocab_size;
      double ll = 0;
      for (size_t t = start - 1; t < static_cast<size_t>(n); ++t) {
        const float* row = logits->data() + t * v;
        double mx = row[0];
        for (int64_t j = 0; j < v; ++j) mx = std::max(mx, static_cast<double>(row[j]));
        double sum = 0;
        for (int64_t j = 0; j < v; ++j) sum += std::exp(row[j] - mx);
        ll += row[whole[t + 1]] - mx - std::log(sum);
      }
      lls.push_back(ll);
      if (ll > lls[best]) best = static_cast<int>(c);
      const auto norm = [&](size_t i) {
        return lls[i] / static_cast<double>(1 + q.choices[i].size());
      };
      if (norm(c) > norm(best_norm)) best_norm = static_cast<int>(c);
    }
    expected_acc += best == q.gold ? 1 : 0;
    expected_norm += best_norm == q.gold ? 1 : 0;
    expected_ll.push_back(lls);
  }
  auto result = EvaluateChoice(model, questions, questions, ChoiceOptions{});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->questions, 8);
  EXPECT_DOUBLE_EQ(result->acc, expected_acc / 8.0);
  EXPECT_DOUBLE_EQ(result->acc_norm, expected_norm / 8.0);
  EXPECT_DOUBLE_EQ(result->acc_stderr, MeanStderr(expected_acc / 8.0, 8));
  for (size_t i = 0; i < questions.size(); ++i) {
    for (size_t c = 0; c < 4; ++c) {
      EXPECT_NEAR(result->details[i].loglikelihoods[c], expected_ll[i][c], 1e-3);
      EXPECT_EQ(result->details[i].lengths[c], 1 + questions[i].choices[c].size());
    }
  }
  // The task is not degenerate: some questions right, some wrong, and the
  // normalisation changes at least one prediction.
  int changed = 0;
  for (const auto& d : result->details) changed += d.predicted != d.predicted_norm ? 1 : 0;
  EXPECT_GT(changed, 0) << "pick other words: normalisation never mattered";
}

TEST(ChoiceTest, FewShotPromptsAreSeededAndNeverShowTheQuestionItself) {
  std::vector<ChoiceQuestion> qs;
  qs.reserve(6);
  for (int i = 0; i < 6; ++i) qs.push_back({absl::StrCat("Q", i, "?"), {"yes", "no"}, i % 2});
  ChoiceOptions options{.shots = 5, .seed = 1};
  for (int64_t i = 0; i < 6; ++i) {
    const std::string prompt = ChoicePrompt(qs, i, qs, /*same_file=*/true, options);
    EXPECT_TRUE(prompt.ends_with(qs[i].context));
    EXPECT_EQ(prompt.find(qs[i].context), prompt.size() - qs[i].context.size()) << prompt;
    for (int j = 0; j < 6; ++j) {
      if (j != i) {
        EXPECT_THAT(prompt, HasSubstr(qs[j].context + " " + qs[j].choices[qs[j].gold]));
      }
    }
  }
  options.shots = 2;
  EXPECT_EQ(ChoicePrompt(qs, 0, qs, true, options), ChoicePrompt(qs, 0, qs, true, options));
  ChoiceOptions other = options;
  other.seed = 2;
  bool differs = false;
  for (int64_t i = 0; i < 6; ++i) {
    differs |= ChoicePrompt(qs, i, qs, true, options) != ChoicePrompt(qs, i, qs, true, other);
  }
  EXPECT_TRUE(differs);
}

TEST(ChoiceTest, MalformedTaskFilesNameTheLineAndField) {
  testing::ScratchDir dir;
  const std::string path = dir.Join("task.jsonl");
  testing::WriteBytes(path,
                      "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 1}\n\n"
                      "{\"context\": \"b\", \"choices\": [\"x\", \"y\"], \"gold\": 2}\n");
  EXPECT_THAT(ReadChoiceTask(path).status().message(),
              HasSubstr("task.jsonl:3: \"gold\" is 2, not an index of the 2 choices"));
  testing::WriteBytes(path, "{\"context\": \"a\", \"choices\": \"x\", \"gold\": 0}\n");
  EXPECT_THAT(ReadChoiceTask(path).status().message(),
              HasSubstr(":1: \"choices\" must be a list of strings"));
  testing::WriteBytes(path, "not json\n");
  EXPECT_THAT(ReadChoiceTask(path).status().message(), HasSubstr(":1: not valid JSON"));
  EXPECT_DOUBLE_EQ(MeanStderr(0.5, 5), 0.25);
}

TEST(ShiftTest, AModelAgainstItselfIsEntirelyUnshifted) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 12);
  const InferenceModel other = TinyModel(dir, "other", 13);
  const std::vector<std::string> prompts = {"the cat", "a dog ran", "why is the sky"};
  auto self = TokenShift(model, model, prompts, {.max_tokens = 20});
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_EQ(self->prompts, 3);
  EXPECT_GT(self->positions, 30);
  EXPECT_EQ(self->unshifted, self->positions);
  EXPECT_DOUBLE_EQ(self->unshifted_fraction, 1.0);
  // Against an unrelated model most positions shift.
  auto shifted = TokenShift(model, other, prompts, {.max_tokens = 20});
  ASSERT_TRUE(shifted.ok());
  EXPECT_LT(shifted->unshifted_fraction, 0.5);
  EXPECT_EQ(shifted->unshifted + shifted->marginal + shifted->shifted, shifted->positions);
  EXPECT_DOUBLE_EQ(
      shifted->unshifted_fraction + shifted->marginal_fraction + shifted->shifted_fraction, 1.0);
}

// pass@1 through the sandbox. The model is random, so each prompt already
// holds the solution and ends inside a comment; the stop string "\n" keeps
// the completion on that line. One solution is right, one wrong.
TEST(CodeTest, PassAtOneRunsEachCompletionAgainstItsTestsInTheSandbox) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 14);
  const std::string check = "def check(f):\n    assert f(2, 3) == 5\n";
  testing::WriteBytes(
      dir.Join("tasks.jsonl"),
      absl::StrCat(
          R"({"task_id": "right", "prompt": "def add(a, b):\n    return a + b\n# ", "test": )",
          nlohmann::json(check).dump(), R"(, "entry_point": "add"})", "\n",
          R"({"task_id": "wrong", "prompt": "def add(a, b):\n    return a - b\n# ", "test": )",
          nlohmann::json(check).dump(), R"(, "entry_point": "add"})", "\n",
          R"({"task_id": "mbpp", "text": "Add two numbers.", "test_list": ["assert add(1, 1) == 2"]})",
          "\n"));
  auto tasks = ReadCodeTasks(dir.Join("tasks.jsonl"));
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 3u);
  EXPECT_EQ((*tasks)[2].prompt, "\"\"\"\nAdd two numbers.\nassert add(1, 1) == 2\n\"\"\"\n");
  tasks->pop_back();  // A random model does not write add().
  CodeOptions options;
  options.sampling.max_tokens = 6;
  options.sampling.stop = {"\n"};
  options.limits.wall_seconds = 5;
  auto result = EvaluateCode(model, *tasks, options);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const CodeTaskResult& r : result->details) {
    for (char ch : r.completions[0]) {
      ASSERT_TRUE(ch == '\t' || static_cast<unsigned char>(ch) >= 0x20)
          << "a control character in the completion breaks this test's premise: "
          << r.completions[0];
    }
  }
  EXPECT_EQ(result->details[0].outcomes, std::vector<std::string>{"passed"});
  EXPECT_EQ(result->details[1].outcomes, std::vector<std::string>{"failed"});
  EXPECT_DOUBLE_EQ(result->pass_at_1, 0.5);
  options.samples = 2;
  EXPECT_THAT(EvaluateCode(model, *tasks, options).status().message(),
              HasSubstr("temperature > 0"));
}

// Perplexity of a file: every document tokenized (BOS first), one stream,
// windows of seq_len + 1 and a shorter tail; checked against log-softmax
// sums over the streaming forward pass.
TEST(PerplexityTest, FilePerplexityScoresEveryTokenOfTheStream) {
  testing::ScratchDir dir;
  const InferenceModel model = TinyModel(dir, "m", 15);
  const std::vector<std::string> docs = testing::RandomDocuments(6, 5, 20, 4);
  testing::WriteJsonl(dir.Join("docs.jsonl"), docs);
  std::vector<int32_t> stream, ids;
  for (const std::string& d : docs) {
    ASSERT_TRUE(model.tokenizer->EncodeDocument(d, &ids).ok());
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  const int64_t seq_len = 16, width = seq_len + 1;
  ASSERT_GT(stream.size() % width, 1u) << "pick documents that leave a tail";
  auto reader = CheckpointReader::Open(model.dir);
  ASSERT_TRUE(reader.ok());
  double nll = 0;
  int64_t targets = 0;
  for (size_t start = 0; start + 1 < stream.size(); start += width) {
    const auto n = static_cast<int64_t>(std::min<size_t>(width, stream.size() - start)) - 1;
    auto logits = StreamingLogits(**reader, model.config,
                                  std::span<const int32_t>(stream).subspan(start, n), 1, n);
    ASSERT_TRUE(logits.ok());
    for (int64_t t = 0; t < n; ++t) {
      nll -= LogProbability(std::span<const float>(*logits).subspan(t * model.config.vocab_size,
                                                                    model.config.vocab_size),
                            stream[start + t + 1]);
      ++targets;
    }
  }
  auto params = LoadLlamaParams(**reader, model.config);
  ASSERT_TRUE(params.ok());
  auto result = FilePerplexity(&*params, *model.tokenizer, dir.Join("docs.jsonl"), {},
                               {.seq_len = seq_len, .batch = 2});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->targets, targets);
  EXPECT_EQ(result->windows, static_cast<int64_t>((stream.size() + width - 2) / width));
  EXPECT_NEAR(result->nll, nll / targets, 1e-5);
  EXPECT_NEAR(result->perplexity, std::exp(nll / targets), 1e-3);
  testing::WriteBytes(dir.Join("empty.txt"), "");
  EXPECT_THAT(
      FilePerplexity(&*params, *model.tokenizer, dir.Join("empty.txt"), {}, {}).status().message(),
      HasSubstr("nothing to score"));
}

}  // namespace
}  // namespace llamapro
