#include "model/llama_train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"
#include "model/rope.h"

namespace llamapro {
namespace {

const float* ValueOf(const Parameter& p) { return p.value.empty() ? nullptr : p.value.data(); }

void AddTo(float* y, const std::vector<float>& x, int64_t n) { cpu::AddInPlace(y, x.data(), n); }

// The MoE baseline's mixing weights softmax(m) of a block's two experts.
std::pair<float, float> MixWeights(const Parameter& mix) {
  const double m0 = mix.value[0], m1 = mix.value[1];
  const double top = std::max(m0, m1);
  const double e0 = std::exp(m0 - top), e1 = std::exp(m1 - top);
  return {static_cast<float>(e0 / (e0 + e1)), static_cast<float>(e1 / (e0 + e1))};
}

// LoRA forward of a linear layer y = x W^T: y[n, out] += scale * t B^T with
// t = x A^T [n, rank] kept in *t for the backward. Nothing when absent.
void LoraForward(const LoraAdapter& l, float scale, const float* x, float* y, std::vector<float>* t,
                 int64_t n, int64_t in, int64_t out) {
  if (!l.present()) return;
  const int64_t r = l.a.shape[0];
  t->resize(n * r);
  cpu::Sgemm(false, true, n, r, in, 1.0f, x, in, l.a.value.data(), in, 0.0f, t->data(), r);
  cpu::Sgemm(false, true, n, out, r, scale, t->data(), r, l.b.value.data(), r, 1.0f, y, out);
}

// Its backward, given dy [n, out], the layer input x and t: dB += scale dy^T t,
// dt = scale dy B, dA += dt^T x, and dx += dt A when dx != nullptr.
void LoraBackward(const LoraAdapter& l, float scale, const float* dy, const float* x,
                  const std::vector<float>& t, float* da, float* db, float* dx,
                  std::vector<float>* dt, int64_t n, int64_t in, int64_t out) {
  if (!l.present()) return;
  const int64_t r = l.a.shape[0];
  if (db != nullptr) {
    cpu::Sgemm(true, false, out, r, n, scale, dy, out, t.data(), r, 1.0f, db, r);
  }
  dt->resize(n * r);
  cpu::Sgemm(false, false, n, r, out, scale, dy, out, l.b.value.data(), r, 0.0f, dt->data(), r);
  if (da != nullptr) {
    cpu::Sgemm(true, false, r, in, n, 1.0f, dt->data(), r, x, in, 1.0f, da, in);
  }
  if (dx != nullptr) {
    cpu::Sgemm(false, false, n, in, r, 1.0f, dt->data(), r, l.a.value.data(), in, 1.0f, dx, in);
  }
}

// With LLAMAPRO_PROFILE=1 in the environment, wall time per op kind is
// summed and printed to stderr at exit (a development aid; off by default,
// and then costs one branch per op).
class OpProfile {
 public:
  static OpProfile& Get() {
    static OpProfile* profile = new OpProfile();
    return *profile;
  }
  bool enabled() const { return enabled_; }
  void Add(const char* name, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& [total, calls] = totals_[name];
    total += seconds;
    ++calls;
  }

 private:
  OpProfile() : enabled_(std::getenv("LLAMAPRO_PROFILE") != nullptr) {
    if (enabled_) std::atexit([] { Get().Print(); });
  }
  void Print() {
    std::vector<std::pair<double, std::string>> rows;
    double sum = 0;
    for (const auto& [name, entry] : totals_) {
      rows.emplace_back(entry.first, name);
      sum += entry.first;
    }
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "op profile (wall seconds, %% of profiled time):\n");
    for (const auto& [seconds, name] : rows) {
      std::fprintf(stderr, "  %-28s %9.3f s  %5.1f%%  %lld calls\n", name.c_str(), seconds,
                   100 * seconds / sum, static_cast<long long>(totals_[name].second));
    }
  }
  bool enabled_;
  std::mutex mutex_;
  std::map<std::string, std::pair<double, int64_t>> totals_;
};

#define LP_OP(name, call)                                                                         \
  do {                                                                                            \
    if (OpProfile::Get().enabled()) [[unlikely]] {                                                \
      const auto lp_op_start = std::chrono::steady_clock::now();                                  \
      call;                                                                                       \
      OpProfile::Get().Add(                                                                       \
          name,                                                                                   \
          std::chrono::duration<double>(std::chrono::steady_clock::now() - lp_op_start).count()); \
    } else {                                                                                      \
      call;                                                                                       \
    }                                                                                             \
  } while (false)

}  // namespace

