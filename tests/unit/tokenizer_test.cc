#include "data/tokenizer.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "base/sha256.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using testing::ScratchDir;

constexpr char kFixture[] = LLAMAPRO_TOKENIZER_FIXTURE;
constexpr char kDebianSpmEncode[] = "/usr/bin/spm_encode";

std::vector<std::string> FixtureLines() {
  std::string text = testing::ReadBytes(kFixture);
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// Trains one tokenizer for the whole suite (training takes about a second).
// Shared by the suite: set up once in SetUpTestSuite.
ScratchDir* suite_dir = nullptr;
Tokenizer* suite_tokenizer = nullptr;

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_dir = new ScratchDir();
    TokenizerTrainOptions options;
    options.inputs = {kFixture};
    options.vocab_size = 1000;
    options.out_dir = suite_dir->Join("tok");
    options.threads = 2;
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

  static std::string ModelDir() { return suite_dir->Join("tok"); }
  static std::string ModelPath() { return suite_dir->Join("tok/tokenizer.model"); }

  static std::vector<int32_t> MustEncode(absl::string_view text) {
    std::vector<int32_t> ids;
    absl::Status status = suite_tokenizer->Encode(text, &ids);
    EXPECT_TRUE(status.ok()) << status;
    return ids;
  }
};

TEST_F(TokenizerTest, TrainingWritesTheFilesTransformersLoads) {
  for (const char* name :
       {"tokenizer.model", "tokenizer.vocab", "tokenizer_config.json", "special_tokens_map.json"}) {
    EXPECT_TRUE(PathExists(JoinPath(ModelDir(), name))) << name;
  }
  auto config =
      nlohmann::json::parse(testing::ReadBytes(JoinPath(ModelDir(), "tokenizer_config.json")));
  EXPECT_EQ(config["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["add_eos_token"], false);
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["unk_token"], "<unk>");
  EXPECT_EQ(config["model_max_length"], 4096);
  auto special =
      nlohmann::json::parse(testing::ReadBytes(JoinPath(ModelDir(), "special_tokens_map.json")));
  EXPECT_EQ(special["bos_token"], "<s>");
  // The vocab file lists every piece, one per line.
  std::vector<std::string> vocab_lines = absl::StrSplit(
      testing::ReadBytes(JoinPath(ModelDir(), "tokenizer.vocab")), '\n', absl::SkipEmpty());
  EXPECT_EQ(vocab_lines.size(), 1000u);
}

TEST_F(TokenizerTest, InfoReportsLlamaStyleSpecialIds) {
  const TokenizerInfo& info = suite_tokenizer->info();
  EXPECT_EQ(info.vocab_size, 1000);
  EXPECT_EQ(info.unk_id, 0);
  EXPECT_EQ(info.bos_id, 1);
  EXPECT_EQ(info.eos_id, 2);
  EXPECT_EQ(info.pad_id, -1);
  EXPECT_TRUE(info.add_bos);
  EXPECT_FALSE(info.add_eos);
  EXPECT_EQ(info.path, ModelPath());
  EXPECT_EQ(suite_tokenizer->IdToPiece(1), "<s>");
  EXPECT_EQ(suite_tokenizer->PieceToId("</s>"), 2);
  EXPECT_EQ(suite_tokenizer->IdToPiece(3), "<0x00>") << "byte pieces follow the specials";
  EXPECT_EQ(suite_tokenizer->IdToPiece(1000), "");
  EXPECT_EQ(suite_tokenizer->PieceToId("no such piece, surely"), 0) << "the unknown id";
}

TEST_F(TokenizerTest, EncodingEqualsDebiansSpmEncodeOnEveryFixtureLine) {
  if (access(kDebianSpmEncode, X_OK) != 0) {
    GTEST_SKIP() << kDebianSpmEncode
                 << " is missing: run scripts/setup.sh (it installs Debian's sentencepiece)";
  }
  ScratchDir out;
  const std::string ids_path = out.Join("ids.txt");
  const std::string command =
      absl::StrCat(kDebianSpmEncode, " --model '", ModelPath(), "' --output_format=id < '",
                   kFixture, "' > '", ids_path, "'");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  std::vector<std::string> expected = absl::StrSplit(testing::ReadBytes(ids_path), '\n');
  ASSERT_FALSE(expected.empty());
  expected.pop_back();  // After the last newline.
  const std::vector<std::string> lines = FixtureLines();
  ASSERT_EQ(expected.size(), lines.size());
  int byte_fallback_lines = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::vector<int32_t> want;
    for (absl::string_view id : absl::StrSplit(expected[i], ' ', absl::SkipEmpty())) {
      int32_t v;
      ASSERT_TRUE(absl::SimpleAtoi(id, &v)) << expected[i];
      want.push_back(v);
    }
    std::vector<int32_t> got = MustEncode(lines[i]);
    EXPECT_EQ(got, want) << "fixture line " << i + 1 << ": " << lines[i];
    for (int32_t id : got) {
      if (id >= 3 && id < 3 + 256) {
        ++byte_fallback_lines;
        break;
      }
    }
  }
  // The fixture has tabs (no piece for them): byte fallback was exercised.
  EXPECT_GT(byte_fallback_lines, 0);
}

