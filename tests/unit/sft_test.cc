#include "data/sft.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using testing::ScratchDir;
using Role = Turn::Role;

constexpr char kFixture[] = LLAMAPRO_TOKENIZER_FIXTURE;
constexpr ChatTemplate kTemplates[] = {ChatTemplate::kLlama2Chat, ChatTemplate::kAlpaca,
                                       ChatTemplate::kPlain};
constexpr char kStanfordNoInput[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n";
constexpr char kStanfordWithInput[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n";

struct MaskRun {
  size_t begin, end;  // [begin, end) of a run of mask 1s.
};

std::vector<MaskRun> MaskRuns(const RenderedConversation& r) {
  std::vector<MaskRun> runs;
  for (size_t i = 0; i < r.loss_mask.size(); ++i) {
    if (r.loss_mask[i] == 0) continue;
    if (runs.empty() || runs.back().end != i) runs.push_back({i, i});
    runs.back().end = i + 1;
  }
  return runs;
}

Conversation MakeConversation(const std::string& system,
                              const std::vector<std::pair<std::string, std::string>>& exchanges) {
  Conversation c;
  if (!system.empty()) c.turns.push_back({Role::kSystem, system, ""});
  for (const auto& [user, answer] : exchanges) {
    c.turns.push_back({Role::kUser, user, ""});
    c.turns.push_back({Role::kAssistant, answer, ""});
  }
  return c;
}

// Shared by the suite: set up once in SetUpTestSuite.
ScratchDir* suite_dir = nullptr;
Tokenizer* suite_tokenizer = nullptr;

class SftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_dir = new ScratchDir();
    TokenizerTrainOptions options;
    options.inputs = {kFixture};
    options.vocab_size = 1000;
    options.out_dir = suite_dir->Join("tok");
    absl::Status status = TrainTokenizer(options);
    ASSERT_TRUE(status.ok()) << status;
    auto tokenizer = Tokenizer::Load(options.out_dir);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    suite_tokenizer = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete suite_tokenizer;
    suite_tokenizer = nullptr;
    delete suite_dir;
    suite_dir = nullptr;
  }
  void SetUp() override { ASSERT_NE(suite_tokenizer, nullptr) << "training failed"; }

  static RenderedConversation MustRender(const Conversation& c, ChatTemplate t) {
    auto r = RenderConversation(c, t, *suite_tokenizer);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    EXPECT_EQ(r->tokens.size(), r->loss_mask.size());
    return *std::move(r);
  }
  static std::string MustDecode(const std::vector<int32_t>& ids) {
    auto text = suite_tokenizer->Decode(ids);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : "";
  }
  static std::vector<int32_t> MustEncode(const std::string& text) {
    std::vector<int32_t> ids;
    EXPECT_TRUE(suite_tokenizer->Encode(text, &ids).ok());
    return ids;
  }
  static std::vector<int32_t> Slice(const std::vector<int32_t>& v, size_t b, size_t e) {
    return std::vector<int32_t>(v.begin() + b, v.begin() + e);
  }
};

const std::vector<std::pair<std::string, std::string>> kExchanges = {
    {"What is the capital of Germany?", "The capital of Germany is Berlin."},
    {"Und auf Deutsch, bitte: wie groß ist München?",
     "München hat etwa 1,5 Millionen Einwohner. 😀"},
    {"Write a Python loop.", "for i in range(3):\n    print(i)"},
};

