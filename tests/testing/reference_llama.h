// An independent, plain LLaMA forward pass built only from the reference ops
// (kernels/cpu/reference.h), templated on the scalar type, that reads its
// weights straight from a checkpoint. The fast fp32 model is tested against
// this in double precision.
#ifndef LLAMAPRO_TESTS_TESTING_REFERENCE_LLAMA_H_
#define LLAMAPRO_TESTS_TESTING_REFERENCE_LLAMA_H_

#include <string>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/reference.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace llamapro::testing {

template <typename T>
std::vector<T> ReferenceTensor(const CheckpointReader& reader, const std::string& name) {
  std::vector<float> f;
  absl::Status status = reader.ReadF32(name, &f);
  LP_CHECK(status.ok(), "reference weights must load");
  return std::vector<T>(f.begin(), f.end());
}

// Logits [batch*seq_len, V] in precision T.
template <typename T>
std::vector<T> ReferenceLogits(const LlamaConfig& c, const CheckpointReader& reader,
                               const std::vector<int32_t>& tokens, int64_t batch, int64_t seq_len) {
  const int64_t n = batch * seq_len;
  const int64_t hidden = c.hidden_size, h = c.num_attention_heads, hkv = c.num_key_value_heads,
                d = c.head_dim, f = c.intermediate_size, v = c.vocab_size;
  const T eps = static_cast<T>(c.rms_norm_eps);
  auto w = [&](int64_t layer, const char* suffix) {
    return ReferenceTensor<T>(reader, LayerTensorName(layer, suffix));
  };
  auto maybe_bias = [&](bool present, int64_t layer, const char* suffix) {
    return present ? w(layer, suffix) : std::vector<T>();
  };
  auto ptr = [](const std::vector<T>& b) { return b.empty() ? nullptr : b.data(); };

  std::vector<T> cos_table, sin_table;
  ref::RopeTables(RopeInverseFrequencies<T>(c), seq_len, &cos_table, &sin_table);

  std::vector<T> embed = ReferenceTensor<T>(reader, kEmbedTokens);
  std::vector<T> x(n * hidden);
  ref::Embedding(embed.data(), tokens.data(), x.data(), n, hidden);
  std::vector<T> xn(n * hidden), q(n * h * d), k(n * hkv * d), vv(n * hkv * d), att(n * h * d),
      branch(n * hidden), gate(n * f), up(n * f), act(n * f);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    ref::RmsNorm(x.data(), w(layer, "input_layernorm.weight").data(), xn.data(), n, hidden, eps);
    ref::Linear(xn.data(), w(layer, "self_attn.q_proj.weight").data(),
                ptr(maybe_bias(c.attention_bias, layer, "self_attn.q_proj.bias")), q.data(), n,
                hidden, h * d);
    ref::Linear(xn.data(), w(layer, "self_attn.k_proj.weight").data(),
                ptr(maybe_bias(c.attention_bias, layer, "self_attn.k_proj.bias")), k.data(), n,
                hidden, hkv * d);
    ref::Linear(xn.data(), w(layer, "self_attn.v_proj.weight").data(),
                ptr(maybe_bias(c.attention_bias, layer, "self_attn.v_proj.bias")), vv.data(), n,
                hidden, hkv * d);
    ref::ApplyRope(q.data(), cos_table.data(), sin_table.data(), batch, seq_len, h, d);
    ref::ApplyRope(k.data(), cos_table.data(), sin_table.data(), batch, seq_len, hkv, d);
    ref::Attention(q.data(), k.data(), vv.data(), att.data(), batch, seq_len, h, hkv, d,
                   c.sliding_window);
    ref::Linear(att.data(), w(layer, "self_attn.o_proj.weight").data(),
                ptr(maybe_bias(c.attention_bias, layer, "self_attn.o_proj.bias")), branch.data(), n,
                h * d, hidden);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];

    ref::RmsNorm(x.data(), w(layer, "post_attention_layernorm.weight").data(), xn.data(), n, hidden,
                 eps);
    ref::Linear(xn.data(), w(layer, "mlp.gate_proj.weight").data(),
                ptr(maybe_bias(c.mlp_bias, layer, "mlp.gate_proj.bias")), gate.data(), n, hidden,
                f);
    ref::Linear(xn.data(), w(layer, "mlp.up_proj.weight").data(),
                ptr(maybe_bias(c.mlp_bias, layer, "mlp.up_proj.bias")), up.data(), n, hidden, f);
    ref::SiluMul(gate.data(), up.data(), act.data(), n * f);
    ref::Linear(act.data(), w(layer, "mlp.down_proj.weight").data(),
                ptr(maybe_bias(c.mlp_bias, layer, "mlp.down_proj.bias")), branch.data(), n, f,
                hidden);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];
  }
  ref::RmsNorm(x.data(), ReferenceTensor<T>(reader, kFinalNorm).data(), xn.data(), n, hidden, eps);
  std::vector<T> head = c.tie_word_embeddings ? embed : ReferenceTensor<T>(reader, kLmHead);
  std::vector<T> logits(n * v);
  ref::Linear(xn.data(), head.data(), static_cast<const T*>(nullptr), logits.data(), n, hidden, v);
  return logits;
}

}  // namespace llamapro::testing

#endif  // LLAMAPRO_TESTS_TESTING_REFERENCE_LLAMA_H_
