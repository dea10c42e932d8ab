#include "tests/testing/test_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/check.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/llama_train.h"

namespace llamapro::testing {
namespace fs = std::filesystem;

ScratchDir::ScratchDir() {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name =
      info != nullptr ? std::string(info->test_suite_name()) + "." + info->name() : "scratch";
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  path_ = (fs::path(::testing::TempDir()) / ("llamapro-" + name + "-" + std::to_string(getpid()) +
                                             "-" + std::to_string(counter.fetch_add(1))))
              .string();
  fs::remove_all(path_);
  fs::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::vector<std::string> ScratchDir::Entries() const {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(path_)) {
    out.push_back(entry.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void WriteCheckpoint(const SynthSpec& spec, const std::string& dir, uint64_t shard_bytes) {
  absl::Status status = WriteSyntheticCheckpoint(spec, dir, shard_bytes, false, nullptr);
  if (!status.ok()) {
    ADD_FAILURE() << status;
    LP_CHECK(false, "could not write a test checkpoint");
  }
}

SynthSpec SmallSpec(int64_t layers, int64_t heads, int64_t kv_heads, bool tied, bool bias,
                    DType dtype, uint64_t seed) {
  SynthSpec spec;
  spec.vocab_size = 97;  // Odd sizes on purpose.
  spec.num_attention_heads = heads;
  spec.num_key_value_heads = kv_heads;
  spec.hidden_size = heads * 6;
  spec.intermediate_size = 37;
  spec.num_hidden_layers = layers;
  spec.max_position_embeddings = 64;
  spec.tie_word_embeddings = tied;
  spec.attention_bias = bias;
  spec.mlp_bias = bias;
  spec.dtype = dtype;
  spec.seed = seed;
  spec.init_std = 0.15;
  return spec;
}

std::string RawSafetensors(const std::string& header_json, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + data;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  LP_CHECK(out.good(), "could not write a test file");
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

LlamaParams LoadParams(const std::string& dir) {
  auto config = LoadLlamaConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  auto reader = CheckpointReader::Open(dir);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!config.ok() || !reader.ok()) return LlamaParams();
  auto params = LoadLlamaParams(**reader, *config);
  EXPECT_TRUE(params.ok()) << params.status();
  return params.ok() ? std::move(*params) : LlamaParams();
}

int ExpectGradientsMatchFiniteDifferences(LlamaParams* params, const std::vector<int32_t>& tokens,
                                          const std::vector<uint8_t>& mask, int64_t batch,
                                          int64_t seq_len, int per_tensor) {
  TrainingPass pass(params, batch, seq_len);
  TrainingPass eval(params, batch, seq_len, /*for_training=*/false);
  const absl::StatusOr<LossSum> ran = pass.ForwardBackward(tokens, mask, 1.0f);
  EXPECT_TRUE(ran.ok()) << ran.status();
  int checked = 0;
  for (Parameter* p : params->Trainable()) {
    std::vector<size_t> order(p->grad.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    const size_t k = std::min<size_t>(per_tensor, order.size());
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](size_t x, size_t y) {
      return std::abs(p->grad[x]) > std::abs(p->grad[y]);
    });
    for (size_t j = 0; j < k; ++j) {
      const size_t i = order[j];
      const float saved = p->value[i];
      const float eps = 1e-2f * std::max(1.0f, std::abs(saved));
      p->value[i] = saved + eps;
      const double up = eval.Evaluate(tokens, mask)->loss;
      p->value[i] = saved - eps;
      const double down = eval.Evaluate(tokens, mask)->loss;
      p->value[i] = saved;
      const double numeric = (up - down) / (2.0 * eps);
      EXPECT_NEAR(p->grad[i], numeric, 2e-3 + 3e-2 * std::abs(numeric))
          << p->name << "[" << i << "]";
      ++checked;
    }
  }
  return checked;
}

}  // namespace llamapro::testing
