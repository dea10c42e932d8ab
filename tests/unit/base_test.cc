#include <filesystem>

#include "base/file.h"
#include "base/units.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using testing::ScratchDir;

TEST(UnitsTest, ParsesByteSizesInDecimalAndBinaryUnits) {
  EXPECT_EQ(*ParseByteSize("5GB"), 5'000'000'000u);
  EXPECT_EQ(*ParseByteSize("500MB"), 500'000'000u);
  EXPECT_EQ(*ParseByteSize("2GiB"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize("1.5 kb"), 1500u);
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_FALSE(ParseByteSize("5 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("GB").ok());
  EXPECT_FALSE(ParseByteSize("0").ok());
}

TEST(UnitsTest, FormatsBytesAndCounts) {
  EXPECT_EQ(FormatBytes(999), "999 B");
  EXPECT_EQ(FormatBytes(13'476'839'424), "13.48 GB");
  EXPECT_EQ(FormatCount(6'738'415'616), "6.74B");
  EXPECT_EQ(FormatCount(12), "12");
}

TEST(FileTest, WriteFileAtomicReplacesContentsAndLeavesNoTemporaries) {
  ScratchDir dir;
  const std::string path = dir.Join("a.json");
  ASSERT_TRUE(WriteFileAtomic(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "second").ok());
  EXPECT_EQ(*ReadFile(path), "second");
  EXPECT_EQ(dir.Entries(), std::vector<std::string>{"a.json"});
}

TEST(FileTest, StagingDirIsRemovedUnlessCommitted) {
  ScratchDir dir;
  {
    auto staging = StagingDir::Create(dir.Join("out"));
    ASSERT_TRUE(staging.ok());
    ASSERT_TRUE(WriteFileAtomic(JoinPath((*staging)->path(), "x"), "1").ok());
  }
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(FileTest, StagingDirCommitRefusesOrSwapsAnExistingDirectory) {
  ScratchDir dir;
  const std::string out = dir.Join("out");
  ASSERT_TRUE(MakeDirs(out).ok());
  ASSERT_TRUE(WriteFileAtomic(JoinPath(out, "old"), "old").ok());
  auto staging = StagingDir::Create(out);
  ASSERT_TRUE(staging.ok());
  ASSERT_TRUE(WriteFileAtomic(JoinPath((*staging)->path(), "new"), "new").ok());
  absl::Status refused = (*staging)->Commit(false);
  EXPECT_EQ(refused.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(PathExists(JoinPath(out, "old")));
  ASSERT_TRUE((*staging)->Commit(true).ok());
  EXPECT_TRUE(PathExists(JoinPath(out, "new")));
  EXPECT_FALSE(PathExists(JoinPath(out, "old")));
  EXPECT_EQ(dir.Entries(), std::vector<std::string>{"out"});
}

TEST(FileTest, AppendFromCopiesARangeBetweenFiles) {
  ScratchDir dir;
  testing::WriteBytes(dir.Join("src"), "0123456789");
  auto src = File::OpenForRead(dir.Join("src"));
  ASSERT_TRUE(src.ok());
  auto dst = File::CreateNew(dir.Join("dst"));
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(dst->AppendFrom(*src, 3, 4).ok());
  ASSERT_TRUE(dst->Write("!").ok());
  ASSERT_TRUE(dst->Close().ok());
  EXPECT_EQ(testing::ReadBytes(dir.Join("dst")), "3456!");
  auto again = File::CreateNew(dir.Join("dst2"));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->AppendFrom(*src, 8, 5).ok()) << "reading past the end must fail";
}

}  // namespace
}  // namespace llamapro