TEST_F(SftTest, MaskCoversExactlyTheAnswersAndTheirEosForEveryTemplate) {
  const Conversation c = MakeConversation("You are a helpful assistant.", kExchanges);
  const int32_t eos = suite_tokenizer->info().eos_id;
  for (ChatTemplate t : kTemplates) {
    SCOPED_TRACE(std::string(ChatTemplateName(t)));
    const RenderedConversation r = MustRender(c, t);
    const std::vector<MaskRun> runs = MaskRuns(r);
    ASSERT_EQ(runs.size(), kExchanges.size());
    std::vector<int32_t> unmasked;
    for (size_t i = 0; i < r.tokens.size(); ++i) {
      if (r.loss_mask[i] == 0) unmasked.push_back(r.tokens[i]);
    }
    for (size_t k = 0; k < runs.size(); ++k) {
      const std::vector<int32_t> answer = Slice(r.tokens, runs[k].begin, runs[k].end);
      ASSERT_GE(answer.size(), 2u);
      EXPECT_EQ(answer.back(), eos) << "every answer's run ends with EOS";
      EXPECT_EQ(MustDecode(Slice(answer, 0, answer.size() - 1)), kExchanges[k].second);
      for (size_t i = 0; i + 1 < answer.size(); ++i) EXPECT_NE(answer[i], eos);
    }
    const std::string prompts = MustDecode(unmasked);
    EXPECT_NE(prompts.find("You are a helpful assistant."), std::string::npos) << prompts;
    for (const auto& [user, answer] : kExchanges) {
      EXPECT_NE(prompts.find(user), std::string::npos) << prompts;
      EXPECT_EQ(prompts.find(answer), std::string::npos) << "no answer text outside the mask";
    }
    for (int32_t id : unmasked) EXPECT_NE(id, eos) << "EOS only closes answers";
    EXPECT_EQ(r.tokens.front(), suite_tokenizer->info().bos_id);
    EXPECT_EQ(r.loss_mask.front(), 0);
  }
}

TEST_F(SftTest, RenderedTextIsExactlyEachTemplatesFormat) {
  const Conversation c = MakeConversation("SYS", {{"U1", "A1"}, {"U2", "A2"}});
  const int32_t bos = suite_tokenizer->info().bos_id;
  const int32_t eos = suite_tokenizer->info().eos_id;

  // llama2-chat: <s>[INST] <<SYS>>..<</SYS>>\n\nU1 [/INST] A1</s><s>[INST] U2 [/INST] A2</s>,
  // equal to encoding each exchange's text in one piece.
  RenderedConversation r = MustRender(c, ChatTemplate::kLlama2Chat);
  std::vector<int32_t> want = {bos};
  for (int32_t id : MustEncode("[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1"))
    want.push_back(id);
  want.push_back(eos);
  want.push_back(bos);
  for (int32_t id : MustEncode("[INST] U2 [/INST] A2")) want.push_back(id);
  want.push_back(eos);
  EXPECT_EQ(r.tokens, want);

  r = MustRender(c, ChatTemplate::kAlpaca);
  EXPECT_EQ(MustDecode(r.tokens),
            "SYS\n\n### Instruction:\nU1\n\n### Response:\nA1"
            "\n\n### Instruction:\nU2\n\n### Response:\nA2");
  r = MustRender(c, ChatTemplate::kPlain);
  EXPECT_EQ(MustDecode(r.tokens), "SYS\nU1\nA1\nU2\nA2");
  EXPECT_EQ(std::count(r.tokens.begin(), r.tokens.end(), bos), 1);
  EXPECT_EQ(std::count(r.tokens.begin(), r.tokens.end(), eos), 2);
}

TEST_F(SftTest, AnswersAfterANewlineTokenizeAsInTheWholeText) {
  // Segment-wise encoding must not add a space ("▁") before answers that
  // follow a newline: the ids equal those of the text encoded in one piece.
  const std::string prompt = std::string(kStanfordNoInput) + "Name a color.\n\n### Response:\n";
  const std::string answer = "Blue, like the sky.";
  Conversation c = MakeConversation("", {{"Name a color.", answer}});
  RenderedConversation r = MustRender(c, ChatTemplate::kAlpaca);
  std::vector<int32_t> want = {suite_tokenizer->info().bos_id};
  for (int32_t id : MustEncode(prompt + answer)) want.push_back(id);
  want.push_back(suite_tokenizer->info().eos_id);
  EXPECT_EQ(r.tokens, want);

  r = MustRender(c, ChatTemplate::kPlain);
  want = {suite_tokenizer->info().bos_id};
  for (int32_t id : MustEncode("Name a color.\n" + answer)) want.push_back(id);
  want.push_back(suite_tokenizer->info().eos_id);
  EXPECT_EQ(r.tokens, want);
}

