#include "data/ingest.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "base/file.h"
#include "data/store.h"
#include "data/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::ScratchDir;

// Three inputs of different kinds: JSONL, zstd JSONL, text split by lines.
std::vector<std::string> WriteInputs(const ScratchDir& dir) {
  testing::WriteJsonl(dir.Join("a.jsonl"), testing::RandomDocuments(300, 5, 120, 1));
  std::string b;
  for (const std::string& doc : testing::RandomDocuments(200, 5, 120, 2)) {
    b += nlohmann::json({{"text", doc}}).dump() + "\n";
  }
  testing::WriteZstd(dir.Join("b.jsonl.zst"), b);
  std::vector<std::string> lines = testing::RandomDocuments(250, 1, 30, 3);
  for (std::string& line : lines) {
    for (char& c : line) c = c == '\n' ? ' ' : c;
  }
  testing::WriteLines(dir.Join("c.txt"), lines);
  return {dir.Join("a.jsonl"), dir.Join("b.jsonl.zst"), dir.Join("c.txt")};
}

IngestOptions Options(const std::string& store, const std::vector<std::string>& inputs) {
  IngestOptions options;
  options.store_dir = store;
  options.corpus = "web";
  options.tokenizer = testing::TestTokenizerPath();
  options.inputs = inputs;
  options.input.split_lines = true;
  options.held_out = 0.05;
  options.batch_documents = 16;  // Many commits: many points to be killed at.
  options.threads = 2;
  return options;
}

std::string Digest(const std::string& store_dir) {
  auto store = TokenStore::Open(store_dir, TokenStore::Mode::kReadOnly);
  EXPECT_TRUE(store.ok()) << store.status();
  auto digest = (*store)->ContentsDigest();
  EXPECT_TRUE(digest.ok());
  return *digest;
}

TEST(IngestTest, IngestingTheSameInputsTwiceIsANoOp) {
  ScratchDir dir;
  std::vector<std::string> inputs = WriteInputs(dir);
  auto first = Ingest(Options(dir.Join("store"), inputs), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->files_ingested, 3);
  const std::string before = Digest(dir.Join("store"));
  auto second = Ingest(Options(dir.Join("store"), inputs), nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->files_ingested, 0);
  EXPECT_EQ(second->files_skipped, 3);
  EXPECT_EQ(second->documents, 0u);
  EXPECT_EQ(Digest(dir.Join("store")), before);
  // The same content under another name is recognised too.
  testing::WriteBytes(dir.Join("copy.jsonl"), testing::ReadBytes(inputs[0]));
  auto copy = Ingest(Options(dir.Join("store"), {dir.Join("copy.jsonl")}), nullptr);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->files_skipped, 1);
  EXPECT_THAT(copy->skipped[0], HasSubstr("same content as " + inputs[0]));
  EXPECT_EQ(Digest(dir.Join("store")), before);
}