TEST_F(TokenizerTest, DecodeInvertsEncodeOnEveryFixtureLine) {
  for (const std::string& line : FixtureLines()) {
    std::vector<int32_t> ids = MustEncode(line);
    auto text = suite_tokenizer->Decode(ids);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, line);
  }
  // Characters never seen in training come back through byte fallback.
  const std::string unseen = "Ωμέγα ⚗ 𝄞 ✓ — ℵ₀ ∑";
  auto text = suite_tokenizer->Decode(MustEncode(unseen));
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, unseen);
}

TEST_F(TokenizerTest, EncodeDocumentAddsBosAndEosAsTheConfigSays) {
  const std::vector<int32_t> body = MustEncode("Hello world");
  std::vector<int32_t> ids;
  ASSERT_TRUE(suite_tokenizer->EncodeDocument("Hello world", &ids).ok());
  std::vector<int32_t> want = {1};
  want.insert(want.end(), body.begin(), body.end());
  EXPECT_EQ(ids, want);

  // The same model with a config asking for EOS too.
  ScratchDir dir;
  ASSERT_TRUE(MakeDirs(dir.Join("eos")).ok());
  testing::WriteBytes(dir.Join("eos/tokenizer.model"), testing::ReadBytes(ModelPath()));
  testing::WriteBytes(dir.Join("eos/tokenizer_config.json"),
                      R"({"add_bos_token": false, "add_eos_token": true})");
  auto with_eos = Tokenizer::Load(dir.Join("eos"));
  ASSERT_TRUE(with_eos.ok()) << with_eos.status();
  EXPECT_FALSE((*with_eos)->info().add_bos);
  EXPECT_TRUE((*with_eos)->info().add_eos);
  ASSERT_TRUE((*with_eos)->EncodeDocument("Hello world", &ids).ok());
  want = body;
  want.push_back(2);
  EXPECT_EQ(ids, want);

  // Without tokenizer_config.json: LLaMA's defaults.
  ASSERT_TRUE(MakeDirs(dir.Join("bare")).ok());
  testing::WriteBytes(dir.Join("bare/tokenizer.model"), testing::ReadBytes(ModelPath()));
  auto bare = Tokenizer::Load(dir.Join("bare/tokenizer.model"));
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_TRUE((*bare)->info().add_bos);
  EXPECT_FALSE((*bare)->info().add_eos);
}

TEST_F(TokenizerTest, InvalidUtf8IsRefusedWithItsOffset) {
  std::vector<int32_t> ids = {7};
  const std::string cases[] = {
      std::string("abc\xff"),            // Never valid.
      std::string("ok \xc3"),            // Truncated 2-byte sequence.
      std::string("\xc0\xaf"),           // Overlong '/'.
      std::string("\xed\xa0\x80"),       // UTF-16 surrogate.
      std::string("\xf4\x90\x80\x80"),   // Above U+10FFFF.
      std::string("x\xe2\x82"),          // Truncated 3-byte sequence.
      std::string("\x80 continuation"),  // Stray continuation byte.
  };
  for (const std::string& text : cases) {
    absl::Status status = suite_tokenizer->Encode(text, &ids);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << absl::CEscape(text);
    EXPECT_NE(status.message().find("not valid UTF-8"), std::string::npos) << status;
  }
  absl::Status status = suite_tokenizer->Encode("abc\xff", &ids);
  EXPECT_NE(status.message().find("offset 3"), std::string::npos) << status;
  EXPECT_FALSE(suite_tokenizer->EncodeDocument("abc\xff", &ids).ok());
  EXPECT_TRUE(ValidateUtf8("Grüße 中文 😀 \xf4\x8f\xbf\xbf").ok()) << "U+10FFFF is valid";
}

TEST_F(TokenizerTest, DecodeRefusesIdsOutsideTheVocabulary) {
  auto text = suite_tokenizer->Decode(std::vector<int32_t>{5, 1000});
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("id 1000 at position 1"), std::string::npos)
      << text.status();
  EXPECT_FALSE(suite_tokenizer->Decode(std::vector<int32_t>{-1}).ok());
}

TEST_F(TokenizerTest, FingerprintIsTheSha256OfTheModelFileAndDiffersForAnotherModel) {
  auto file_hash = Sha256File(ModelPath());
  ASSERT_TRUE(file_hash.ok());
  EXPECT_EQ(suite_tokenizer->info().fingerprint, *file_hash);
  EXPECT_EQ(suite_tokenizer->info().fingerprint.size(), 64u);

  ScratchDir dir;
  TokenizerTrainOptions options;
  options.inputs = {kFixture};
  options.vocab_size = 800;
  options.out_dir = dir.Join("other");
  ASSERT_TRUE(TrainTokenizer(options).ok());
  auto other = Tokenizer::Load(options.out_dir);
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)->info().fingerprint, suite_tokenizer->info().fingerprint);
  EXPECT_EQ((*other)->info().vocab_size, 800);
}