TEST_F(SftTest, AlpacaRecordsRenderStanfordsPromptWithAndWithoutInput) {
  auto with_input =
      ParseSftRecord(nlohmann::json::parse(R"({"instruction": "Translate.", "input": "Guten Tag",
                                "output": "Good day"})"),
                     SftFormat::kAlpaca);
  ASSERT_TRUE(with_input.ok()) << with_input.status();
  RenderedConversation r = MustRender(*with_input, ChatTemplate::kAlpaca);
  EXPECT_EQ(MustDecode(r.tokens), std::string(kStanfordWithInput) +
                                      "Translate.\n\n### Input:\nGuten Tag\n\n### Response:\n"
                                      "Good day");
  ASSERT_EQ(MaskRuns(r).size(), 1u);

  auto without_input = ParseSftRecord(
      nlohmann::json::parse(R"({"instruction": "Say hi.", "input": "", "output": "Hi!"})"),
      SftFormat::kAlpaca);
  ASSERT_TRUE(without_input.ok());
  EXPECT_TRUE(without_input->turns[0].input.empty());
  r = MustRender(*without_input, ChatTemplate::kAlpaca);
  EXPECT_EQ(MustDecode(r.tokens), std::string(kStanfordNoInput) + "Say hi.\n\n### Response:\nHi!");

  // Under the other templates the input follows the instruction.
  r = MustRender(*with_input, ChatTemplate::kPlain);
  EXPECT_EQ(MustDecode(r.tokens), "Translate.\n\nGuten Tag\nGood day");
}

TEST_F(SftTest, ShareGptRecordsParseWithCaseInsensitiveRolesAndDropATrailingQuestion) {
  auto c = ParseSftRecord(nlohmann::json::parse(R"({"id": "x", "conversations": [
        {"from": "System", "value": "Be brief."},
        {"from": "Human", "value": "Hi"},
        {"from": "GPT", "value": "Hello!"},
        {"from": "user", "value": "Bye"},
        {"from": "assistant", "value": "Goodbye."},
        {"from": "human", "value": "Unanswered?"}]})"),
                          SftFormat::kShareGpt);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->turns.size(), 5u);
  EXPECT_EQ(c->turns[0].role, Role::kSystem);
  EXPECT_EQ(c->turns[1].role, Role::kUser);
  EXPECT_EQ(c->turns[2].role, Role::kAssistant);
  EXPECT_EQ(c->turns[4].text, "Goodbye.");

  auto no_system = ParseSftRecord(nlohmann::json::parse(R"({"conversations": [
        {"from": "system", "value": "  "}, {"from": "human", "value": "Q"},
        {"from": "gpt", "value": "A"}]})"),
                                  SftFormat::kShareGpt);
  ASSERT_TRUE(no_system.ok()) << no_system.status();
  EXPECT_EQ(no_system->turns.size(), 2u) << "a blank system turn is dropped";
}

TEST_F(SftTest, SystemPromptAppearsOnceInTheFirstExchangeOnly) {
  const Conversation c = MakeConversation("Answer in English.", kExchanges);
  const RenderedConversation r = MustRender(c, ChatTemplate::kLlama2Chat);
  const std::string text = MustDecode(r.tokens);
  EXPECT_EQ(text.find("<<SYS>>\nAnswer in English.\n<</SYS>>\n\n"), std::string("[INST] ").size());
  EXPECT_EQ(text.find("<<SYS>>", 1), text.find("<<SYS>>"));
  // Without a system turn there is no <<SYS>> block at all.
  const RenderedConversation bare =
      MustRender(MakeConversation("", kExchanges), ChatTemplate::kLlama2Chat);
  EXPECT_EQ(MustDecode(bare.tokens).find("<<SYS>>"), std::string::npos);
  EXPECT_LT(bare.tokens.size(), r.tokens.size());
}