TrainingPass::TrainingPass(LlamaParams* params, int64_t batch, int64_t seq_len, bool for_training,
                           bool private_gradients, TensorParallel tp)
    : params_(params),
      config_(params->config),
      tp_(tp),
      heads_(params->config.num_attention_heads / tp.size),
      kv_heads_(params->config.num_key_value_heads / tp.size),
      ffn_(params->config.intermediate_size / tp.size),
      vocab_(params->config.vocab_size / tp.size),
      vocab_begin_(params->config.vocab_size / tp.size * tp.rank),
      batch_(batch),
      seq_len_(seq_len),
      rows_(batch * seq_len),
      for_training_(for_training) {
  LP_CHECK(batch > 0 && seq_len > 0);
  LP_CHECK(tp.size >= 1 && (tp.size == 1 || tp.comm != nullptr));
  const int64_t layers = static_cast<int64_t>(params->blocks.size());
  embed_grad_ = for_training && params->embed.trainable;
  lowest_ = layers;
  if (!for_training) {
    // Evaluation: nothing is differentiated.
  } else if (embed_grad_) {
    lowest_ = 0;
  } else {
    for (int64_t i = 0; i < layers; ++i) {
      if (params->blocks[i].AnyTrainable()) {
        lowest_ = i;
        break;
      }
    }
  }
  ref::RopeTables(RopeInverseFrequencies<float>(config_), seq_len, &cos_, &sin_);
  const int64_t n = rows_, c = config_.hidden_size, f = ffn_;
  const int64_t q = heads_ * config_.head_dim;
  const int64_t kv = kv_heads_ * config_.head_dim;
  const int64_t lse = batch * heads_ * seq_len;
  auto allocate = [&](BlockActivations* a, bool keep_inputs) {
    if (keep_inputs) {
      a->x_in.resize(n * c);
      a->x_mid.resize(n * c);
    }
    a->xn1.resize(n * c);
    a->inv1.resize(n);
    a->q.resize(n * q);
    a->k.resize(n * kv);
    a->v.resize(n * kv);
    a->attn.resize(n * q);
    a->lse.resize(lse);
    a->xn2.resize(n * c);
    a->inv2.resize(n);
    a->gate.resize(n * f);
    a->up.resize(n * f);
  };
  saved_.resize(layers);
  for (int64_t i = lowest_; i < layers; ++i) allocate(&saved_[i], true);
  if (lowest_ > 0 || lowest_ == layers) allocate(&scratch_, false);
  inputs_.resize(n);
  targets_.resize(n);
  target_mask_.resize(n);
  x_.resize(n * c);
  x_final_.resize(n * c);
  xn_final_.resize(n * c);
  inv_final_.resize(n);
  dres_.resize(n * c);
  dxn_.resize(n * c);
  dtmp_.resize(n * c);
  act_.resize(n * f);
  if (lowest_ < layers) {
    dq_.resize(n * q);
    dk_.resize(n * kv);
    dv_.resize(n * kv);
    dattn_.resize(n * q);
    dact_.resize(n * f);
    dgate_.resize(n * f);
    dup_.resize(n * f);
  }
  attn_scratch_.resize(
      std::max(cpu::AttentionScratchSize(seq_len), cpu::AttentionBackwardScratchSize(seq_len)));
  if (tp_.active()) {
    logits_.resize(n * vocab_);
    row_lse_.resize(n);
    gathered_lse_.resize(n * tp_.size);
    target_logit_.resize(n);
  } else {
    lm_scratch_.resize(cpu::LmHeadScratchSize(config_.vocab_size));
  }
  if (private_gradients && for_training) {
    for (Parameter* p : params->Trainable()) private_grads_[p].assign(p->value.size(), 0.0f);
  }
  ComputeFlops();
}

float* TrainingPass::Grad(Parameter& p) {
  if (!p.trainable) return nullptr;
  if (private_grads_.empty()) return p.grad.data();
  return private_grads_.at(&p).data();
}

std::vector<float>* TrainingPass::private_gradient(const Parameter* p) {
  auto it = private_grads_.find(p);
  return it == private_grads_.end() ? nullptr : &it->second;
}

void TrainingPass::ZeroPrivateGradients() {
  for (auto& [param, grad] : private_grads_) std::fill(grad.begin(), grad.end(), 0.0f);
}

uint64_t TrainingPass::ActivationBytes() const {
  uint64_t floats = 0;
  auto add = [&](const BlockActivations& a) {
    for (const std::vector<float>* v : {&a.x_in, &a.xn1, &a.inv1, &a.q, &a.k, &a.v, &a.attn, &a.lse,
                                        &a.x_mid, &a.xn2, &a.inv2, &a.gate, &a.up}) {
      floats += v->size();
    }
  };
  for (const BlockActivations& a : saved_) add(a);
  add(scratch_);
  for (const auto& [param, grad] : private_grads_) floats += grad.size();
  for (const std::vector<float>* v :
       {&x_,       &x_final_,      &xn_final_,    &inv_final_,    &dres_,       &dxn_,
        &dtmp_,    &dq_,           &dk_,          &dv_,           &dattn_,      &dact_,
        &dgate_,   &dup_,          &act_,         &attn_scratch_, &lm_scratch_, &logits_,
        &row_lse_, &gathered_lse_, &target_logit_}) {
    floats += v->size();
  }
  return floats * sizeof(float);
}

