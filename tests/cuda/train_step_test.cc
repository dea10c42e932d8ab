// The mixed-precision CUDA training pass (model/cuda_llama_train.h) and the
// device AdamW (train/cuda_optimizer.h) against the CPU engine
// (model/llama_train.h) on a tiny random model built in memory: logits, loss
// and every trainable gradient (frozen-aware cases), bit-identical results
// across recompute modes, and a 20-step AdamW run tracking a CPU AdamW
// written out here from train/optimizer.cc's formulas (this carryable binary
// must not link llamapro_train). The device-free tests (names, memory plan,
// refusals) run anywhere; the rest skip without a CUDA device.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/dtype.h"
#include "model/cuda_llama_train.h"
#include "model/llama_params.h"
#include "model/llama_train.h"
#include "tests/cuda/cuda_test_util.h"
#include "train/cuda_optimizer.h"

namespace llamapro {
namespace {

using cuda_test::Close;
using cuda_test::ToDouble;

constexpr int64_t kBatch = 2;
constexpr int64_t kSeqLen = 24;

struct ModelOptions {
  bool tie = false;
  bool bias = false;
  uint64_t seed = 1;
};

// vocab 256, hidden 64, 4 heads of 16, 2 KV heads, ffn 160, 4 blocks; every
// value rounded to bf16, so the CPU and the device start from equal weights.
LlamaParams MakeParams(const ModelOptions& options) {
  LlamaParams p;
  LlamaConfig& c = p.config;
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = options.tie;
  c.attention_bias = options.bias;
  c.mlp_bias = options.bias;
  std::mt19937 rng(static_cast<uint32_t>(options.seed));
  auto make = [&](Parameter* t, const std::string& name, std::vector<int64_t> shape, float lo,
                  float hi, bool decay) {
    t->name = name;
    t->shape = std::move(shape);
    int64_t n = 1;
    for (int64_t d : t->shape) n *= d;
    std::uniform_real_distribution<float> dist(lo, hi);
    t->value.resize(n);
    for (float& v : t->value) v = BF16ToFloat(FloatToBF16(dist(rng)));
    t->decay = decay;
  };
  const int64_t h = c.hidden_size, f = c.intermediate_size, v = c.vocab_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  make(&p.embed, "model.embed_tokens.weight", {v, h}, -0.5f, 0.5f, true);
  p.blocks.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    BlockParams& b = p.blocks[i];
    const std::string pre = absl::StrCat("model.layers.", i, ".");
    const float a = 0.12f;
    make(&b.input_norm, pre + "input_layernorm.weight", {h}, 0.8f, 1.2f, false);
    make(&b.q_proj, pre + "self_attn.q_proj.weight", {q, h}, -a, a, true);
    make(&b.k_proj, pre + "self_attn.k_proj.weight", {kv, h}, -a, a, true);
    make(&b.v_proj, pre + "self_attn.v_proj.weight", {kv, h}, -a, a, true);
    make(&b.o_proj, pre + "self_attn.o_proj.weight", {h, q}, -a, a, true);
    if (options.bias) {
      make(&b.q_bias, pre + "self_attn.q_proj.bias", {q}, -0.1f, 0.1f, false);
      make(&b.k_bias, pre + "self_attn.k_proj.bias", {kv}, -0.1f, 0.1f, false);
      make(&b.v_bias, pre + "self_attn.v_proj.bias", {kv}, -0.1f, 0.1f, false);
      make(&b.o_bias, pre + "self_attn.o_proj.bias", {h}, -0.1f, 0.1f, false);
    }
    make(&b.post_norm, pre + "post_attention_layernorm.weight", {h}, 0.8f, 1.2f, false);
    make(&b.gate_proj, pre + "mlp.gate_proj.weight", {f, h}, -a, a, true);
    make(&b.up_proj, pre + "mlp.up_proj.weight", {f, h}, -a, a, true);
    make(&b.down_proj, pre + "mlp.down_proj.weight", {h, f}, -a, a, true);
    if (options.bias) {
      make(&b.gate_bias, pre + "mlp.gate_proj.bias", {f}, -0.1f, 0.1f, false);
      make(&b.up_bias, pre + "mlp.up_proj.bias", {f}, -0.1f, 0.1f, false);
      make(&b.down_bias, pre + "mlp.down_proj.bias", {h}, -0.1f, 0.1f, false);
    }
  }
  make(&p.final_norm, "model.norm.weight", {h}, 0.8f, 1.2f, false);
  if (!options.tie) make(&p.lm_head, "lm_head.weight", {v, h}, -0.2f, 0.2f, true);
  return p;
}

TrainableSet AllTrainable(const LlamaParams& p) {
  TrainableSet set;
  set.blocks.assign(p.blocks.size(), true);
  set.embeddings = true;
  set.final_norm = true;
  set.lm_head = true;
  return set;
}

TrainableSet Blocks1And3(const LlamaParams& p) {
  TrainableSet set;
  set.blocks.assign(p.blocks.size(), false);
  set.blocks[1] = true;
  set.blocks[3] = true;
  return set;
}

LlamaParams MakeTrainable(const ModelOptions& options, bool blocks_1_and_3) {
  LlamaParams p = MakeParams(options);
  const absl::Status status =
      ApplyTrainableSet(blocks_1_and_3 ? Blocks1And3(p) : AllTrainable(p), &p);
  EXPECT_TRUE(status.ok()) << status;
  return p;
}

std::vector<int32_t> RandomTokens(int64_t batch, int64_t seq_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, 255);
  std::vector<int32_t> tokens(batch * (seq_len + 1));
  for (int32_t& t : tokens) t = dist(rng);
  return tokens;
}

