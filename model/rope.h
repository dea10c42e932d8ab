// Rotary-embedding frequencies with transformers' semantics
// (modeling_rope_utils: default, linear and llama3 scaling).
//
// Templated on the scalar type: with float the arithmetic follows
// transformers' float32 computation step by step (so logits agree with it to
// rounding); with double it is the precise reference.
#ifndef LLAMAPRO_MODEL_ROPE_H_
#define LLAMAPRO_MODEL_ROPE_H_

#include <cmath>
#include <numbers>
#include <vector>

#include "model/config.h"

namespace llamapro {

// inv_freq[i] for i in [0, D/2).
template <typename T>
std::vector<T> RopeInverseFrequencies(const LlamaConfig& config) {
  const int64_t dim = config.head_dim;
  const T base = static_cast<T>(config.rope_theta);
  std::vector<T> inv_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    const T exponent = static_cast<T>(2 * i) / static_cast<T>(dim);
    inv_freq[i] = T(1) / std::pow(base, exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  const T factor = static_cast<T>(s.factor);
  if (s.type == RopeScalingType::kLinear) {
    for (T& f : inv_freq) f /= factor;
  } else if (s.type == RopeScalingType::kLlama3) {
    const double old_context = static_cast<double>(s.original_max_position_embeddings);
    const T low_freq_wavelen = static_cast<T>(old_context / s.low_freq_factor);
    const T high_freq_wavelen = static_cast<T>(old_context / s.high_freq_factor);
    const T low = static_cast<T>(s.low_freq_factor);
    const T high = static_cast<T>(s.high_freq_factor);
    for (T& f : inv_freq) {
      const T wavelen = static_cast<T>(2 * std::numbers::pi) / f;
      T scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const T smooth = (static_cast<T>(old_context) / wavelen - low) / (high - low);
        scaled = (T(1) - smooth) * scaled / factor + smooth * scaled;
      }
      f = scaled;
    }
  }
  return inv_freq;
}

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_ROPE_H_