void TrainingPass::ComputeFlops() {
  const double c = static_cast<double>(config_.hidden_size);
  // This rank's share under tensor parallelism.
  const double f = static_cast<double>(ffn_);
  const double q = static_cast<double>(heads_ * config_.head_dim);
  const double kv = static_cast<double>(kv_heads_ * config_.head_dim);
  const double v = static_cast<double>(vocab_);
  const double t = static_cast<double>(seq_len_);
  const double qkv = c * (q + 2 * kv);
  const double layers = static_cast<double>(params_->blocks.size());
  flops_.forward = layers * (2 * qkv + 2 * q * c + 6 * c * f + 4 * t * q) + 2 * c * v;
  double backward = 0;
  const bool head_dx = lowest_ < static_cast<int64_t>(params_->blocks.size()) ||
                       (for_training_ && params_->final_norm.trainable);
  if (head_dx) backward += 2 * c * v;
  if (params_->Head().trainable && for_training_) backward += 2 * c * v;
  for (int64_t i = lowest_; i < static_cast<int64_t>(params_->blocks.size()); ++i) {
    BlockParams& b = params_->blocks[i];
    backward += 2 * f * c + 4 * c * f + 2 * q * c + 10 * t * q;  // Input gradients inside.
    if (b.down_proj.trainable) backward += 2 * f * c;
    if (b.gate_proj.trainable) backward += 4 * c * f;
    if (b.o_proj.trainable) backward += 2 * q * c;
    const bool need_dxn1 = i > lowest_ || embed_grad_ || b.input_norm.trainable;
    if (need_dxn1) backward += 2 * qkv;
    if (b.q_proj.trainable) backward += 2 * qkv;
  }
  // MoE: the second expert's three GEMMs forward; its input and weight
  // gradients backward.
  for (int64_t i = 0; i < static_cast<int64_t>(params_->blocks.size()); ++i) {
    if (!params_->blocks[i].moe()) continue;
    flops_.forward += 6 * c * f;
    if (for_training_ && i >= lowest_) {
      backward += 6 * c * f + (params_->blocks[i].expert_down.trainable ? 6 * c * f : 0);
    }
  }
  // LoRA: t = x A^T and t B^T forward; dB, dt, dA and dx backward.
  for (int64_t i = 0; i < static_cast<int64_t>(params_->blocks.size()); ++i) {
    for (const LoraAdapter& l : params_->blocks[i].lora) {
      if (!l.present()) continue;
      const double r = static_cast<double>(l.a.shape[0]);
      const double in = static_cast<double>(l.a.shape[1]), out = static_cast<double>(l.b.shape[0]);
      flops_.forward += 2 * r * (in + out);
      if (for_training_ && i >= lowest_) backward += 4 * r * (in + out);
    }
  }
  flops_.backward = backward;
}

absl::Status TrainingPass::Prepare(std::span<const int32_t> tokens, std::span<const uint8_t> mask) {
  const int64_t width = seq_len_ + 1;
  if (static_cast<int64_t>(tokens.size()) != batch_ * width) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", batch_, " x ", width, " tokens, got ", tokens.size()));
  }
  if (!mask.empty() && mask.size() != tokens.size()) {
    return absl::InvalidArgumentError("the loss mask and the tokens differ in size");
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", tokens[i], " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  all_targets_ = mask.empty();
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t t = 0; t < seq_len_; ++t) {
      inputs_[b * seq_len_ + t] = tokens[b * width + t];
      targets_[b * seq_len_ + t] = tokens[b * width + t + 1];
      target_mask_[b * seq_len_ + t] = mask.empty() ? 1 : (mask[b * width + t + 1] != 0 ? 1 : 0);
    }
  }
  return absl::OkStatus();
}