TEST(IngestTest, ReportedCountsEqualWhatIsStored) {
  ScratchDir dir;
  std::vector<std::string> inputs = WriteInputs(dir);
  auto report = Ingest(Options(dir.Join("store"), inputs), nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  auto store = TokenStore::Open(dir.Join("store"), TokenStore::Mode::kReadOnly);
  ASSERT_TRUE(store.ok());
  auto corpus = (*store)->GetCorpus("web");
  ASSERT_TRUE(corpus.ok());
  EXPECT_EQ(report->documents, 750u);
  EXPECT_EQ(corpus->documents, report->documents);
  EXPECT_EQ(corpus->tokens, report->tokens);
  EXPECT_EQ(corpus->held_out_documents, report->held_out_documents);
  uint64_t stored = 0;
  for (uint64_t n = 0; n < corpus->documents; ++n) {
    auto doc = (*store)->ReadDocument(corpus->id, n);
    ASSERT_TRUE(doc.ok());
    stored += doc->tokens.size();
  }
  EXPECT_EQ(stored, report->tokens);
  // And the stored ids are the tokenizer's for that text, in input order.
  auto tokenizer = Tokenizer::Load(testing::TestTokenizerPath());
  ASSERT_TRUE(tokenizer.ok());
  std::vector<int32_t> expected;
  const std::string first_text = testing::RandomDocuments(300, 5, 120, 1)[0];
  ASSERT_TRUE((*tokenizer)->Encode(first_text, &expected).ok());
  EXPECT_EQ((*store)->ReadDocument(corpus->id, 0)->tokens, expected);
}

TEST(IngestTest, ThreadCountAndBatchSizeDoNotChangeTheStore) {
  ScratchDir dir;
  std::vector<std::string> inputs = WriteInputs(dir);
  IngestOptions one = Options(dir.Join("one"), inputs);
  one.threads = 1;
  one.batch_documents = 1000;
  IngestOptions many = Options(dir.Join("many"), inputs);
  many.threads = 3;
  many.batch_documents = 5;
  ASSERT_TRUE(Ingest(one, nullptr).ok());
  ASSERT_TRUE(Ingest(many, nullptr).ok());
  EXPECT_EQ(Digest(dir.Join("one")), Digest(dir.Join("many")));
}

// Runs an ingest in a child process that SIGKILLs itself right after its
// `kill_after`-th commit (progress is reported after each commit).
void IngestKilledAfter(const IngestOptions& options, int kill_after) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int commits = 0;
    auto report = Ingest(options, [&](const IngestProgress&) {
      if (++commits == kill_after) raise(SIGKILL);
    });
    _exit(report.ok() ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the ingest should have been killed";
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

TEST(IngestTest, AnIngestKilledMidwayAndRerunEqualsAnUninterruptedOne) {
  ScratchDir dir;
  std::vector<std::string> inputs = WriteInputs(dir);
  ASSERT_TRUE(Ingest(Options(dir.Join("reference"), inputs), nullptr).ok());
  const std::string reference = Digest(dir.Join("reference"));
  // Killed in the first file, at a file boundary, in the last file; and twice.
  for (std::vector<int> kills : {std::vector<int>{3}, {20}, {40}, {5, 25}}) {
    const std::string store =
        dir.Join("killed-" + std::to_string(kills[0]) + "-" + std::to_string(kills.size()));
    for (int k : kills) IngestKilledAfter(Options(store, inputs), k);
    EXPECT_NE(Digest(store), reference) << "the kill left the ingest unfinished";
    auto rerun = Ingest(Options(store, inputs), nullptr);
    ASSERT_TRUE(rerun.ok()) << rerun.status();
    EXPECT_GE(rerun->files_resumed + rerun->files_skipped, 1);
    EXPECT_EQ(Digest(store), reference) << "killed after commits " << kills[0];
  }
}

TEST(IngestTest, MalformedRecordsAreCountedAndReportedWithFileAndLine) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("bad.jsonl"),
                      "{\"text\": \"fine document one\"}\n"
                      "{oops\n"
                      "{\"body\": \"no text field\"}\n"
                      "{\"text\": [\"not\", \"a string\"]}\n"
                      "{\"text\": \"bad \xfe utf8\"}\n"
                      "\n"
                      "{\"text\": \"fine document two\"}\n");
  testing::WriteBytes(dir.Join("bad.txt"), "good line\nbroken \xc3 line\n");
  testing::WriteBytes(dir.Join("empty.jsonl"), "");
  IngestOptions options = Options(
      dir.Join("store"), {dir.Join("bad.jsonl"), dir.Join("bad.txt"), dir.Join("empty.jsonl")});
  options.input.split_lines = true;
  auto report = Ingest(options, nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->documents, 3u);
  EXPECT_EQ(report->malformed, 6u);
  EXPECT_EQ(report->empty, 1u);
  const std::string a = dir.Join("bad.jsonl");
  EXPECT_THAT(
      report->problems,
      ::testing::ElementsAre(HasSubstr(a + ":2: not valid JSON"), a + ":3: missing field 'text'",
                             a + ":4: field 'text' is an array, expected a string",
                             HasSubstr(a + ":5: not valid JSON"),  // Invalid UTF-8.
                             dir.Join("bad.txt") + ":2: invalid UTF-8 at byte 7",
                             dir.Join("empty.jsonl") + ": no documents (empty file)"));

  IngestOptions strict = options;
  strict.store_dir = dir.Join("strict");
  strict.strict = true;
  auto failed = Ingest(strict, nullptr);
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr("malformed record (--strict): " + a + ":2: not valid JSON"));
  auto store = TokenStore::Open(dir.Join("strict"), TokenStore::Mode::kReadOnly);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->GetCorpus("web")->documents, 1u) << "what came before the bad record";
}

