#include "data/sampler.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/ingest.h"
#include "data/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;

// One store with three pretraining corpora and one SFT corpus, built once.
class SamplerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScratchDir();
    const std::pair<const char*, int> corpora[] = {{"code", 400}, {"math", 300}, {"web", 200}};
    uint64_t seed = 10;
    for (const auto& [name, docs] : corpora) {
      const std::string input = dir_->Join(std::string(name) + ".jsonl");
      testing::WriteJsonl(input, testing::RandomDocuments(docs, 3, 80, seed++));
      IngestOptions options;
      options.store_dir = dir_->Join("store");
      options.corpus = name;
      options.tokenizer = testing::TestTokenizerPath();
      options.inputs = {input};
      options.held_out = 0.1;
      auto report = Ingest(options, nullptr);
      ASSERT_TRUE(report.ok()) << report.status();
    }
    std::string chat;
    for (int i = 0; i < 40; ++i) {
      const auto words = testing::RandomDocuments(2, 2, 6 + i, 500 + i);
      chat += nlohmann::json({{"instruction", words[0]}, {"output", words[1]}}).dump() + "\n";
    }
    testing::WriteBytes(dir_->Join("chat.jsonl"), chat);
    IngestOptions sft;
    sft.store_dir = dir_->Join("store");
    sft.corpus = "chat";
    sft.tokenizer = testing::TestTokenizerPath();
    sft.inputs = {dir_->Join("chat.jsonl")};
    sft.held_out = 0;
    sft.sft = SftFormat::kAlpaca;
    sft.chat_template = ChatTemplate::kAlpaca;
    ASSERT_TRUE(Ingest(sft, nullptr).ok());
    auto store = TokenStore::Open(dir_->Join("store"), TokenStore::Mode::kReadOnly);
    ASSERT_TRUE(store.ok());
    store_ = store->release();
  }
  static void TearDownTestSuite() {
    delete store_;
    delete dir_;
  }

  static std::unique_ptr<Sampler> Make(const SamplerOptions& options) {
    auto sampler = Sampler::Create(store_, options);
    EXPECT_TRUE(sampler.ok()) << sampler.status();
    return sampler.ok() ? std::move(*sampler) : nullptr;
  }
  static SamplerOptions Mix(std::vector<MixtureComponent> mixture, int64_t seq_len = 31) {
    return {.mixture = std::move(mixture), .seq_len = seq_len, .seed = 7};
  }

  static testing::ScratchDir* dir_;
  static TokenStore* store_;
};

testing::ScratchDir* SamplerTest::dir_ = nullptr;
TokenStore* SamplerTest::store_ = nullptr;

TEST_F(SamplerTest, MixtureProportionsOver10000SamplesAreWithin2PercentOfTheWeights) {
  auto sampler = Make(Mix({{"code", 5}, {"math", 3}, {"web", 2}}));
  std::map<int, int> counts;
  for (int i = 0; i < 10000; ++i) {
    auto sample = sampler->Next();
    ASSERT_TRUE(sample.ok()) << sample.status();
    ++counts[sample->component];
  }
  EXPECT_NEAR(counts[0] / 10000.0, 0.5, 0.02);
  EXPECT_NEAR(counts[1] / 10000.0, 0.3, 0.02);
  EXPECT_NEAR(counts[2] / 10000.0, 0.2, 0.02);
}

TEST_F(SamplerTest, TwoRanksTogetherReadExactlyTheSamplesOfOneReader) {
  auto single = Make(Mix({{"code", 1}, {"web", 1}}));
  SamplerOptions r0 = Mix({{"code", 1}, {"web", 1}});
  r0.world_size = 2;
  SamplerOptions r1 = r0;
  r1.rank = 1;
  auto rank0 = Make(r0);
  auto rank1 = Make(r1);
  for (int i = 0; i < 500; ++i) {
    auto expected = single->Next();
    auto actual = (i % 2 == 0 ? rank0 : rank1)->Next();
    ASSERT_TRUE(expected.ok() && actual.ok());
    ASSERT_EQ(actual->index, expected->index);
    ASSERT_EQ(actual->tokens, expected->tokens) << "sample " << i;
  }
}

TEST_F(SamplerTest, StartingAtKReproducesTheTailOfAFullRead) {
  auto full = Make(Mix({{"code", 2}, {"math", 1}}));
  std::vector<Sample> all;
  all.reserve(3000);
  for (int i = 0; i < 3000; ++i) all.push_back(*full->Next());
  for (int64_t k : {1, 999, 1024, 2500}) {
    SamplerOptions options = Mix({{"code", 2}, {"math", 1}});
    options.start = k;
    auto resumed = Make(options);
    for (int64_t i = k; i < 3000; ++i) {
      auto sample = resumed->Next();
      ASSERT_TRUE(sample.ok());
      ASSERT_EQ(sample->index, i);
      ASSERT_EQ(sample->tokens, all[i].tokens) << "start " << k << ", sample " << i;
    }
  }
}