void TrainingPass::BlockForward(int64_t layer, BlockActivations* saved, float* x) {
  BlockParams& b = params_->blocks[layer];
  BlockActivations& a = saved != nullptr ? *saved : scratch_;
  const int64_t n = rows_, c = config_.hidden_size, f = ffn_;
  const int64_t h = heads_, hkv = kv_heads_;
  const int64_t d = config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  if (saved != nullptr) std::memcpy(a.x_in.data(), x, n * c * sizeof(float));
  LP_OP("rmsnorm fwd",
        cpu::RmsNormForward(x, b.input_norm.value.data(), a.xn1.data(), a.inv1.data(), n, c, eps));
  const float s = params_->LoraScale();
  LP_OP("gemm fwd", cpu::Linear(a.xn1.data(), b.q_proj.value.data(), ValueOf(b.q_bias), a.q.data(),
                                n, c, h * d));
  LP_OP("gemm fwd", cpu::Linear(a.xn1.data(), b.k_proj.value.data(), ValueOf(b.k_bias), a.k.data(),
                                n, c, hkv * d));
  LP_OP("gemm fwd", cpu::Linear(a.xn1.data(), b.v_proj.value.data(), ValueOf(b.v_bias), a.v.data(),
                                n, c, hkv * d));
  LP_OP("lora fwd", LoraForward(b.lora[0], s, a.xn1.data(), a.q.data(), &a.lora_t[0], n, c, h * d));
  LP_OP("lora fwd",
        LoraForward(b.lora[1], s, a.xn1.data(), a.k.data(), &a.lora_t[1], n, c, hkv * d));
  LP_OP("lora fwd",
        LoraForward(b.lora[2], s, a.xn1.data(), a.v.data(), &a.lora_t[2], n, c, hkv * d));
  LP_OP("rope", cpu::ApplyRope(a.q.data(), cos_.data(), sin_.data(), batch_, seq_len_, h, d));
  LP_OP("rope", cpu::ApplyRope(a.k.data(), cos_.data(), sin_.data(), batch_, seq_len_, hkv, d));
  LP_OP("attention fwd", cpu::AttentionForward(a.q.data(), a.k.data(), a.v.data(), a.attn.data(),
                                               a.lse.data(), batch_, seq_len_, h, hkv, d,
                                               config_.sliding_window, attn_scratch_.data()));
  // o_proj and down_proj are split by input features: each rank's product
  // is a partial sum, the bias is added by TP rank 0 alone.
  const bool row_bias = tp_.rank == 0;
  LP_OP("gemm fwd", cpu::Linear(a.attn.data(), b.o_proj.value.data(),
                                row_bias ? ValueOf(b.o_bias) : nullptr, dtmp_.data(), n, h * d, c));
  LP_OP("lora fwd",
        LoraForward(b.lora[3], s, a.attn.data(), dtmp_.data(), &a.lora_t[3], n, h * d, c));
  TpAllReduce(dtmp_.data(), n * c);
  LP_OP("add", cpu::AddInPlace(x, dtmp_.data(), n * c));
  if (saved != nullptr) std::memcpy(a.x_mid.data(), x, n * c * sizeof(float));
  LP_OP("rmsnorm fwd",
        cpu::RmsNormForward(x, b.post_norm.value.data(), a.xn2.data(), a.inv2.data(), n, c, eps));
  LP_OP("gemm fwd", cpu::Linear(a.xn2.data(), b.gate_proj.value.data(), ValueOf(b.gate_bias),
                                a.gate.data(), n, c, f));
  LP_OP("gemm fwd", cpu::Linear(a.xn2.data(), b.up_proj.value.data(), ValueOf(b.up_bias),
                                a.up.data(), n, c, f));
  LP_OP("lora fwd", LoraForward(b.lora[4], s, a.xn2.data(), a.gate.data(), &a.lora_t[4], n, c, f));
  LP_OP("lora fwd", LoraForward(b.lora[5], s, a.xn2.data(), a.up.data(), &a.lora_t[5], n, c, f));
  LP_OP("silu-mul fwd", cpu::SiluMul(a.gate.data(), a.up.data(), act_.data(), n * f));
  LP_OP("gemm fwd", cpu::Linear(act_.data(), b.down_proj.value.data(),
                                row_bias ? ValueOf(b.down_bias) : nullptr, dtmp_.data(), n, f, c));
  LP_OP("lora fwd", LoraForward(b.lora[6], s, act_.data(), dtmp_.data(), &a.lora_t[6], n, f, c));
  if (b.moe()) {
    // The second expert, and the mix softmax(m)[0] E0 + softmax(m)[1] E1.
    a.gate1.resize(n * f);
    a.up1.resize(n * f);
    a.e0.assign(dtmp_.begin(), dtmp_.end());
    a.e1.resize(n * c);
    moe_act_.resize(n * f);
    LP_OP("gemm fwd",
          cpu::Linear(a.xn2.data(), b.expert_gate.value.data(), nullptr, a.gate1.data(), n, c, f));
    LP_OP("gemm fwd",
          cpu::Linear(a.xn2.data(), b.expert_up.value.data(), nullptr, a.up1.data(), n, c, f));
    LP_OP("silu-mul fwd", cpu::SiluMul(a.gate1.data(), a.up1.data(), moe_act_.data(), n * f));
    LP_OP("gemm fwd",
          cpu::Linear(moe_act_.data(), b.expert_down.value.data(), nullptr, a.e1.data(), n, f, c));
    const auto [w0, w1] = MixWeights(b.expert_mix);
    for (int64_t i = 0; i < n * c; ++i) dtmp_[i] = w0 * a.e0[i] + w1 * a.e1[i];
  }
  TpAllReduce(dtmp_.data(), n * c);
  LP_OP("add", cpu::AddInPlace(x, dtmp_.data(), n * c));
}

LossSum TrainingPass::Forward(bool keep_final) {
  const int64_t n = rows_, c = config_.hidden_size;
  EmbeddingForward();
  for (int64_t i = 0; i < static_cast<int64_t>(params_->blocks.size()); ++i) {
    BlockForward(i, i >= lowest_ ? &saved_[i] : nullptr, x_.data());
  }
  if (keep_final) std::memcpy(x_final_.data(), x_.data(), n * c * sizeof(float));
  LP_OP("rmsnorm fwd",
        cpu::RmsNormForward(x_.data(), params_->final_norm.value.data(), xn_final_.data(),
                            inv_final_.data(), n, c, static_cast<float>(config_.rms_norm_eps)));
  LossSum sum;
  for (uint8_t m : target_mask_) sum.targets += m;
  return sum;
}

