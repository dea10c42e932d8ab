#include "model/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::RawSafetensors;
using testing::ScratchDir;

absl::StatusOr<SafetensorsHeader> Parse(const std::string& bytes) {
  return ParseSafetensorsHeader(bytes, bytes.size(), "test.safetensors");
}

std::string Floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

TEST(SafetensorsTest, ParsesTensorsAndMetadata) {
  const std::string bytes = RawSafetensors(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      std::string(12, 'x'));
  auto header = Parse(bytes);
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 2u);
  EXPECT_EQ(header->tensors[0].name, "a");  // Ordered by offset.
  EXPECT_EQ(header->tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(header->tensors[1].shape, std::vector<int64_t>{2});
  ASSERT_EQ(header->metadata.size(), 1u);
  EXPECT_EQ(header->metadata[0].second, "pt");
}

TEST(SafetensorsTest, AcceptsScalarsAndEmptyTensors) {
  const std::string bytes =
      RawSafetensors(R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
                     R"("e":{"dtype":"F16","shape":[0,3],"data_offsets":[4,4]}})",
                     std::string(4, 'x'));
  auto header = Parse(bytes);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors.size(), 2u);
}

struct MalformedCase {
  const char* name;
  std::string bytes;
  const char* message;
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

std::vector<MalformedCase> MalformedCases() {
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::string huge_length(8, '\0');
  huge_length[0] = static_cast<char>(0xff);
  huge_length[1] = static_cast<char>(0xff);
  return {
      {"EmptyFile", "", "truncated"},
      {"ShortLength", "abc", "truncated"},
      {"HeaderLengthPastEnd", huge_length + "{}", "runs past the end of the file"},
      {"NotJson", RawSafetensors("{nope", ""), "not valid JSON"},
      {"NotAnObject", RawSafetensors("[1, 2]", ""), "does not start with '{'"},
      {"DuplicateName", RawSafetensors("{" + ok_entry + "," + ok_entry + "}", std::string(8, 'x')),
       "'w' appears twice"},
      {"UnknownDtype",
       RawSafetensors(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})",
                      std::string(8, 'x')),
       "tensor 'w': unknown dtype 'F33'"},
      {"NegativeDim",
       RawSafetensors(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                      std::string(8, 'x')),
       "tensor 'w': shape entry -2"},
      {"ShapeTimesDtypeMismatch",
       RawSafetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                      std::string(8, 'x')),
       "tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"},
      {"OffsetsOutOfRange",
       RawSafetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                      std::string(8, 'x')),
       "tensor 'w': data_offsets [0, 16] run past the end of the data section (8 bytes"},
      {"OffsetsReversed",
       RawSafetensors(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})",
                      std::string(8, 'x')),
       "end before they begin"},
      {"Overlapping",
       RawSafetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, 'x')),
       "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
      {"Gap",
       RawSafetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      std::string(8, 'x')),
       "tensor 'a': data starts at byte 4 but the previous tensor ends at 0"},
      {"TrailingBytes", RawSafetensors("{" + ok_entry + "}", std::string(10, 'x')),
       "trailing bytes after the last tensor"},
      {"TruncatedData", RawSafetensors("{" + ok_entry + "}", std::string(5, 'x')),
       "tensor 'w': data_offsets [0, 8] run past the end of the data section (5 bytes"},
      {"UnexpectedField",
       RawSafetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})",
                      std::string(8, 'x')),
       "unexpected field 'x'"},
      {"MetadataNotStrings", RawSafetensors(R"({"__metadata__":{"a":1}})", ""),
       "__metadata__ value for 'a' is not a string"},
  };
}

class MalformedSafetensorsTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedSafetensorsTest, IsRefusedWithAMessageNamingFileAndProblem) {
  const MalformedCase& c = GetParam();
  auto header = Parse(c.bytes);
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(header.status().message()), HasSubstr("test.safetensors"));
  EXPECT_THAT(std::string(header.status().message()), HasSubstr(c.message));
}

INSTANTIATE_TEST_SUITE_P(AllCases, MalformedSafetensorsTest, ::testing::ValuesIn(MalformedCases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SafetensorsTest, WriterOutputParsesBackWithIdenticalBytes) {
  ScratchDir dir;
  const std::string path = dir.Join("w.safetensors");
  std::vector<std::pair<TensorSpec, std::string>> tensors = {
      {{"layer.weight", DType::kF32, {2, 3}}, Floats({1, 2, 3, 4, 5, 6})},
      {{"layer.bias", DType::kBF16, {3}}, std::string("\x01\x02\x03\x04\x05\x06", 6)},
      {{"empty", DType::kF16, {0}}, ""},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().data_start % 8, 0u) << "header padded to 8 bytes";
  for (const auto& [spec, bytes] : tensors) {
    const TensorInfo* info = (*file)->Find(spec.name);
    ASSERT_NE(info, nullptr) << spec.name;
    EXPECT_EQ(info->shape, spec.shape);
    EXPECT_EQ(info->dtype, spec.dtype);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>((*file)->Data(*info)), info->NumBytes()),
              bytes);
  }
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, WriterRefusesDuplicateNamesAndShortData) {
  ScratchDir dir;
  EXPECT_FALSE(SafetensorsWriter::Create(dir.Join("d.safetensors"),
                                         {{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}, {})
                   .ok());
  auto writer = SafetensorsWriter::Create(dir.Join("s.safetensors"), {{"a", DType::kF32, {2}}}, {});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("abcd", 4).ok());
  EXPECT_FALSE((*writer)->Finish().ok()) << "4 of 8 bytes written";
  EXPECT_FALSE((*writer)->Append("abcdefgh", 8).ok()) << "more than declared";
}

TEST(SafetensorsTest, OpenNamesTheFileOfAMalformedHeader) {
  ScratchDir dir;
  const std::string path = dir.Join("bad.safetensors");
  testing::WriteBytes(path, "xyz");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace llamapro
