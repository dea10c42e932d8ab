// Shared helpers for llamapro tests: scratch directories, synthetic
// checkpoints, hand-built safetensors files.
#ifndef LLAMAPRO_TESTS_TESTING_TEST_UTIL_H_
#define LLAMAPRO_TESTS_TESTING_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama_params.h"
#include "model/synth.h"

namespace llamapro::testing {

// A fresh, empty directory for the current test (removed at destruction).
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }
  // Entries (files and directories, hidden ones included) directly inside.
  std::vector<std::string> Entries() const;

 private:
  std::string path_;
};

// Writes a synthetic checkpoint (CHECK-fails on error: test setup).
void WriteCheckpoint(const SynthSpec& spec, const std::string& dir,
                     uint64_t shard_bytes = 5'000'000'000);

// A small spec with the given variations, weights wide enough (init_std)
// that logits vary visibly.
SynthSpec SmallSpec(int64_t layers, int64_t heads, int64_t kv_heads, bool tied, bool bias,
                    DType dtype = DType::kF32, uint64_t seed = 1);

// Bytes of a safetensors file with the given JSON header and data section,
// exactly as given (no validation, for malformed-input tests).
std::string RawSafetensors(const std::string& header_json, const std::string& data);

// The parameters of a checkpoint directory (a test failure, and empty
// parameters, when it cannot be loaded).
LlamaParams LoadParams(const std::string& dir);

// Runs one ForwardBackward (grad_scale 1) over `tokens` / `mask` (batch x
// seq_len + 1) and compares, for the `per_tensor` largest gradient entries of
// every trainable tensor, the gradient with the central difference of the
// loss (step 1e-2 relative; tolerance 2e-3 + 3e-2 |numeric|), as a test
// failure naming the tensor and index. Returns the number of entries checked.
int ExpectGradientsMatchFiniteDifferences(LlamaParams* params, const std::vector<int32_t>& tokens,
                                          const std::vector<uint8_t>& mask, int64_t batch,
                                          int64_t seq_len, int per_tensor);

void WriteBytes(const std::string& path, const std::string& bytes);
std::string ReadBytes(const std::string& path);

}  // namespace llamapro::testing

#endif  // LLAMAPRO_TESTS_TESTING_TEST_UTIL_H_