void TrainingPass::BlockBackward(int64_t layer, bool need_input_grad, float* dres) {
  BlockParams& b = params_->blocks[layer];
  BlockActivations& a = saved_[layer];
  const int64_t n = rows_, c = config_.hidden_size, f = ffn_;
  const int64_t h = heads_, hkv = kv_heads_;
  const int64_t d = config_.head_dim;

  const float s = params_->LoraScale();
  // LoRA adapter t's gradients (and its input gradient into dx).
  auto lora = [&](int t, const float* dy, const float* x, float* dx, int64_t in, int64_t out) {
    LoraAdapter& l = b.lora[t];
    LP_OP("lora bwd",
          LoraBackward(l, s, dy, x, a.lora_t[t], Grad(l.a), Grad(l.b), dx, &lora_dt_, n, in, out));
  };

  // MLP branch: x_out = x_mid + down(silu(gate) * up) (with MoE: the mix of
  // two such experts).
  const float* mlp_dy = dres;  // Gradient w.r.t. expert 0's output.
  if (b.moe()) {
    const auto [w0, w1] = MixWeights(b.expert_mix);
    double g0 = 0, g1 = 0;  // d loss / d w_k = <dres, E_k>
    for (int64_t i = 0; i < n * c; ++i) {
      g0 += static_cast<double>(dres[i]) * a.e0[i];
      g1 += static_cast<double>(dres[i]) * a.e1[i];
    }
    if (float* dmix = Grad(b.expert_mix); dmix != nullptr) {
      const double mean = w0 * g0 + w1 * g1;  // Softmax backward.
      dmix[0] += static_cast<float>(w0 * (g0 - mean));
      dmix[1] += static_cast<float>(w1 * (g1 - mean));
    }
    // Expert 1, from dy1 = w1 dres; its input gradient into moe_dxn_.
    moe_dy_.resize(n * c);
    moe_act_.resize(n * f);
    moe_dact_.resize(n * f);
    moe_dgate_.resize(n * f);
    moe_dup_.resize(n * f);
    moe_dxn_.resize(n * c);
    for (int64_t i = 0; i < n * c; ++i) moe_dy_[i] = w1 * dres[i];
    cpu::SiluMul(a.gate1.data(), a.up1.data(), moe_act_.data(), n * f);
    LP_OP("gemm bwd",
          cpu::LinearBackward(moe_dy_.data(), moe_act_.data(), b.expert_down.value.data(),
                              moe_dact_.data(), Grad(b.expert_down), nullptr, n, f, c));
    LP_OP("silu-mul bwd", cpu::SiluMulBackward(a.gate1.data(), a.up1.data(), moe_dact_.data(),
                                               moe_dgate_.data(), moe_dup_.data(), n * f));
    LP_OP("gemm bwd",
          cpu::LinearBackward(moe_dgate_.data(), a.xn2.data(), b.expert_gate.value.data(),
                              moe_dxn_.data(), Grad(b.expert_gate), nullptr, n, c, f));
    LP_OP("gemm bwd", cpu::LinearBackward(moe_dup_.data(), a.xn2.data(), b.expert_up.value.data(),
                                          dtmp_.data(), Grad(b.expert_up), nullptr, n, c, f));
    LP_OP("add", AddTo(moe_dxn_.data(), dtmp_, n * c));
    // Expert 0 from dy0 = w0 dres.
    for (int64_t i = 0; i < n * c; ++i) moe_dy_[i] = w0 * dres[i];
    mlp_dy = moe_dy_.data();
  }
  if (b.down_proj.trainable || b.lora[6].present()) {
    cpu::SiluMul(a.gate.data(), a.up.data(), act_.data(), n * f);
  }
  LP_OP("gemm bwd", cpu::LinearBackward(mlp_dy, act_.data(), b.down_proj.value.data(), dact_.data(),
                                        Grad(b.down_proj), Grad(b.down_bias), n, f, c));
  lora(6, mlp_dy, act_.data(), dact_.data(), f, c);
  LP_OP("silu-mul bwd", cpu::SiluMulBackward(a.gate.data(), a.up.data(), dact_.data(),
                                             dgate_.data(), dup_.data(), n * f));
  LP_OP("gemm bwd",
        cpu::LinearBackward(dgate_.data(), a.xn2.data(), b.gate_proj.value.data(), dxn_.data(),
                            Grad(b.gate_proj), Grad(b.gate_bias), n, c, f));
  lora(4, dgate_.data(), a.xn2.data(), dxn_.data(), c, f);
  LP_OP("gemm bwd", cpu::LinearBackward(dup_.data(), a.xn2.data(), b.up_proj.value.data(),
                                        dtmp_.data(), Grad(b.up_proj), Grad(b.up_bias), n, c, f));
  lora(5, dup_.data(), a.xn2.data(), dtmp_.data(), c, f);
  LP_OP("add", AddTo(dxn_.data(), dtmp_, n * c));
  if (b.moe()) LP_OP("add", AddTo(dxn_.data(), moe_dxn_, n * c));
  TpAllReduce(dxn_.data(), n * c);  // Each rank's features' share of d(xn2).
  LP_OP("rmsnorm bwd", cpu::RmsNormBackward(dxn_.data(), a.x_mid.data(), b.post_norm.value.data(),
                                            a.inv2.data(), dtmp_.data(), Grad(b.post_norm), n, c));
  LP_OP("add", AddTo(dres, dtmp_, n * c));  // Now d(x_mid).

  // Attention branch: x_mid = x_in + o(attention(rope(q), rope(k), v)).
  LP_OP("gemm bwd", cpu::LinearBackward(dres, a.attn.data(), b.o_proj.value.data(), dattn_.data(),
                                        Grad(b.o_proj), Grad(b.o_bias), n, h * d, c));
  lora(3, dres, a.attn.data(), dattn_.data(), h * d, c);
  LP_OP("attention bwd",
        cpu::AttentionBackward(a.q.data(), a.k.data(), a.v.data(), a.attn.data(), a.lse.data(),
                               dattn_.data(), dq_.data(), dk_.data(), dv_.data(), batch_, seq_len_,
                               h, hkv, d, config_.sliding_window, attn_scratch_.data()));
  LP_OP("rope bwd",
        cpu::ApplyRopeBackward(dq_.data(), cos_.data(), sin_.data(), batch_, seq_len_, h, d));
  LP_OP("rope bwd",
        cpu::ApplyRopeBackward(dk_.data(), cos_.data(), sin_.data(), batch_, seq_len_, hkv, d));
  const bool need_dxn1 = need_input_grad || b.input_norm.trainable;
  LP_OP("gemm bwd", cpu::LinearBackward(dq_.data(), a.xn1.data(), b.q_proj.value.data(),
                                        need_dxn1 ? dxn_.data() : nullptr, Grad(b.q_proj),
                                        Grad(b.q_bias), n, c, h * d));
  lora(0, dq_.data(), a.xn1.data(), need_dxn1 ? dxn_.data() : nullptr, c, h * d);
  LP_OP("gemm bwd", cpu::LinearBackward(dk_.data(), a.xn1.data(), b.k_proj.value.data(),
                                        need_dxn1 ? dtmp_.data() : nullptr, Grad(b.k_proj),
                                        Grad(b.k_bias), n, c, hkv * d));
  lora(1, dk_.data(), a.xn1.data(), need_dxn1 ? dtmp_.data() : nullptr, c, hkv * d);
  if (need_dxn1) LP_OP("add", AddTo(dxn_.data(), dtmp_, n * c));
  LP_OP("gemm bwd", cpu::LinearBackward(dv_.data(), a.xn1.data(), b.v_proj.value.data(),
                                        need_dxn1 ? dtmp_.data() : nullptr, Grad(b.v_proj),
                                        Grad(b.v_bias), n, c, hkv * d));
  lora(2, dv_.data(), a.xn1.data(), need_dxn1 ? dtmp_.data() : nullptr, c, hkv * d);
  if (!need_dxn1) return;
  LP_OP("add", AddTo(dxn_.data(), dtmp_, n * c));
  TpAllReduce(dxn_.data(), n * c);  // Each rank's heads' share of d(xn1).
  LP_OP("rmsnorm bwd",
        cpu::RmsNormBackward(dxn_.data(), a.x_in.data(), b.input_norm.value.data(), a.inv1.data(),
                             need_input_grad ? dtmp_.data() : nullptr, Grad(b.input_norm), n, c));
  if (need_input_grad) LP_OP("add", AddTo(dres, dtmp_, n * c));  // Now d(x_in).
}