TEST_F(SftTest, TruncationDropsWholeTrailingExchangesAndKeepsMasksConsistent) {
  const Conversation c = MakeConversation("Be helpful.", kExchanges);
  for (ChatTemplate t : kTemplates) {
    SCOPED_TRACE(std::string(ChatTemplateName(t)));
    const RenderedConversation full = MustRender(c, t);
    const std::vector<MaskRun> runs = MaskRuns(full);
    ASSERT_EQ(runs.size(), 3u);

    auto same = TruncateConversation(full, static_cast<int64_t>(full.tokens.size()));
    ASSERT_TRUE(same.has_value());
    EXPECT_EQ(same->tokens, full.tokens);

    // Room for two exchanges (and part of the third prompt): exactly the
    // rendering of the first two exchanges.
    const RenderedConversation two =
        MustRender(MakeConversation("Be helpful.", {kExchanges[0], kExchanges[1]}), t);
    for (int64_t extra : {0, 3}) {
      auto cut = TruncateConversation(full, static_cast<int64_t>(runs[1].end) + extra);
      ASSERT_TRUE(cut.has_value());
      EXPECT_EQ(cut->tokens, two.tokens);
      EXPECT_EQ(cut->loss_mask, two.loss_mask);
    }

    // Only the first prompt and part of its answer fit: the prompt stays
    // whole, the answer is cut, the mask is the original's prefix.
    const int64_t limit = static_cast<int64_t>(runs[0].begin) + 2;
    auto partial = TruncateConversation(full, limit);
    ASSERT_TRUE(partial.has_value());
    ASSERT_EQ(static_cast<int64_t>(partial->tokens.size()), limit);
    EXPECT_EQ(partial->tokens, Slice(full.tokens, 0, limit));
    EXPECT_EQ(std::vector<uint8_t>(partial->loss_mask),
              std::vector<uint8_t>(full.loss_mask.begin(), full.loss_mask.begin() + limit));
    EXPECT_EQ(MaskRuns(*partial).size(), 1u);
    EXPECT_EQ(MaskRuns(*partial)[0].end - MaskRuns(*partial)[0].begin, 2u);

    // One answer token is the least that is worth keeping.
    EXPECT_TRUE(TruncateConversation(full, static_cast<int64_t>(runs[0].begin) + 1).has_value());
    EXPECT_FALSE(TruncateConversation(full, static_cast<int64_t>(runs[0].begin)).has_value());
    EXPECT_FALSE(TruncateConversation(full, 0).has_value());
  }
}

TEST_F(SftTest, RenderRefusesMalformedConversationsAndBadUtf8NamingTheTurn) {
  Conversation starts_with_answer;
  starts_with_answer.turns = {{Role::kAssistant, "A", ""}, {Role::kUser, "Q", ""}};
  auto r = RenderConversation(starts_with_answer, ChatTemplate::kPlain, *suite_tokenizer);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("turn 0"), std::string::npos) << r.status();

  Conversation ends_with_question = MakeConversation("", {{"Q", "A"}});
  ends_with_question.turns.push_back({Role::kUser, "Q2", ""});
  r = RenderConversation(ends_with_question, ChatTemplate::kPlain, *suite_tokenizer);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("assistant"), std::string::npos) << r.status();

  EXPECT_FALSE(RenderConversation(Conversation{}, ChatTemplate::kPlain, *suite_tokenizer).ok());

  const Conversation bad_utf8 = MakeConversation("", {{"Q", "bad \xff answer"}});
  for (ChatTemplate t : kTemplates) {
    r = RenderConversation(bad_utf8, t, *suite_tokenizer);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("turn 1"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("UTF-8"), std::string::npos) << r.status();
  }
}

struct MalformedCase {
  const char* record;
  SftFormat format;
  const char* message;  // Expected in the error.
};

