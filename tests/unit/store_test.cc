#include "data/store.h"

#include <random>
#include <string>
#include <vector>

#include "base/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::ScratchDir;

StoreTokenizer TestTokenizer(const std::string& fingerprint = "aa11") {
  return {.fingerprint = fingerprint,
          .path = "/models/" + fingerprint + "/tokenizer.model",
          .vocab_size = 1000,
          .bos_id = 1,
          .eos_id = 2,
          .pad_id = -1};
}

std::unique_ptr<TokenStore> OpenStore(const std::string& dir,
                                      TokenStore::Mode mode = TokenStore::Mode::kReadWrite) {
  auto store = TokenStore::Open(dir, mode);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

std::vector<NewDocument> Documents(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> length(1, 40);
  std::uniform_int_distribution<int32_t> id(3, 999);
  std::vector<NewDocument> docs(count);
  for (NewDocument& d : docs) {
    d.tokens.resize(length(rng));
    for (int32_t& t : d.tokens) t = id(rng);
  }
  return docs;
}

FileRecord File(const std::string& sha, uint64_t records, bool complete) {
  return {.sha256 = sha,
          .path = "in/" + sha,
          .bytes = 100,
          .records_done = records,
          .complete = complete};
}

TEST(StoreTest, DocumentsRoundTripWithTheirCountersAndStreamOffsets) {
  ScratchDir dir;
  auto store = OpenStore(dir.Join("s"));
  ASSERT_TRUE(store->BindTokenizer(TestTokenizer()).ok());
  auto corpus = store->GetOrCreateCorpus({.name = "code", .held_out_fraction = 0.2});
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  std::vector<NewDocument> docs = Documents(300, 1);
  ASSERT_TRUE(
      store->Append(&*corpus, {docs.begin(), docs.begin() + 100}, File("f1", 100, false)).ok());
  ASSERT_TRUE(
      store->Append(&*corpus, {docs.begin() + 100, docs.end()}, File("f1", 300, true)).ok());
  store.reset();

  auto reader = OpenStore(dir.Join("s"), TokenStore::Mode::kReadOnly);
  auto info = reader->GetCorpus("code");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->documents, 300u);
  EXPECT_EQ(info->bytes, 100u) << "a file's bytes count once";
  uint64_t tokens = 0, held_out = 0, held_out_tokens = 0, train_stream = 0, held_stream = 0;
  for (uint64_t n = 0; n < 300; ++n) {
    auto doc = reader->ReadDocument(info->id, n);
    ASSERT_TRUE(doc.ok()) << doc.status();
    EXPECT_EQ(doc->tokens, docs[n].tokens);
    EXPECT_EQ(doc->held_out, TokenStore::IsHeldOut(docs[n].tokens, 0.2));
    const Split split = doc->held_out ? Split::kHeldOut : Split::kTrain;
    uint64_t& stream = doc->held_out ? held_stream : train_stream;
    // The document starts where the previous one of its split ended.
    auto located = reader->Locate(info->id, split, stream);
    ASSERT_TRUE(located.ok());
    EXPECT_EQ(located->number, n);
    EXPECT_EQ(located->start, stream);
    auto inside = reader->Locate(info->id, split, stream + doc->tokens.size());
    ASSERT_TRUE(inside.ok());
    EXPECT_EQ(inside->number, n) << "BOS + tokens + EOS: the last position is still this doc";
    stream += doc->tokens.size() + 2;
    tokens += doc->tokens.size();
    if (doc->held_out) {
      ++held_out;
      held_out_tokens += doc->tokens.size();
    }
  }
  EXPECT_EQ(info->tokens, tokens);
  EXPECT_EQ(info->held_out_documents, held_out);
  EXPECT_EQ(info->held_out_tokens, held_out_tokens);
  EXPECT_EQ(info->train_stream, train_stream);
  EXPECT_EQ(info->held_out_stream, held_stream);
  EXPECT_GT(held_out, 30u);
  EXPECT_LT(held_out, 90u);
  EXPECT_EQ(reader->Locate(info->id, Split::kTrain, train_stream + 5)->number,
            reader->Locate(info->id, Split::kTrain, train_stream - 1)->number)
      << "past the end: the last document (callers bound by the stream length)";
  auto file = reader->GetFile(info->id, "f1");
  ASSERT_TRUE(file.ok() && file->has_value());
  EXPECT_TRUE((*file)->complete);
  EXPECT_EQ((*file)->records_done, 300u);
}

TEST(StoreTest, LossMasksRoundTripForSftDocuments) {
  ScratchDir dir;
  auto store = OpenStore(dir.Join("s"));
  ASSERT_TRUE(store->BindTokenizer(TestTokenizer()).ok());
  auto corpus = store->GetOrCreateCorpus({.name = "chat",
                                          .kind = CorpusKind::kSft,
                                          .held_out_fraction = 0,
                                          .sft_format = "sharegpt",
                                          .chat_template = "llama2-chat"});
  ASSERT_TRUE(corpus.ok());
  NewDocument a{.tokens = {5, 6, 7, 8, 9}, .loss_mask = {0, 0, 1, 1, 0}};
  NewDocument b{.tokens = {10, 11}, .loss_mask = {1, 1}};
  ASSERT_TRUE(store->Append(&*corpus, {a, b}, File("x", 2, true)).ok());
  EXPECT_EQ(corpus->train_stream, 2u) << "one stream position per conversation";
  auto doc = store->ReadDocument(corpus->id, 0);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->loss_mask, a.loss_mask);
  EXPECT_EQ(store->ReadDocument(corpus->id, 1)->loss_mask, b.loss_mask);
  EXPECT_EQ(store->Locate(corpus->id, Split::kTrain, 1)->number, 1u);
}