void TrainingPass::TpAllReduce(float* data, int64_t n) {
  if (!tp_.active() || !tp_status_.ok()) return;
  LP_OP("tp all-reduce", tp_status_ = tp_.comm->AllReduceSum(data, static_cast<size_t>(n)));
}

void TrainingPass::EmbeddingForward() {
  const int64_t n = rows_, c = config_.hidden_size;
  const float* table = params_->embed.value.data();
  if (!tp_.active()) {
    LP_OP("embedding", cpu::Embedding(table, inputs_.data(), x_.data(), n, c));
    return;
  }
  // Rows of this rank's vocabulary slice; zeros elsewhere; then the sum.
  for (int64_t r = 0; r < n; ++r) {
    const int64_t t = inputs_[r] - vocab_begin_;
    float* row = x_.data() + r * c;
    if (t >= 0 && t < vocab_) {
      std::memcpy(row, table + t * c, c * sizeof(float));
    } else {
      std::fill(row, row + c, 0.0f);
    }
  }
  TpAllReduce(x_.data(), n * c);
}

double TrainingPass::ParallelCrossEntropy(float scale, float* dx, float* dw) {
  const int64_t n = rows_, c = config_.hidden_size, v = vocab_;
  const float* x = xn_final_.data();
  const float* w = params_->Head().value.data();
  float* logits = logits_.data();
  // This rank's logits, their log-sum-exp, and the target's logit where
  // this rank holds the target.
  cpu::Sgemm(false, true, n, v, c, 1.0f, x, c, w, c, 0.0f, logits, v);
  for (int64_t r = 0; r < n; ++r) {
    const float* row = logits + r * v;
    float top = row[0];
    for (int64_t j = 1; j < v; ++j) top = std::max(top, row[j]);
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(row[j] - top));
    row_lse_[r] = static_cast<float>(top + std::log(sum));
    const int64_t t = targets_[r] - vocab_begin_;
    target_logit_[r] = t >= 0 && t < v ? row[t] : 0.0f;
  }
  if (tp_status_.ok()) {
    tp_status_ = tp_.comm->AllGather(row_lse_.data(), gathered_lse_.data(),
                                     std::vector<size_t>(tp_.size, static_cast<size_t>(n)));
  }
  TpAllReduce(target_logit_.data(), n);
  if (!tp_status_.ok()) return 0;
  double loss = 0;
  for (int64_t r = 0; r < n; ++r) {
    // The full vocabulary's log-sum-exp from the ranks' (in rank order, so
    // every rank computes the same value).
    double top = gathered_lse_[r];
    for (int k = 1; k < tp_.size; ++k) top = std::max(top, double{gathered_lse_[k * n + r]});
    double sum = 0;
    for (int k = 0; k < tp_.size; ++k) sum += std::exp(gathered_lse_[k * n + r] - top);
    const double lse = top + std::log(sum);
    row_lse_[r] = static_cast<float>(lse);
    const bool counted = all_targets_ || target_mask_[r] != 0;
    if (counted) loss += lse - target_logit_[r];
    if (dx == nullptr && dw == nullptr) continue;
    // d loss / d logits = scale * (softmax - onehot) on counted rows.
    float* row = logits + r * v;
    if (!counted) {
      std::fill(row, row + v, 0.0f);
      continue;
    }
    for (int64_t j = 0; j < v; ++j) {
      row[j] = scale * static_cast<float>(std::exp(static_cast<double>(row[j]) - lse));
    }
    const int64_t t = targets_[r] - vocab_begin_;
    if (t >= 0 && t < v) row[t] -= scale;
  }
  if (dw != nullptr) cpu::Sgemm(true, false, v, c, n, 1.0f, logits, v, x, c, 1.0f, dw, c);
  if (dx != nullptr) {
    cpu::Sgemm(false, false, n, c, v, 1.0f, logits, v, w, c, 0.0f, dx, c);
    TpAllReduce(dx, n * c);
  }
  return loss;
}

