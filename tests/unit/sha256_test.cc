#include "base/sha256.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

// FIPS 180-4 / NIST CAVP example vectors.
TEST(Sha256Test, MatchesTheFipsTestVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjk"
                      "lmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(Sha256Hex(std::string(1'000'000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, StreamingInAnyChunkingEqualsOneShot) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data.push_back(static_cast<char>(i * 31 + 7));
  const std::string one_shot = Sha256Hex(data);
  for (size_t chunk : {1u, 3u, 55u, 56u, 63u, 64u, 65u, 127u, 999u}) {
    Sha256 hasher;
    for (size_t i = 0; i < data.size(); i += chunk) {
      hasher.Update(absl::string_view(data).substr(i, chunk));
    }
    EXPECT_EQ(DigestHex(hasher.Finish()), one_shot) << "chunk " << chunk;
  }
  // Messages around the padding boundary (55, 56, 64 bytes) differ pairwise.
  EXPECT_NE(Sha256Hex(std::string(55, 'x')), Sha256Hex(std::string(56, 'x')));
}

TEST(Sha256Test, FileHashEqualsTheHashOfItsBytes) {
  testing::ScratchDir dir;
  // Larger than one read chunk (1 MiB), not a multiple of 64.
  std::string data(3 * (1 << 20) + 12345, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 13);
  testing::WriteBytes(dir.Join("blob"), data);
  auto hash = Sha256File(dir.Join("blob"));
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, Sha256Hex(data));
  testing::WriteBytes(dir.Join("abc"), "abc");
  EXPECT_EQ(*Sha256File(dir.Join("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

  auto missing = Sha256File(dir.Join("missing"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir.Join("missing")), std::string::npos);
}

}  // namespace
}  // namespace llamapro