TEST_F(SamplerTest, AnEpochVisitsEveryWindowOnceAndWindowsTileTheJoinedStream) {
  auto sampler = Make(Mix({{"math", 1}}));
  const int64_t windows = sampler->windows()[0];
  ASSERT_GT(windows, 100);
  std::map<int64_t, std::vector<int32_t>> by_window;
  for (int64_t i = 0; i < windows; ++i) {
    auto sample = sampler->Next();
    ASSERT_TRUE(sample.ok());
    EXPECT_EQ(sample->epoch, 0);
    ASSERT_TRUE(by_window.emplace(sample->window, sample->tokens).second) << "window repeated";
  }
  EXPECT_EQ(static_cast<int64_t>(by_window.size()), windows);
  EXPECT_NE(by_window.begin()->second, by_window.rbegin()->second);
  // Windows in order are the training documents joined as BOS doc EOS.
  const CorpusInfo& math = sampler->corpora()[0];
  auto tokenizer = store_->Tokenizer();
  ASSERT_TRUE(tokenizer.ok() && tokenizer->has_value());
  std::vector<int32_t> stream;
  for (uint64_t n = 0; n < math.documents; ++n) {
    auto doc = store_->ReadDocument(math.id, n);
    ASSERT_TRUE(doc.ok());
    if (doc->held_out) continue;
    stream.push_back((*tokenizer)->bos_id);
    stream.insert(stream.end(), doc->tokens.begin(), doc->tokens.end());
    stream.push_back((*tokenizer)->eos_id);
  }
  std::vector<int32_t> tiled;
  for (const auto& [window, tokens] : by_window)
    tiled.insert(tiled.end(), tokens.begin(), tokens.end());
  ASSERT_EQ(tiled.size(), static_cast<size_t>(windows) * 32);
  EXPECT_TRUE(std::equal(tiled.begin(), tiled.end(), stream.begin()));
  // The next epoch visits them again, in another order.
  auto next = sampler->Next();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->epoch, 1);
}