TEST_F(TokenizerTest, ConcurrentEncodingGivesTheSameIds) {
  const std::vector<std::string> lines = FixtureLines();
  std::vector<std::vector<int32_t>> serial;
  serial.reserve(lines.size());
  for (const std::string& line : lines) serial.push_back(MustEncode(line));
  std::vector<std::vector<std::vector<int32_t>>> results(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        results[t].clear();
        for (const std::string& line : lines) {
          std::vector<int32_t> ids;
          if (!suite_tokenizer->Encode(line, &ids).ok()) ids = {-1};
          results[t].push_back(std::move(ids));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(results[0], serial);
  EXPECT_EQ(results[1], serial);
}

TEST(TokenizerLoadTest, ErrorsNameThePath) {
  ScratchDir dir;
  auto missing = Tokenizer::Load(dir.Join("nope/tokenizer.model"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir.Join("nope/tokenizer.model")), std::string::npos)
      << missing.status();

  auto no_model = Tokenizer::Load(dir.path());
  ASSERT_FALSE(no_model.ok());
  EXPECT_EQ(no_model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(no_model.status().message().find(dir.path()), std::string::npos);
  EXPECT_NE(no_model.status().message().find("tokenizer.model"), std::string::npos);

  testing::WriteBytes(dir.Join("garbage.model"), "this is not a protobuf \x01\x02\xff\xfe");
  auto garbage = Tokenizer::Load(dir.Join("garbage.model"));
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.status().message().find(dir.Join("garbage.model")), std::string::npos)
      << garbage.status();

  testing::WriteBytes(dir.Join("empty.model"), "");
  auto empty = Tokenizer::Load(dir.Join("empty.model"));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find(dir.Join("empty.model")), std::string::npos);
}

TEST_F(TokenizerTest, MalformedTokenizerConfigIsAnErrorNamingIt) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("tokenizer.model"), testing::ReadBytes(ModelPath()));
  testing::WriteBytes(dir.Join("tokenizer_config.json"), R"({"add_bos_token": "yes"})");
  auto loaded = Tokenizer::Load(dir.path());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("tokenizer_config.json"), std::string::npos);
  EXPECT_NE(loaded.status().message().find("add_bos_token"), std::string::npos);
  testing::WriteBytes(dir.Join("tokenizer_config.json"), "{not json");
  loaded = Tokenizer::Load(dir.path());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("tokenizer_config.json"), std::string::npos);
}

TEST(TokenizerTrainTest, InputPathsWithSpacesCommasAndQuotesWork) {
  ScratchDir dir;
  const std::string odd = dir.Join("my corpus, \"part\" 1.txt");
  testing::WriteBytes(odd, testing::ReadBytes(kFixture));
  TokenizerTrainOptions options;
  options.inputs = {odd};
  options.vocab_size = 700;
  options.out_dir = dir.Join("out dir, too");
  absl::Status status = TrainTokenizer(options);
  ASSERT_TRUE(status.ok()) << status;
  auto loaded = Tokenizer::Load(options.out_dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->info().vocab_size, 700);
}

TEST(TokenizerTrainTest, BadInputsAndOptionsAreRefusedNamingThem) {
  ScratchDir dir;
  TokenizerTrainOptions options;
  options.out_dir = dir.Join("out");
  options.vocab_size = 1000;

  absl::Status status = TrainTokenizer(options);
  EXPECT_NE(status.message().find("--input"), std::string::npos) << status;

  options.inputs = {dir.Join("missing.txt")};
  status = TrainTokenizer(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find(dir.Join("missing.txt")), std::string::npos) << status;

  testing::WriteBytes(dir.Join("empty.txt"), "");
  options.inputs = {dir.Join("empty.txt")};
  status = TrainTokenizer(options);
  EXPECT_NE(status.message().find("empty"), std::string::npos) << status;

  options.inputs = {kFixture};
  options.vocab_size = 100;
  status = TrainTokenizer(options);
  EXPECT_NE(status.message().find("--vocab-size 100"), std::string::npos) << status;

  // Above the byte-fallback minimum but below the fixture's character count:
  // SentencePiece's own message, with our flag named.
  options.vocab_size = 300;
  status = TrainTokenizer(options);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("--vocab-size 300"), std::string::npos) << status;
  EXPECT_NE(status.message().find(kFixture), std::string::npos) << status;

  // More pieces than the input can fill.
  options.vocab_size = 200000;
  status = TrainTokenizer(options);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("--vocab-size 200000"), std::string::npos) << status;

  options.vocab_size = 1000;
  options.threads = -1;
  status = TrainTokenizer(options);
  EXPECT_NE(status.message().find("--threads"), std::string::npos) << status;
  options.threads = 0;

  EXPECT_TRUE(dir.Entries() == std::vector<std::string>({"empty.txt"}))
      << "failed runs leave nothing behind";

  ASSERT_TRUE(MakeDirs(dir.Join("exists")).ok());
  options.vocab_size = 700;
  options.out_dir = dir.Join("exists");
  status = TrainTokenizer(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  options.force = true;
  status = TrainTokenizer(options);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(PathExists(dir.Join("exists/tokenizer.model")));
}

}  // namespace
}  // namespace llamapro