std::vector<uint8_t> SomeMask(int64_t batch, int64_t seq_len) {
  std::vector<uint8_t> mask(batch * (seq_len + 1), 1);
  for (size_t i = 0; i < mask.size(); i += 3) mask[i] = 0;  // Every third target is ignored.
  return mask;
}

CudaPassOptions PassOptions(Recompute recompute = Recompute::kNone, bool for_training = true) {
  CudaPassOptions options;
  options.batch = kBatch;
  options.seq_len = kSeqLen;
  options.for_training = for_training;
  options.recompute = recompute;
  return options;
}

int64_t Padded(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// --- Device-free ---------------------------------------------------------

TEST(CudaTrainStepNoDeviceTest, RecomputeNamesRoundTrip) {
  for (Recompute mode : {Recompute::kNone, Recompute::kAttention, Recompute::kFull}) {
    absl::StatusOr<Recompute> parsed = ParseRecompute(RecomputeName(mode));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, mode);
  }
  EXPECT_EQ(RecomputeName(Recompute::kAttention), "attention");
  absl::StatusOr<Recompute> bad = ParseRecompute("selective");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("selective"), absl::string_view::npos);
  EXPECT_NE(bad.status().message().find("attention"), absl::string_view::npos);
  EXPECT_FALSE(ParseRecompute("").ok());
}