TEST(SftRecordTest, EveryMalformedRecordIsRefusedNamingTheField) {
  const MalformedCase cases[] = {
      {R"([1, 2])", SftFormat::kShareGpt, "record must be a JSON object, got array"},
      {R"("text")", SftFormat::kAlpaca, "record must be a JSON object, got string"},
      {R"({})", SftFormat::kShareGpt, "'conversations' is missing"},
      {R"({"conversations": null})", SftFormat::kShareGpt, "'conversations' is missing"},
      {R"({"conversations": "hi"})", SftFormat::kShareGpt, "'conversations' must be an array"},
      {R"({"conversations": []})", SftFormat::kShareGpt, "'conversations' is empty"},
      {R"({"conversations": [1]})", SftFormat::kShareGpt, "'conversations[0]' must be an object"},
      {R"({"conversations": [{"value": "x"}]})", SftFormat::kShareGpt,
       "'conversations[0].from' is missing"},
      {R"({"conversations": [{"from": 3, "value": "x"}]})", SftFormat::kShareGpt,
       "'conversations[0].from' must be a string, got number"},
      {R"({"conversations": [{"from": "human"}]})", SftFormat::kShareGpt,
       "'conversations[0].value' is missing"},
      {R"({"conversations": [{"from": "human", "value": ["x"]}]})", SftFormat::kShareGpt,
       "'conversations[0].value' must be a string, got array"},
      {R"({"conversations": [{"from": "bot", "value": "x"}]})", SftFormat::kShareGpt,
       "'conversations[0].from' has unknown role 'bot'"},
      {R"({"conversations": [{"from": "gpt", "value": "x"}]})", SftFormat::kShareGpt,
       "'conversations[0].from' is 'gpt' but a conversation starts"},
      {R"({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]})",
       SftFormat::kShareGpt, "'conversations[1].from' is 'human' but a user turn came just before"},
      {R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                             {"from": "gpt", "value": "c"}]})",
       SftFormat::kShareGpt, "'conversations[2].from' is 'gpt' but an assistant turn came"},
      {R"({"conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "s"}]})",
       SftFormat::kShareGpt, "'conversations[1].from' is 'system', which may only come first"},
      {R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}]})",
       SftFormat::kShareGpt, "'conversations[1].value' is empty"},
      {R"({"conversations": [{"from": "human", "value": "a"}]})", SftFormat::kShareGpt,
       "'conversations' has no assistant turn"},
      {R"({"conversations": [{"from": "system", "value": "s"}]})", SftFormat::kShareGpt,
       "'conversations' has no assistant turn"},
      {R"({"output": "o"})", SftFormat::kAlpaca, "'instruction' is missing"},
      {R"({"instruction": 7, "output": "o"})", SftFormat::kAlpaca,
       "'instruction' must be a string, got number"},
      {R"({"instruction": "", "output": "o"})", SftFormat::kAlpaca, "'instruction' is empty"},
      {R"({"instruction": "i"})", SftFormat::kAlpaca, "'output' is missing"},
      {R"({"instruction": "i", "output": null})", SftFormat::kAlpaca, "'output' is missing"},
      {R"({"instruction": "i", "output": {"a": 1}})", SftFormat::kAlpaca,
       "'output' must be a string, got object"},
      {R"({"instruction": "i", "output": "\n"})", SftFormat::kAlpaca, "'output' is empty"},
      {R"({"instruction": "i", "input": 5, "output": "o"})", SftFormat::kAlpaca,
       "'input' must be a string, got number"},
      // A ShareGPT record read as Alpaca (the wrong --sft-format) names what is missing.
      {R"({"conversations": []})", SftFormat::kAlpaca, "'instruction' is missing"},
  };
  for (const MalformedCase& c : cases) {
    auto parsed = ParseSftRecord(nlohmann::json::parse(c.record), c.format);
    ASSERT_FALSE(parsed.ok()) << c.record;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.message), std::string::npos)
        << "record " << c.record << "\n  got: " << parsed.status().message()
        << "\n  want: " << c.message;
  }
}

TEST(SftRecordTest, FormatAndTemplateNamesRoundTripAndUnknownOnesAreRefused) {
  for (SftFormat f : {SftFormat::kShareGpt, SftFormat::kAlpaca}) {
    EXPECT_EQ(*ParseSftFormat(SftFormatName(f)), f);
  }
  for (ChatTemplate t : kTemplates) EXPECT_EQ(*ParseChatTemplate(ChatTemplateName(t)), t);
  auto bad = ParseSftFormat("openai");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'openai'"), std::string::npos);
  auto bad_template = ParseChatTemplate("chatml");
  ASSERT_FALSE(bad_template.ok());
  EXPECT_NE(bad_template.status().message().find("'chatml'"), std::string::npos);
}

}  // namespace
}  // namespace llamapro