TEST(IngestTest, ADifferentTokenizerIsRefused) {
  ScratchDir dir;
  std::vector<std::string> inputs = WriteInputs(dir);
  ASSERT_TRUE(Ingest(Options(dir.Join("store"), {inputs[0]}), nullptr).ok());
  IngestOptions other = Options(dir.Join("store"), {inputs[1]});
  other.tokenizer = testing::TestTokenizerPath(1);
  auto report = Ingest(other, nullptr);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(report.status().message()), HasSubstr(testing::TestTokenizerPath(1)));
  EXPECT_THAT(std::string(report.status().message()), HasSubstr(testing::TestTokenizerPath(0)));
}

TEST(IngestTest, CompressedAndPlainInputsGiveTheSameDocuments) {
  ScratchDir dir;
  std::string jsonl;
  for (const std::string& doc : testing::RandomDocuments(100, 5, 60, 9)) {
    jsonl += nlohmann::json({{"text", doc}}).dump() + "\n";
  }
  testing::WriteBytes(dir.Join("p.jsonl"), jsonl);
  testing::WriteGzip(dir.Join("p.jsonl.gz"), jsonl);
  testing::WriteZstd(dir.Join("p.jsonl.zst"), jsonl);
  std::string digests[3];
  const char* names[] = {"p.jsonl", "p.jsonl.gz", "p.jsonl.zst"};
  for (int i = 0; i < 3; ++i) {
    IngestOptions options = Options(dir.Join(std::string("s") + names[i]), {dir.Join(names[i])});
    auto report = Ingest(options, nullptr);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->documents, 100u);
    auto store = TokenStore::Open(options.store_dir, TokenStore::Mode::kReadOnly);
    ASSERT_TRUE(store.ok());
    std::string all;
    for (uint64_t n = 0; n < 100; ++n) {
      auto doc = (*store)->ReadDocument(1, n);
      ASSERT_TRUE(doc.ok());
      for (int32_t t : doc->tokens) all += std::to_string(t) + ",";
    }
    digests[i] = all;
  }
  EXPECT_EQ(digests[0], digests[1]);
  EXPECT_EQ(digests[0], digests[2]);
}

TEST(IngestTest, SftConversationsAreStoredWithTheirLossMasks) {
  ScratchDir dir;
  testing::WriteBytes(
      dir.Join("chat.jsonl"),
      R"({"conversations": [{"from": "human", "value": "what is two plus two"}, {"from": "gpt", "value": "four"}]})"
      "\n"
      R"({"conversations": [{"from": "gpt", "value": "answer first"}]})"
      "\n");
  IngestOptions options = Options(dir.Join("store"), {dir.Join("chat.jsonl")});
  options.corpus = "chat";
  options.sft = SftFormat::kShareGpt;
  options.chat_template = ChatTemplate::kPlain;
  options.held_out = 0;
  auto report = Ingest(options, nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->documents, 1u);
  EXPECT_EQ(report->malformed, 1u);
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_THAT(report->problems[0], HasSubstr(dir.Join("chat.jsonl") + ":2: "));
  auto store = TokenStore::Open(dir.Join("store"), TokenStore::Mode::kReadOnly);
  ASSERT_TRUE(store.ok());
  auto corpus = (*store)->GetCorpus("chat");
  ASSERT_TRUE(corpus.ok());
  EXPECT_EQ(corpus->kind, CorpusKind::kSft);
  auto doc = (*store)->ReadDocument(corpus->id, 0);
  ASSERT_TRUE(doc.ok());
  ASSERT_EQ(doc->loss_mask.size(), doc->tokens.size());
  int masked = 0;
  for (uint8_t m : doc->loss_mask) masked += m;
  EXPECT_GT(masked, 0);
  EXPECT_LT(masked, static_cast<int>(doc->tokens.size()));
}

TEST(IngestTest, MissingInputsAndBadOptionsFailBeforeWriting) {
  ScratchDir dir;
  auto missing = Ingest(Options(dir.Join("store"), {dir.Join("nope.jsonl")}), nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir.Join("nope.jsonl")));
  IngestOptions bad = Options(dir.Join("store"), WriteInputs(dir));
  bad.held_out = 1.5;
  EXPECT_FALSE(Ingest(bad, nullptr).ok());
  EXPECT_FALSE(PathExists(dir.Join("store")));
}

}  // namespace
}  // namespace llamapro
