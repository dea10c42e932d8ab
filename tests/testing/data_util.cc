#include "tests/testing/data_util.h"

#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <random>

#include "base/check.h"
#include "data/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace llamapro::testing {
namespace {

const char* const kWords[] = {
    "the",   "model",  "learns",  "a",     "new",    "domain", "without", "forgetting",
    "block", "expand", "layer",   "token", "data",   "proof",  "lemma",   "theorem",
    "def",   "return", "import",  "print", "for",    "in",     "range",   "x",
    "y",     "=",      "+",       "(",     ")",      ":",      "42",      "3.14",
    "über",  "naïve",  "données", "模型",  "数据",   "код",    "данные",  "😀",
    "while", "if",     "else",    "class", "struct", "int",    "float",   "void"};

}  // namespace

std::vector<std::string> RandomDocuments(int count, int min_words, int max_words, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> length(min_words, max_words);
  std::uniform_int_distribution<size_t> word(0, std::size(kWords) - 1);
  std::vector<std::string> docs;
  docs.reserve(count);
  for (int i = 0; i < count; ++i) {
    std::string doc;
    const int n = length(rng);
    for (int w = 0; w < n; ++w) {
      if (w > 0) doc += (w % 11 == 0) ? "\n" : " ";
      doc += kWords[word(rng)];
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

const std::string& TestTokenizerPath(int variant) {
  static std::string paths[2];
  std::string& path = paths[variant != 0 ? 1 : 0];
  if (!path.empty()) return path;
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) /
       ("llamapro-test-tokenizer-" + std::to_string(getpid()) + "-" + std::to_string(variant)))
          .string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::vector<std::string> lines = RandomDocuments(2000, 3, 30, 100 + variant);
  WriteLines(dir + "/corpus.txt", lines);
  TokenizerTrainOptions options;
  options.inputs = {dir + "/corpus.txt"};
  options.vocab_size = variant == 0 ? 500 : 520;
  options.out_dir = dir + "/tokenizer";
  options.threads = 1;
  absl::Status status = TrainTokenizer(options);
  LP_CHECK(status.ok(), "the test tokenizer must train");
  path = options.out_dir + "/tokenizer.model";
  return path;
}

void WriteLines(const std::string& path, const std::vector<std::string>& lines) {
  std::string bytes;
  for (const std::string& line : lines) bytes += line + "\n";
  WriteBytes(path, bytes);
}

void WriteJsonl(const std::string& path, const std::vector<std::string>& documents) {
  std::string bytes;
  for (const std::string& doc : documents) bytes += nlohmann::json({{"text", doc}}).dump() + "\n";
  WriteBytes(path, bytes);
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile out = gzopen(path.c_str(), "wb");
  LP_CHECK(out != nullptr);
  LP_CHECK(gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size())) ==
           static_cast<int>(bytes.size()));
  LP_CHECK(gzclose(out) == Z_OK);
}

void WriteZstd(const std::string& path, const std::string& bytes) {
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3);
  LP_CHECK(!ZSTD_isError(n));
  out.resize(n);
  WriteBytes(path, out);
}

}  // namespace llamapro::testing