absl::StatusOr<LossSum> TrainingPass::ForwardBackward(std::span<const int32_t> tokens,
                                                      std::span<const uint8_t> mask,
                                                      float grad_scale) {
  if (!for_training_) {
    return absl::FailedPreconditionError("this pass was built for evaluation only");
  }
  LP_RETURN_IF_ERROR(Prepare(tokens, mask));
  tp_status_ = absl::OkStatus();
  LossSum sum = Forward(/*keep_final=*/true);
  const int64_t n = rows_, c = config_.hidden_size;
  const int64_t layers = static_cast<int64_t>(params_->blocks.size());
  const bool head_dx = lowest_ < layers || params_->final_norm.trainable;
  Parameter& head = params_->Head();
  if (tp_.active()) {
    LP_OP("lm head + loss",
          sum.loss = ParallelCrossEntropy(grad_scale, head_dx ? dxn_.data() : nullptr, Grad(head)));
  } else {
    LP_OP("lm head + loss", sum.loss = cpu::LmHeadCrossEntropy(
                                xn_final_.data(), head.value.data(), targets_.data(),
                                all_targets_ ? nullptr : target_mask_.data(), grad_scale,
                                head_dx ? dxn_.data() : nullptr, Grad(head), n, c,
                                config_.vocab_size, lm_scratch_.data()));
  }
  LP_RETURN_IF_ERROR(tp_status_);
  if (!head_dx) return sum;
  LP_OP("rmsnorm bwd",
        cpu::RmsNormBackward(dxn_.data(), x_final_.data(), params_->final_norm.value.data(),
                             inv_final_.data(), lowest_ < layers ? dres_.data() : nullptr,
                             Grad(params_->final_norm), n, c));
  for (int64_t i = layers - 1; i >= lowest_; --i) {
    BlockBackward(i, /*need_input_grad=*/i > lowest_ || embed_grad_, dres_.data());
  }
  if (embed_grad_) {
    if (tp_.active()) {
      // This rank's vocabulary rows only.
      float* dtable = params_->embed.grad.data();
      for (int64_t r = 0; r < n; ++r) {
        const int64_t t = inputs_[r] - vocab_begin_;
        if (t >= 0 && t < vocab_) cpu::AddInPlace(dtable + t * c, dres_.data() + r * c, c);
      }
    } else {
      LP_OP("embedding bwd",
            cpu::EmbeddingBackward(dres_.data(), inputs_.data(), params_->embed.grad.data(), n, c));
    }
  }
  LP_RETURN_IF_ERROR(tp_status_);
  return sum;
}

absl::StatusOr<std::vector<float>> TrainingPass::Logits(std::span<const int32_t> tokens) {
  LP_RETURN_IF_ERROR(Prepare(tokens, {}));
  tp_status_ = absl::OkStatus();
  Forward(/*keep_final=*/false);
  LP_RETURN_IF_ERROR(tp_status_);
  std::vector<float> logits(rows_ * vocab_);
  cpu::Linear(xn_final_.data(), params_->Head().value.data(), nullptr, logits.data(), rows_,
              config_.hidden_size, vocab_);
  return logits;
}