TEST(StoreTest, HeldOutSelectionIsDeterministicAndNearItsFraction) {
  std::vector<NewDocument> docs = Documents(20000, 2);
  int held = 0;
  for (const NewDocument& d : docs) {
    EXPECT_EQ(TokenStore::IsHeldOut(d.tokens, 0.1), TokenStore::IsHeldOut(d.tokens, 0.1));
    held += TokenStore::IsHeldOut(d.tokens, 0.1) ? 1 : 0;
  }
  EXPECT_NEAR(held / 20000.0, 0.1, 0.01);
  EXPECT_FALSE(TokenStore::IsHeldOut(docs[0].tokens, 0.0));
}

TEST(StoreTest, ADifferentTokenizerIsRefusedNamingBoth) {
  ScratchDir dir;
  auto store = OpenStore(dir.Join("s"));
  ASSERT_TRUE(store->BindTokenizer(TestTokenizer("aa11")).ok());
  ASSERT_TRUE(store->BindTokenizer(TestTokenizer("aa11")).ok()) << "the same one is fine";
  store.reset();
  store = OpenStore(dir.Join("s"));
  absl::Status status = store->BindTokenizer(TestTokenizer("bb22"));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("/models/aa11/tokenizer.model"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("/models/bb22/tokenizer.model"));
}

TEST(StoreTest, CorpusSettingsCannotChangeAfterCreation) {
  ScratchDir dir;
  auto store = OpenStore(dir.Join("s"));
  ASSERT_TRUE(store->GetOrCreateCorpus({.name = "web", .held_out_fraction = 0.01}).ok());
  auto again = store->GetOrCreateCorpus({.name = "web", .held_out_fraction = 0.01});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, 1u);
  EXPECT_THAT(
      std::string(
          store->GetOrCreateCorpus({.name = "web", .held_out_fraction = 0.02}).status().message()),
      HasSubstr("created with held-out fraction 0.01"));
  EXPECT_THAT(
      std::string(store
                      ->GetOrCreateCorpus(
                          {.name = "web", .kind = CorpusKind::kSft, .held_out_fraction = 0.01})
                      .status()
                      .message()),
      HasSubstr("created with kind pretrain"));
  auto other = store->GetOrCreateCorpus({.name = "math"});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->id, 2u);
  EXPECT_THAT(
      std::string(store->GetCorpus("nope").status().message()),
      HasSubstr("no corpus 'nope' in token store " + dir.Join("s") + "; it holds: math, web"));
}

TEST(StoreTest, OpeningRefusesWhatIsNotAStore) {
  ScratchDir dir;
  ASSERT_TRUE(MakeDirs(dir.Join("busy")).ok());
  testing::WriteBytes(dir.Join("busy/notes.txt"), "mine");
  auto busy = TokenStore::Open(dir.Join("busy"), TokenStore::Mode::kReadWrite);
  ASSERT_FALSE(busy.ok());
  EXPECT_THAT(std::string(busy.status().message()), HasSubstr("is not a token store"));
  auto missing = TokenStore::Open(dir.Join("none"), TokenStore::Mode::kReadOnly);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(PathExists(dir.Join("none")));
}

TEST(StoreTest, DigestsAreEqualForEqualContentsOnly) {
  ScratchDir dir;
  std::vector<NewDocument> docs = Documents(50, 3);
  std::string digests[3];
  for (int i = 0; i < 3; ++i) {
    auto store = OpenStore(dir.Join("s" + std::to_string(i)));
    ASSERT_TRUE(store->BindTokenizer(TestTokenizer()).ok());
    auto corpus = store->GetOrCreateCorpus({.name = "c"});
    ASSERT_TRUE(corpus.ok());
    if (i < 2) {
      // Different batch boundaries, same result.
      const size_t split = i == 0 ? 10 : 40;
      ASSERT_TRUE(
          store->Append(&*corpus, {docs.begin(), docs.begin() + split}, File("f", split, false))
              .ok());
      ASSERT_TRUE(
          store->Append(&*corpus, {docs.begin() + split, docs.end()}, File("f", 50, true)).ok());
    } else {
      ASSERT_TRUE(
          store->Append(&*corpus, {docs.begin(), docs.end() - 1}, File("f", 50, true)).ok());
    }
    auto digest = store->ContentsDigest();
    ASSERT_TRUE(digest.ok());
    digests[i] = *digest;
  }
  EXPECT_EQ(digests[0], digests[1]);
  EXPECT_NE(digests[0], digests[2]);
}

TEST(StoreTest, AppendRefusesInvalidDocuments) {
  ScratchDir dir;
  auto store = OpenStore(dir.Join("s"));
  auto corpus = store->GetOrCreateCorpus({.name = "c"});
  ASSERT_TRUE(corpus.ok());
  EXPECT_FALSE(store->Append(&*corpus, Documents(1, 1), File("f", 1, true)).ok())
      << "no tokenizer bound yet";
  ASSERT_TRUE(store->BindTokenizer(TestTokenizer()).ok());
  EXPECT_FALSE(store->Append(&*corpus, {NewDocument{}}, File("f", 1, true)).ok());
  EXPECT_FALSE(store->Append(&*corpus, {NewDocument{.tokens = {5000}}}, File("f", 1, true)).ok());
  EXPECT_FALSE(
      store->Append(&*corpus, {NewDocument{.tokens = {5, 6}, .loss_mask = {1}}}, File("f", 1, true))
          .ok());
  EXPECT_EQ(store->GetCorpus("c")->documents, 0u) << "a refused batch writes nothing";
}

}  // namespace
}  // namespace llamapro
