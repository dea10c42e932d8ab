// Helpers for data-pipeline tests: a real tokenizer trained once per test
// binary, generated text, compressed files.
#ifndef LLAMAPRO_TESTS_TESTING_DATA_UTIL_H_
#define LLAMAPRO_TESTS_TESTING_DATA_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

namespace llamapro::testing {

// tokenizer.model of a small BPE tokenizer (vocab 500, byte fallback) trained
// with TrainTokenizer on generated text, once per process, in a temporary
// directory. `variant` 1 trains a different model (for mismatch tests).
const std::string& TestTokenizerPath(int variant = 0);

// `count` pseudo-random documents of `min_words`..`max_words` words (seeded).
std::vector<std::string> RandomDocuments(int count, int min_words, int max_words, uint64_t seed);

// Writes text files: one per line joined with '\n' (and a final newline).
void WriteLines(const std::string& path, const std::vector<std::string>& lines);
// JSON lines {"text": doc} for each document.
void WriteJsonl(const std::string& path, const std::vector<std::string>& documents);
// Compressed copies of `bytes`.
void WriteGzip(const std::string& path, const std::string& bytes);
void WriteZstd(const std::string& path, const std::string& bytes);

}  // namespace llamapro::testing

#endif  // LLAMAPRO_TESTS_TESTING_DATA_UTIL_H_