absl::StatusOr<LossSum> TrainingPass::Evaluate(std::span<const int32_t> tokens,
                                               std::span<const uint8_t> mask) {
  LP_RETURN_IF_ERROR(Prepare(tokens, mask));
  tp_status_ = absl::OkStatus();
  LossSum sum = Forward(/*keep_final=*/false);
  if (tp_.active()) {
    LP_OP("lm head + loss", sum.loss = ParallelCrossEntropy(1.0f, nullptr, nullptr));
  } else {
    LP_OP("lm head + loss",
          sum.loss = cpu::LmHeadCrossEntropy(
              xn_final_.data(), params_->Head().value.data(), targets_.data(),
              all_targets_ ? nullptr : target_mask_.data(), 1.0f, nullptr, nullptr, rows_,
              config_.hidden_size, config_.vocab_size, lm_scratch_.data()));
  }
  LP_RETURN_IF_ERROR(tp_status_);
  return sum;
}

ParallelTrainingPass::ParallelTrainingPass(LlamaParams* params, int64_t batch, int64_t seq_len,
                                           int threads, bool for_training, TensorParallel tp)
    : params_(params), seq_len_(seq_len) {
  threads_ = threads > 0 ? threads : HardwareThreads();
  const int64_t shards = tp.active() ? 1 : std::max<int64_t>(1, std::min<int64_t>(threads_, batch));
  int64_t row = 0;
  for (int64_t s = 0; s < shards; ++s) {
    first_row_.push_back(row);
    const int64_t rows = batch / shards + (s < batch % shards ? 1 : 0);
    shards_.push_back(std::make_unique<TrainingPass>(params, rows, seq_len, for_training,
                                                     /*private_gradients=*/s > 0, tp));
    row += rows;
  }
  first_row_.push_back(row);
  pool_ = std::make_unique<ForkJoinPool>(static_cast<int>(shards));
}

ParallelTrainingPass::~ParallelTrainingPass() = default;

uint64_t ParallelTrainingPass::ActivationBytes() const {
  uint64_t bytes = 0;
  for (const auto& shard : shards_) bytes += shard->ActivationBytes();
  return bytes;
}

absl::StatusOr<LossSum> ParallelTrainingPass::RunShards(std::span<const int32_t> tokens,
                                                        std::span<const uint8_t> mask,
                                                        bool backward, float grad_scale) {
  const int64_t width = seq_len_ + 1;
  if (static_cast<int64_t>(tokens.size()) != first_row_.back() * width) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", first_row_.back(), " x ", width, " tokens, got ", tokens.size()));
  }
  if (!mask.empty() && mask.size() != tokens.size()) {
    return absl::InvalidArgumentError("the loss mask and the tokens differ in size");
  }
  // GEMMs single-threaded inside each shard; all threads when one shard runs.
  cpu::SetNumThreads(shards_.size() == 1 ? threads_ : 1);
  std::vector<absl::StatusOr<LossSum>> results(shards_.size(), LossSum{});
  pool_->Run([&](int s) {
    if (shards_.size() > 1) cpu::SetNumThreads(1);  // This thread's GEMMs (oneDNN: per thread).
    const size_t begin = static_cast<size_t>(first_row_[s] * width);
    const size_t size = static_cast<size_t>((first_row_[s + 1] - first_row_[s]) * width);
    std::span<const int32_t> shard_tokens = tokens.subspan(begin, size);
    std::span<const uint8_t> shard_mask =
        mask.empty() ? std::span<const uint8_t>() : mask.subspan(begin, size);
    if (backward) {
      if (s > 0) shards_[s]->ZeroPrivateGradients();
      results[s] = shards_[s]->ForwardBackward(shard_tokens, shard_mask, grad_scale);
    } else {
      results[s] = shards_[s]->Evaluate(shard_tokens, shard_mask);
    }
  });
  LossSum total;
  for (const absl::StatusOr<LossSum>& r : results) {
    LP_RETURN_IF_ERROR(r.status());
    total.loss += r->loss;
    total.targets += r->targets;
  }
  if (backward && shards_.size() > 1) {
    // Sum the other shards' gradients into Parameter::grad, shard by shard
    // in order, the parameters split among the threads.
    std::vector<Parameter*> trainable = params_->Trainable();
    pool_->Run([&](int t) {
      for (size_t i = static_cast<size_t>(t); i < trainable.size(); i += shards_.size()) {
        Parameter* p = trainable[i];
        for (size_t s = 1; s < shards_.size(); ++s) {
          cpu::AddInPlace(p->grad.data(), shards_[s]->private_gradient(p)->data(),
                          p->NumElements());
        }
      }
    });
  }
  return total;
}

absl::StatusOr<LossSum> ParallelTrainingPass::ForwardBackward(std::span<const int32_t> tokens,
                                                              std::span<const uint8_t> mask,
                                                              float grad_scale) {
  return RunShards(tokens, mask, /*backward=*/true, grad_scale);
}

absl::StatusOr<LossSum> ParallelTrainingPass::Evaluate(std::span<const int32_t> tokens,
                                                       std::span<const uint8_t> mask) {
  return RunShards(tokens, mask, /*backward=*/false, 0.0f);
}

}  // namespace llamapro
