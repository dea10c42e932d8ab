#include "data/readers.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ScratchDir;

std::vector<InputRecord> ReadAll(const std::string& path, const InputOptions& options = {}) {
  auto reader = InputReader::Open(path, options);
  EXPECT_TRUE(reader.ok()) << reader.status();
  std::vector<InputRecord> records;
  InputRecord record;
  while (true) {
    auto more = (*reader)->Next(&record);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    records.push_back(record);
  }
  return records;
}

std::vector<std::string> Texts(const std::vector<InputRecord>& records) {
  std::vector<std::string> out;
  out.reserve(records.size());
  for (const InputRecord& r : records) out.push_back(r.text);
  return out;
}

TEST(ReadersTest, TextFileIsOneDocumentUnlessSplitByLines) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("a.txt"), "first line\r\nsecond\n\n  \nlast without newline");
  auto whole = ReadAll(dir.Join("a.txt"));
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(whole[0].text, "first line\r\nsecond\n\n  \nlast without newline");
  auto lines = ReadAll(dir.Join("a.txt"), {.split_lines = true});
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(Texts(lines), ElementsAre("first line", "second", "", "  ", "last without newline"));
  EXPECT_EQ(lines[4].number, 5u);
  EXPECT_TRUE(lines[2].empty);
  EXPECT_TRUE(lines[3].empty);
  EXPECT_FALSE(lines[1].empty);
}

TEST(ReadersTest, JsonlRecordsAndEveryMalformedCase) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("d.jsonl"),
                      "{\"text\": \"hello\", \"meta\": 1}\n"
                      "{\"content\": \"custom field\"}\n"
                      "{not json}\n"
                      "{\"other\": \"x\"}\n"
                      "{\"text\": 5}\n"
                      "[1, 2]\n"
                      "\n"
                      "{\"text\": \"bad \xff utf8\"}\n"
                      "{\"text\": \"\"}\n");
  auto records = ReadAll(dir.Join("d.jsonl"));
  ASSERT_EQ(records.size(), 9u);
  EXPECT_EQ(records[0].text, "hello");
  EXPECT_TRUE(records[0].error.empty());
  EXPECT_EQ(records[1].error, "missing field 'text'");
  EXPECT_THAT(records[2].error, HasSubstr("not valid JSON"));
  EXPECT_EQ(records[3].error, "missing field 'text'");
  EXPECT_EQ(records[4].error, "field 'text' is a number, expected a string");
  EXPECT_EQ(records[5].error, "expected a JSON object, got an array");
  EXPECT_TRUE(records[6].empty);
  EXPECT_THAT(records[7].error, HasSubstr("UTF-8"));
  EXPECT_TRUE(records[8].empty);
  EXPECT_EQ(records[4].number, 5u);
  auto custom = ReadAll(dir.Join("d.jsonl"), {.text_field = "content"});
  EXPECT_EQ(custom[1].text, "custom field");
  auto kept = ReadAll(dir.Join("d.jsonl"), {.keep_json = true});
  EXPECT_EQ(kept[0].json["meta"], 1);
}

TEST(ReadersTest, InvalidUtf8InTextIsMalformedWithItsOffset) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("b.txt"), "good\nab\xc3\x28\nfine\n");
  auto lines = ReadAll(dir.Join("b.txt"), {.split_lines = true});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_TRUE(lines[0].error.empty());
  EXPECT_EQ(lines[1].error, "invalid UTF-8 at byte 2");
  EXPECT_TRUE(lines[2].error.empty());
}

TEST(ReadersTest, GzipAndZstdGiveTheSameRecordsAsPlainFiles) {
  ScratchDir dir;
  std::string bytes;
  for (const std::string& doc : testing::RandomDocuments(3000, 5, 50, 7)) {
    bytes += "{\"text\": " + nlohmann::json(doc).dump() + "}\n";
  }
  testing::WriteBytes(dir.Join("p.jsonl"), bytes);
  testing::WriteGzip(dir.Join("p.jsonl.gz"), bytes);
  testing::WriteZstd(dir.Join("p.jsonl.zst"), bytes);
  // Two gzip members back to back are one stream (as `cat a.gz b.gz` makes).
  testing::WriteGzip(dir.Join("half1.gz"), bytes.substr(0, bytes.size() / 2));
  testing::WriteGzip(dir.Join("half2.gz"), bytes.substr(bytes.size() / 2));
  testing::WriteBytes(dir.Join("two.jsonl.gz"), testing::ReadBytes(dir.Join("half1.gz")) +
                                                    testing::ReadBytes(dir.Join("half2.gz")));
  auto plain = Texts(ReadAll(dir.Join("p.jsonl")));
  ASSERT_EQ(plain.size(), 3000u);
  EXPECT_EQ(Texts(ReadAll(dir.Join("p.jsonl.gz"))), plain);
  EXPECT_EQ(Texts(ReadAll(dir.Join("p.jsonl.zst"))), plain);
  EXPECT_EQ(Texts(ReadAll(dir.Join("two.jsonl.gz"))), plain);
}

TEST(ReadersTest, TruncatedCompressedFilesAreErrorsNamingTheFile) {
  ScratchDir dir;
  std::string bytes;
  for (const std::string& doc : testing::RandomDocuments(2000, 5, 50, 8)) bytes += doc + "\n";
  testing::WriteGzip(dir.Join("t.txt.gz"), bytes);
  testing::WriteZstd(dir.Join("t.txt.zst"), bytes);
  for (const char* name : {"t.txt.gz", "t.txt.zst"}) {
    const std::string path = dir.Join(name);
    std::string compressed = testing::ReadBytes(path);
    testing::WriteBytes(path, compressed.substr(0, compressed.size() / 2));
    auto reader = InputReader::Open(path, {.split_lines = true});
    ASSERT_TRUE(reader.ok());
    InputRecord record;
    absl::Status status;
    while (true) {
      auto more = (*reader)->Next(&record);
      if (!more.ok()) {
        status = more.status();
        break;
      }
      if (!*more) break;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << name;
    EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  }
}

TEST(ReadersTest, FormatIsResolvedFromTheName) {
  EXPECT_EQ(ResolveInputFormat(InputFormat::kAuto, "a.jsonl.zst"), InputFormat::kJsonl);
  EXPECT_EQ(ResolveInputFormat(InputFormat::kAuto, "a.jsonl"), InputFormat::kJsonl);
  EXPECT_EQ(ResolveInputFormat(InputFormat::kAuto, "a.txt.gz"), InputFormat::kText);
  EXPECT_EQ(ResolveInputFormat(InputFormat::kText, "a.jsonl"), InputFormat::kText);
  EXPECT_FALSE(ParseInputFormat("csv").ok());
}

TEST(ReadersTest, Utf8ValidationFollowsTheStandard) {
  size_t offset = 0;
  EXPECT_TRUE(IsValidUtf8("plain ascii, über, 模型, 😀", &offset));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf", &offset));        // Overlong '/'.
  EXPECT_FALSE(IsValidUtf8("ok\xed\xa0\x80", &offset));  // Surrogate.
  EXPECT_EQ(offset, 2u);
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80", &offset));    // Above U+10FFFF.
  EXPECT_FALSE(IsValidUtf8("abcdefghij\xe6\xa8", &offset));  // Truncated sequence.
  EXPECT_EQ(offset, 10u);
  EXPECT_FALSE(IsValidUtf8("\x80", &offset));
}

}  // namespace
}  // namespace llamapro