TEST(CudaTrainStepNoDeviceTest, PlanMemoryCountsBytesByKind) {
  LlamaParams p = MakeTrainable({.bias = true}, /*blocks_1_and_3=*/true);
  int64_t weights = 0, trainable = 0, params = 0;
  for (Parameter* t : p.All()) {
    weights += Padded(2 * t->NumElements());
    params += t->NumElements();
    if (t->trainable) trainable += Padded(4 * t->NumElements());
  }
  const CudaMemory none = CudaTrainingPass::PlanMemory(p, PassOptions(Recompute::kNone));
  const CudaMemory attention = CudaTrainingPass::PlanMemory(p, PassOptions(Recompute::kAttention));
  const CudaMemory full = CudaTrainingPass::PlanMemory(p, PassOptions(Recompute::kFull));
  const CudaMemory eval = CudaTrainingPass::PlanMemory(p, PassOptions(Recompute::kNone, false));
  EXPECT_EQ(none.weight_bytes, weights);
  EXPECT_GE(none.weight_bytes, 2 * params);
  EXPECT_EQ(none.master_bytes, trainable);    // Frozen tensors get no master...
  EXPECT_EQ(none.gradient_bytes, trainable);  // ...and no gradient.
  EXPECT_LT(none.master_bytes, 4 * params / 2 + 256 * 64);
  EXPECT_GT(none.activation_bytes, attention.activation_bytes);
  EXPECT_GT(attention.activation_bytes, full.activation_bytes);
  EXPECT_GT(full.activation_bytes, 0);
  EXPECT_EQ(eval.activation_bytes, 0);
  EXPECT_EQ(eval.master_bytes, 0);
  EXPECT_EQ(eval.gradient_bytes, 0);
  EXPECT_EQ(eval.weight_bytes, weights);
  EXPECT_GE(none.scratch_bytes, static_cast<int64_t>(32) << 20);  // The GEMM workspace.
  EXPECT_EQ(none.total(), none.weight_bytes + none.master_bytes + none.gradient_bytes +
                              none.activation_bytes + none.scratch_bytes);

  // Blocks 1 and 3 train: blocks 1..3 keep activations; with all blocks
  // training, block 0 does too.
  LlamaParams all = MakeTrainable({.bias = true}, /*blocks_1_and_3=*/false);
  const CudaMemory all_none = CudaTrainingPass::PlanMemory(all, PassOptions(Recompute::kNone));
  EXPECT_GT(all_none.activation_bytes, none.activation_bytes);
  EXPECT_EQ(all_none.weight_bytes, weights);

  // A bigger logits chunk needs more scratch.
  CudaPassOptions small = PassOptions();
  small.logits_chunk_rows = 4;
  EXPECT_LT(CudaTrainingPass::PlanMemory(p, small).scratch_bytes, none.scratch_bytes);
}