TEST_F(SamplerTest, HeldOutDocumentsNeverOccurInTrainingSamples) {
  int held_out_corpora = 0;
  for (const char* name : {"code", "math", "web"}) {
    // One full epoch of the corpus alone.
    auto sampler = Make(Mix({{name, 1}}));
    const CorpusInfo& corpus = sampler->corpora()[0];
    const uint64_t used_stream = static_cast<uint64_t>(sampler->windows()[0]) * 32;
    std::set<uint64_t> seen;
    for (int64_t i = 0; i < sampler->windows()[0]; ++i) {
      auto sample = sampler->Next();
      ASSERT_TRUE(sample.ok());
      for (const SampleSource& source : sample->sources) seen.insert(source.document);
    }
    held_out_corpora += corpus.held_out_documents > 0 ? 1 : 0;
    uint64_t stream = 0;
    for (uint64_t n = 0; n < corpus.documents; ++n) {
      auto doc = store_->ReadDocument(corpus.id, n);
      ASSERT_TRUE(doc.ok());
      if (doc->held_out) {
        EXPECT_EQ(seen.count(n), 0u) << name << " document " << n << " is held out";
        continue;
      }
      if (stream < used_stream) {
        EXPECT_EQ(seen.count(n), 1u) << name << " document " << n << " is in the epoch";
      }
      stream += doc->tokens.size() + 2;
    }
  }
  EXPECT_EQ(held_out_corpora, 3);
  auto sampler = Make(Mix({{"code", 1}}));
  // The held-out reader serves exactly the held-out documents.
  auto held = HeldOutReader::Create(store_, "code", 15);
  ASSERT_TRUE(held.ok());
  ASSERT_GT((*held)->size(), 0);
  for (int64_t w = 0; w < (*held)->size(); ++w) {
    auto sample = (*held)->Get(w);
    ASSERT_TRUE(sample.ok());
    for (const SampleSource& source : sample->sources) {
      EXPECT_TRUE(store_->ReadDocument(sampler->corpora()[0].id, source.document)->held_out);
    }
  }
  EXPECT_EQ((*held)->Get((*held)->size()).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(SamplerTest, SamplesDependOnTheSeedAndOnNothingElse) {
  auto a = Make(Mix({{"code", 1}, {"web", 1}}));
  auto b = Make(Mix({{"code", 1}, {"web", 1}}));
  SamplerOptions other = Mix({{"code", 1}, {"web", 1}});
  other.seed = 8;
  auto c = Make(other);
  int differing = 0;
  for (int i = 0; i < 200; ++i) {
    auto x = a->Get(199 - i);  // Random access in another order: same samples.
    auto y = b->Next();
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(a->Get(i)->tokens, y->tokens);
    differing += c->Get(i)->tokens != y->tokens ? 1 : 0;
  }
  EXPECT_GT(differing, 150);
}

TEST_F(SamplerTest, SftSamplesKeepPromptsWholeAndMaskOnlyAnswers) {
  // A window as long as the median conversation: some fit, some do not.
  auto chat_info = store_->GetCorpus("chat");
  ASSERT_TRUE(chat_info.ok());
  std::vector<size_t> lengths;
  for (uint64_t n = 0; n < chat_info->documents; ++n) {
    lengths.push_back(store_->ReadDocument(chat_info->id, n)->tokens.size());
  }
  std::sort(lengths.begin(), lengths.end());
  const auto length = static_cast<int64_t>(lengths[lengths.size() / 2]);
  auto sampler = Make(Mix({{"chat", 1}}, length - 1));
  const CorpusInfo& chat = sampler->corpora()[0];
  EXPECT_EQ(sampler->windows()[0], 40);
  int cut_in_answer = 0, prompt_too_long = 0, whole = 0;
  for (int i = 0; i < 40; ++i) {
    auto sample = sampler->Next();
    ASSERT_TRUE(sample.ok());
    ASSERT_EQ(sample->tokens.size(), static_cast<size_t>(length));
    ASSERT_EQ(sample->loss_mask.size(), static_cast<size_t>(length));
    ASSERT_EQ(sample->sources.size(), 1u);
    auto doc = store_->ReadDocument(chat.id, sample->sources[0].document);
    ASSERT_TRUE(doc.ok());
    const size_t used = sample->sources[0].length;
    size_t first_answer = 0;
    while (doc->loss_mask[first_answer] == 0) ++first_answer;
    for (size_t t = 0; t < used; ++t) ASSERT_EQ(sample->tokens[t], doc->tokens[t]);
    for (size_t t = used; t < static_cast<size_t>(length); ++t)
      ASSERT_EQ(sample->loss_mask[t], 0) << "padding";
    if (first_answer >= static_cast<size_t>(length)) {
      // The prompt alone does not fit: no loss at all, rather than a cut prompt.
      for (uint8_t m : sample->loss_mask) ASSERT_EQ(m, 0);
      ++prompt_too_long;
      continue;
    }
    // The prompt is whole and the mask is the conversation's own.
    EXPECT_GT(used, first_answer);
    for (size_t t = 0; t < used; ++t) ASSERT_EQ(sample->loss_mask[t], doc->loss_mask[t]);
    (used < doc->tokens.size() ? cut_in_answer : whole) += 1;
  }
  EXPECT_GT(whole, 0);
  EXPECT_GT(cut_in_answer + prompt_too_long, 0) << "some conversations exceed the window";
}

TEST_F(SamplerTest, ClearErrorsForBadMixtures) {
  EXPECT_THAT(std::string(Sampler::Create(store_, Mix({{"nope", 1}})).status().message()),
              HasSubstr("no corpus 'nope'"));
  EXPECT_THAT(std::string(Sampler::Create(store_, Mix({{"web", 1}}, 1'000'000)).status().message()),
              HasSubstr("not enough for one sample of 1000001 tokens"));
  EXPECT_FALSE(ParseMixture("code:0.5,code:0.5").ok());
  EXPECT_FALSE(ParseMixture("code:-1").ok());
  EXPECT_FALSE(ParseMixture("").ok());
  auto parsed = ParseMixture(" code:0.7, math ");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ((*parsed)[1].corpus, "math");
  EXPECT_EQ((*parsed)[1].weight, 1.0);
  SamplerOptions bad_rank = Mix({{"web", 1}});
  bad_rank.rank = 2;
  bad_rank.world_size = 2;
  EXPECT_FALSE(Sampler::Create(store_, bad_rank).ok());
}

TEST(PermuteTest, IsABijectionForAnyDomainSize) {
  for (uint64_t n : {1u, 2u, 3u, 10u, 1000u, 4097u}) {
    std::set<uint64_t> values;
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t v = PermuteIndex(i, n, 12345);
      ASSERT_LT(v, n);
      values.insert(v);
    }
    EXPECT_EQ(values.size(), n);
  }
  int fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) fixed += PermuteIndex(i, 1000, 1) == i ? 1 : 0;
  EXPECT_LT(fixed, 20) << "it shuffles";
}

}  // namespace
}  // namespace llamapro