TEST(CudaTrainStepNoDeviceTest, CreateWithoutADeviceFailsNamingTheDevice) {
  if (cuda::DeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  LlamaParams p = MakeTrainable({}, false);
  auto pass = CudaTrainingPass::Create(&p, PassOptions());
  ASSERT_FALSE(pass.ok());
  EXPECT_EQ(pass.status().code(), absl::StatusCode::kFailedPrecondition) << pass.status();
  EXPECT_NE(pass.status().message().find("device"), absl::string_view::npos) << pass.status();
}

TEST(CudaTrainStepNoDeviceTest, CreateRefusesUnsupportedFeaturesBeforeTheDevice) {
  auto expect_refused = [](LlamaParams* p, absl::string_view feature) {
    auto pass = CudaTrainingPass::Create(p, PassOptions());
    ASSERT_FALSE(pass.ok()) << feature;
    EXPECT_EQ(pass.status().code(), absl::StatusCode::kInvalidArgument) << pass.status();
    EXPECT_NE(pass.status().message().find(feature), absl::string_view::npos) << pass.status();
  };
  {
    LlamaParams p = MakeTrainable({}, false);
    p.lora_rank = 8;
    expect_refused(&p, "LoRA");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    p.blocks[2].lora[0].a.value.assign(8 * 64, 0.0f);
    p.blocks[2].lora[0].a.name = "model.layers.2.self_attn.q_proj.lora_A.weight";
    expect_refused(&p, "LoRA");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    p.config.moe_experts = 2;
    p.blocks[0].expert_mix.value.assign(2, 0.0f);
    expect_refused(&p, "MoE");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    p.blocks[1].q_proj.split_dim = 0;
    p.blocks[1].q_proj.full_shape = {128, 64};
    expect_refused(&p, "tensor parallelism");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    p.config.head_dim = 15;
    expect_refused(&p, "head_dim");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    p.config.head_dim = 256;
    expect_refused(&p, "head_dim");
  }
  {
    LlamaParams p = MakeTrainable({}, false);
    CudaPassOptions options = PassOptions();
    options.logits_chunk_rows = -1;
    auto pass = CudaTrainingPass::Create(&p, options);
    EXPECT_EQ(pass.status().code(), absl::StatusCode::kInvalidArgument) << pass.status();
  }
}

// --- With a device --------------------------------------------------------

class CudaTrainStepTest : public cuda_test::CudaTest {};

std::unique_ptr<CudaTrainingPass> MustCreate(LlamaParams* p, const CudaPassOptions& options) {
  auto pass = CudaTrainingPass::Create(p, options);
  EXPECT_TRUE(pass.ok()) << pass.status();
  return pass.ok() ? std::move(*pass) : nullptr;
}

TEST_F(CudaTrainStepTest, LogitsAndLossMatchTheCpu) {
  LlamaParams gpu_params = MakeParams({.bias = true});
  LlamaParams cpu_params = MakeParams({.bias = true});
  const std::vector<int32_t> tokens = RandomTokens(kBatch, kSeqLen, 5);
  const std::vector<uint8_t> mask = SomeMask(kBatch, kSeqLen);
  auto pass = MustCreate(&gpu_params, PassOptions(Recompute::kNone, /*for_training=*/false));
  ASSERT_NE(pass, nullptr);
  TrainingPass cpu(&cpu_params, kBatch, kSeqLen, /*for_training=*/false);
  absl::StatusOr<std::vector<float>> logits = pass->Logits(tokens);
  absl::StatusOr<std::vector<float>> ref = cpu.Logits(tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_TRUE(Close("logits", ToDouble(*logits), ToDouble(*ref), 1e-2, 256));
  absl::StatusOr<LossSum> loss = pass->Evaluate(tokens, mask);
  absl::StatusOr<LossSum> ref_loss = cpu.Evaluate(tokens, mask);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(ref_loss.ok()) << ref_loss.status();
  EXPECT_EQ(loss->targets, ref_loss->targets);
  EXPECT_NEAR(loss->loss, ref_loss->loss, 1e-2 * std::fabs(ref_loss->loss));
  // A training pass evaluates the same.
  auto train = MustCreate(&gpu_params, PassOptions());
  ASSERT_NE(train, nullptr);
  absl::StatusOr<LossSum> train_loss = train->Evaluate(tokens, mask);
  ASSERT_TRUE(train_loss.ok()) << train_loss.status();
  EXPECT_NEAR(train_loss->loss, loss->loss, 1e-6 * std::fabs(loss->loss));
  // Evaluation-only passes refuse a backward.
  EXPECT_EQ(pass->ForwardBackward(tokens, mask, 1.0f).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

struct GradientCase {
  const char* name;
  ModelOptions model;
  bool blocks_1_and_3;
  int64_t chunk_rows;
};

void ExpectGradientsMatchCpu(const GradientCase& c) {
  SCOPED_TRACE(c.name);
  LlamaParams gpu_params = MakeTrainable(c.model, c.blocks_1_and_3);
  LlamaParams cpu_params = MakeTrainable(c.model, c.blocks_1_and_3);
  const std::vector<int32_t> tokens = RandomTokens(kBatch, kSeqLen, 9);
  const std::vector<uint8_t> mask = SomeMask(kBatch, kSeqLen);
  CudaPassOptions options = PassOptions();
  options.logits_chunk_rows = c.chunk_rows;
  auto pass = MustCreate(&gpu_params, options);
  ASSERT_NE(pass, nullptr);
  TrainingPass cpu(&cpu_params, kBatch, kSeqLen);
  EXPECT_EQ(pass->lowest_backward_block(), cpu.lowest_backward_block());
  EXPECT_EQ(pass->flops_per_token().forward, cpu.flops_per_token().forward);
  EXPECT_EQ(pass->flops_per_token().backward, cpu.flops_per_token().backward);
  const float scale = 1.0f / 30;
  absl::StatusOr<LossSum> loss = pass->ForwardBackward(tokens, mask, scale);
  absl::StatusOr<LossSum> ref = cpu.ForwardBackward(tokens, mask, scale);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(loss->targets, ref->targets);
  EXPECT_NEAR(loss->loss, ref->loss, 1e-2 * std::fabs(ref->loss));
  ASSERT_TRUE(pass->DownloadGradients().ok());
  std::vector<Parameter*> gpu_all = gpu_params.All(), cpu_all = cpu_params.All();
  ASSERT_EQ(gpu_all.size(), cpu_all.size());
  size_t checked = 0;
  for (size_t i = 0; i < gpu_all.size(); ++i) {
    if (!cpu_all[i]->trainable) {
      EXPECT_TRUE(gpu_all[i]->grad.empty()) << gpu_all[i]->name;
      continue;
    }
    EXPECT_TRUE(
        Close(gpu_all[i]->name, ToDouble(gpu_all[i]->grad), ToDouble(cpu_all[i]->grad), 2e-2));
    ++checked;
  }
  EXPECT_EQ(checked, pass->trainable().size());
}

TEST_F(CudaTrainStepTest, GradientsMatchTheCpuAllTrainableWithBiases) {
  ExpectGradientsMatchCpu({"all trainable, biases", {.bias = true}, false, 0});
}

TEST_F(CudaTrainStepTest, GradientsMatchTheCpuTiedEmbeddingsChunkedLogits) {
  ExpectGradientsMatchCpu({"tied, chunks of 7 rows", {.tie = true}, false, 7});
}

TEST_F(CudaTrainStepTest, GradientsMatchTheCpuOnlyBlocks1And3Train) {
  ExpectGradientsMatchCpu({"blocks 1 and 3", {.bias = true}, true, 0});
}

// Gradients and loss of one ForwardBackward, bit for bit.
struct StepResult {
  double loss = 0;
  std::vector<std::vector<float>> grads;
};

StepResult RunOnce(const ModelOptions& model, bool blocks_1_and_3, Recompute mode) {
  LlamaParams p = MakeTrainable(model, blocks_1_and_3);
  StepResult result;
  auto pass = MustCreate(&p, PassOptions(mode));
  if (pass == nullptr) return result;
  absl::StatusOr<LossSum> loss =
      pass->ForwardBackward(RandomTokens(kBatch, kSeqLen, 3), SomeMask(kBatch, kSeqLen), 0.05f);
  EXPECT_TRUE(loss.ok()) << loss.status();
  EXPECT_TRUE(pass->DownloadGradients().ok());
  result.loss = loss.ok() ? loss->loss : 0;
  for (CudaTrainable& t : pass->trainable()) result.grads.push_back(t.param->grad);
  return result;
}

TEST_F(CudaTrainStepTest, RecomputeModesGiveBitIdenticalResults) {
  for (bool blocks_1_and_3 : {false, true}) {
    SCOPED_TRACE(blocks_1_and_3 ? "blocks 1 and 3" : "all trainable");
    const StepResult none = RunOnce({.bias = true}, blocks_1_and_3, Recompute::kNone);
    ASSERT_FALSE(none.grads.empty());
    for (Recompute mode : {Recompute::kAttention, Recompute::kFull}) {
      SCOPED_TRACE(std::string(RecomputeName(mode)));
      const StepResult other = RunOnce({.bias = true}, blocks_1_and_3, mode);
      EXPECT_EQ(other.loss, none.loss);
      ASSERT_EQ(other.grads.size(), none.grads.size());
      for (size_t i = 0; i < none.grads.size(); ++i) {
        ASSERT_EQ(other.grads[i].size(), none.grads[i].size());
        EXPECT_EQ(std::memcmp(other.grads[i].data(), none.grads[i].data(),
                              none.grads[i].size() * sizeof(float)),
                  0)
            << "tensor #" << i;
      }
    }
  }
}

TEST_F(CudaTrainStepTest, FlopsCountTheRecomputedForward) {
  LlamaParams p = MakeTrainable({}, true);
  auto none = MustCreate(&p, PassOptions(Recompute::kNone));
  auto attention = MustCreate(&p, PassOptions(Recompute::kAttention));
  auto full = MustCreate(&p, PassOptions(Recompute::kFull));
  ASSERT_TRUE(none && attention && full);
  EXPECT_EQ(none->flops_per_token().forward, full->flops_per_token().forward);
  EXPECT_LT(none->flops_per_token().backward, attention->flops_per_token().backward);
  EXPECT_LT(attention->flops_per_token().backward, full->flops_per_token().backward);
}

// train/optimizer.cc's AdamW and ClipGradNorm, written out (see the file
// comment).
class CpuAdamW {
 public:
  CpuAdamW(const OptimizerConfig& config, std::vector<Parameter*> params)
      : config_(config), params_(std::move(params)) {
    for (Parameter* p : params_) {
      m_.emplace_back(p->value.size(), 0.0f);
      v_.emplace_back(p->value.size(), 0.0f);
    }
  }
  // Returns the norm before clipping.
  double Clip() {
    double sum = 0;
    for (Parameter* p : params_) {
      for (float g : p->grad) sum += static_cast<double>(g) * static_cast<double>(g);
    }
    const double coef = config_.clip_grad_norm / (std::sqrt(sum) + 1e-6);
    if (config_.clip_grad_norm > 0 && coef < 1) {
      for (Parameter* p : params_) {
        for (float& g : p->grad) g *= static_cast<float>(coef);
      }
    }
    return std::sqrt(sum);
  }
  void Step(double lr) {
    const double t = static_cast<double>(++step_);
    const double bc1 = 1.0 - std::pow(config_.beta1, t), bc2 = 1.0 - std::pow(config_.beta2, t);
    const float decay_factor = static_cast<float>(1.0 - lr * config_.weight_decay);
    const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
    const float omb1 = static_cast<float>(1.0 - config_.beta1);
    const float omb2 = static_cast<float>(1.0 - config_.beta2);
    const float neg_step = static_cast<float>(-(lr / bc1));
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    const float eps = static_cast<float>(config_.eps);
    for (size_t i = 0; i < params_.size(); ++i) {
      std::vector<float>& p = params_[i]->value;
      const std::vector<float>& g = params_[i]->grad;
      if (params_[i]->decay && config_.weight_decay != 0) {
        for (float& x : p) x = x * decay_factor;
      }
      for (size_t j = 0; j < p.size(); ++j) {
        m_[i][j] = m_[i][j] * b1 + omb1 * g[j];
        v_[i][j] = v_[i][j] * b2 + omb2 * g[j] * g[j];
        const float denom = std::sqrt(v_[i][j]) / bc2_sqrt + eps;
        p[j] = p[j] + neg_step * (m_[i][j] / denom);
      }
    }
  }

 private:
  OptimizerConfig config_;
  std::vector<Parameter*> params_;
  std::vector<std::vector<float>> m_, v_;
  int64_t step_ = 0;
};

OptimizerConfig TestOptimizerConfig() {
  OptimizerConfig config;
  config.lr = 1e-3;
  config.weight_decay = 0.1;
  config.clip_grad_norm = 1.0;
  return config;
}

TEST_F(CudaTrainStepTest, TwentyAdamWStepsTrackTheCpu) {
  LlamaParams gpu_params = MakeTrainable({}, true);
  LlamaParams cpu_params = MakeTrainable({}, true);
  auto pass = MustCreate(&gpu_params, PassOptions(Recompute::kAttention));
  ASSERT_NE(pass, nullptr);
  const OptimizerConfig config = TestOptimizerConfig();
  auto optimizer = CudaAdamW::Create(config, pass.get());
  ASSERT_TRUE(optimizer.ok()) << optimizer.status();
  TrainingPass cpu(&cpu_params, kBatch, kSeqLen);
  CpuAdamW cpu_optimizer(config, cpu_params.Trainable());
  const std::vector<int32_t> tokens = RandomTokens(kBatch, kSeqLen, 21);
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    ASSERT_TRUE(pass->ZeroGradients().ok());
    for (Parameter* p : cpu_params.Trainable()) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
    const float scale = 1.0f / (kBatch * kSeqLen);
    absl::StatusOr<LossSum> loss = pass->ForwardBackward(tokens, {}, scale);
    absl::StatusOr<LossSum> ref = cpu.ForwardBackward(tokens, {}, scale);
    ASSERT_TRUE(loss.ok()) << loss.status();
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_TRUE(std::isfinite(loss->loss));
    EXPECT_NEAR(loss->loss, ref->loss, 0.02 * std::fabs(ref->loss)) << "step " << step;
    absl::StatusOr<double> norm = (*optimizer)->ClipGradients();
    ASSERT_TRUE(norm.ok()) << norm.status();
    EXPECT_TRUE(std::isfinite(*norm));
    const double cpu_norm = cpu_optimizer.Clip();
    EXPECT_NEAR(*norm, cpu_norm, 2e-2 * cpu_norm) << "step " << step;
    ASSERT_TRUE((*optimizer)->Step(config.lr).ok());
    cpu_optimizer.Step(config.lr);
    if (step == 0) first = ref->loss;
    last = ref->loss;
  }
  EXPECT_EQ((*optimizer)->step(), 20);
  EXPECT_LT(last, first);  // It learned something.
  // The masters track the CPU's weights (loosely: AdamW moves every element
  // by about lr per step whatever its gradient's size, so elements whose
  // tiny gradients differ in sign between bf16 and fp32 drift apart).
  ASSERT_TRUE(pass->DownloadTrainable().ok());
  for (size_t i = 0; i < pass->trainable().size(); ++i) {
    Parameter* gpu = pass->trainable()[i].param;
    Parameter* ref = cpu_params.Trainable()[i];
    EXPECT_TRUE(Close(gpu->name, ToDouble(gpu->value), ToDouble(ref->value), 5e-2));
  }
}

TEST_F(CudaTrainStepTest, OptimizerStateRoundTripsAndChecksItsConfig) {
  LlamaParams p = MakeTrainable({.bias = true}, true);
  auto pass = MustCreate(&p, PassOptions());
  ASSERT_NE(pass, nullptr);
  const OptimizerConfig config = TestOptimizerConfig();
  auto optimizer = CudaAdamW::Create(config, pass.get());
  ASSERT_TRUE(optimizer.ok()) << optimizer.status();
  ASSERT_TRUE(pass->ForwardBackward(RandomTokens(kBatch, kSeqLen, 4), {}, 0.01f).ok());
  ASSERT_TRUE((*optimizer)->ClipGradients().ok());
  ASSERT_TRUE((*optimizer)->Step(config.lr).ok());
  auto state = (*optimizer)->DownloadState();
  ASSERT_TRUE(state.ok()) << state.status();
  const std::vector<Parameter*> trainable = p.Trainable();
  ASSERT_EQ(state->size(), 2 * trainable.size());
  int64_t elements = 0;
  for (size_t i = 0; i < trainable.size(); ++i) {
    EXPECT_EQ((*state)[2 * i].first, "exp_avg." + trainable[i]->name);
    EXPECT_EQ((*state)[2 * i + 1].first, "exp_avg_sq." + trainable[i]->name);
    EXPECT_EQ((*state)[2 * i].second.size(), trainable[i]->value.size());
    elements += trainable[i]->NumElements();
  }
  EXPECT_EQ((*optimizer)->StateBytes(), 8 * elements);
  // Another optimizer takes the state and gives it back unchanged.
  auto other = CudaAdamW::Create(config, pass.get());
  ASSERT_TRUE(other.ok()) << other.status();
  for (const auto& [name, values] : *state) {
    ASSERT_TRUE((*other)->UploadState(name, values).ok()) << name;
  }
  auto again = (*other)->DownloadState();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *state);
  EXPECT_EQ((*other)->UploadState("exp_avg.nope", {}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*other)->UploadState(state->front().first, {1.0f}).code(),
            absl::StatusCode::kInvalidArgument);
  // Config checks as MakeOptimizer's; SGD stays on the CPU.
  OptimizerConfig sgd = config;
  sgd.name = "sgd";
  EXPECT_EQ(CudaAdamW::Create(sgd, pass.get()).status().code(), absl::StatusCode::kInvalidArgument);
  OptimizerConfig bad = config;
  bad.beta1 = 1.0;
  EXPECT_EQ(CudaAdamW::Create(bad, pass.get()).status().code(), absl::StatusCode::kInvalidArgument);
  bad = config;
  bad.eps = 0;
  EXPECT_EQ(CudaAdamW::Create(bad, pass.get()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaTrainStepTest, ZeroGradientsAndUploadTrainable) {
  LlamaParams p = MakeTrainable({}, false);
  auto pass = MustCreate(&p, PassOptions());
  ASSERT_NE(pass, nullptr);
  const std::vector<int32_t> tokens = RandomTokens(kBatch, kSeqLen, 6);
  absl::StatusOr<LossSum> before = pass->Evaluate(tokens, {});
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(pass->ForwardBackward(tokens, {}, 1.0f).ok());
  ASSERT_TRUE(pass->ZeroGradients().ok());
  ASSERT_TRUE(pass->DownloadGradients().ok());
  for (CudaTrainable& t : pass->trainable()) {
    for (float g : t.param->grad) ASSERT_EQ(g, 0.0f) << t.param->name;
  }
  // Changed host values reach the device; downloading gives them back.
  for (float& x : p.final_norm.value) x *= 2.0f;
  ASSERT_TRUE(pass->UploadTrainable().ok());
  absl::StatusOr<LossSum> after = pass->Evaluate(tokens, {});
  ASSERT_TRUE(after.ok());
  EXPECT_NE(after->loss, before->loss);
  const std::vector<float> uploaded = p.final_norm.value;
  ASSERT_TRUE(pass->DownloadTrainable().ok());
  EXPECT_EQ(p.final_norm.value, uploaded);
}

TEST_F(CudaTrainStepTest, TokensOutOfRangeAreRejected) {
  LlamaParams p = MakeTrainable({}, false);
  auto pass = MustCreate(&p, PassOptions());
  ASSERT_NE(pass, nullptr);
  std::vector<int32_t> tokens = RandomTokens(kBatch, kSeqLen, 8);
  tokens[7] = 256;
  absl::StatusOr<LossSum> loss = pass->ForwardBackward(tokens, {}, 1.0f);
  ASSERT_FALSE(loss.ok());
  EXPECT_EQ(loss.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(loss.status().message().find("position 7"), absl::string_view::npos) << loss.status();
  EXPECT_NE(loss.status().message().find("256"), absl::string_view::npos) << loss.status();
  tokens[7] = -1;
  EXPECT_EQ(pass->Evaluate(tokens, {}).status().code(), absl::StatusCode::kInvalidArgument);
  tokens.pop_back();
  EXPECT_EQ(pass->Logits(tokens).status().code(), absl::StatusCode::kInvalidArgument);
  // The pass still works afterwards.
  EXPECT_TRUE(pass->Evaluate(RandomTokens(kBatch, kSeqLen, 8), {}).ok());
}

// Records the listener's calls.
class RecordingListener : public GradientReadyListener {
 public:
  absl::Status GradientsReady(std::span<CudaTrainable* const> ready, cudaStream_t stream) override {
    EXPECT_NE(stream, nullptr);
    std::vector<std::string> names;
    for (CudaTrainable* t : ready) names.push_back(t->param->name);
    calls.push_back(names);
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> calls;
};

TEST_F(CudaTrainStepTest, ListenerHearsEachGroupOnceInBackwardOrder) {
  LlamaParams p = MakeTrainable({}, false);
  auto pass = MustCreate(&p, PassOptions());
  ASSERT_NE(pass, nullptr);
  RecordingListener listener;
  ASSERT_TRUE(pass->ForwardBackward(RandomTokens(kBatch, kSeqLen, 2), {}, 1.0f, &listener).ok());
  // Head group, blocks 3..0, embedding.
  ASSERT_EQ(listener.calls.size(), 6u);
  EXPECT_EQ(listener.calls[0], (std::vector<std::string>{"model.norm.weight", "lm_head.weight"}));
  for (int i = 0; i < 4; ++i) {
    const std::string prefix = absl::StrCat("model.layers.", 3 - i, ".");
    EXPECT_EQ(listener.calls[1 + i].size(), 11u);
    for (const std::string& name : listener.calls[1 + i]) {
      EXPECT_EQ(name.rfind(prefix, 0), 0u) << name;
    }
  }
  EXPECT_EQ(listener.calls[5], (std::vector<std::string>{"model.embed_tokens.weight"}));
  // An error from the listener aborts the pass with it.
  class Failing : public GradientReadyListener {
   public:
    absl::Status GradientsReady(std::span<CudaTrainable* const>, cudaStream_t) override {
      return absl::UnavailableError("peer gone");
    }
  } failing;
  EXPECT_EQ(
      pass->ForwardBackward(RandomTokens(kBatch, kSeqLen, 2), {}, 1.0f, &failing).status().code(),
      absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace llamapro
