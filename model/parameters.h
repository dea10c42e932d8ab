// Trainable model parameters: fp32 values, optional fp32 gradients, and what
// a checkpoint needs to write them back.
#ifndef LLAMAPRO_MODEL_PARAMETERS_H_
#define LLAMAPRO_MODEL_PARAMETERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace llamapro {

// One tensor of the model. `grad` is allocated (same size as `value`) only
// when `trainable`: frozen tensors carry no gradient memory at all. Not
// thread-safe; kernels write disjoint parameters.
struct Parameter {
  std::string name;  // Hugging Face name, e.g. "model.layers.4.mlp.up_proj.weight".
  std::vector<int64_t> shape;
  DType source_dtype = DType::kF32;  // Dtype in the checkpoint it came from.
  std::vector<float> value;
  std::vector<float> grad;
  bool trainable = false;
  bool decay = true;  // AdamW weight decay applies (false for norm weights and biases).
  // Tensor parallelism: which part of the checkpoint tensor `name` (of shape
  // full_shape) this one holds. split_dim -1: all of it; 0: rows
  // [split_begin, split_begin + shape[0]); 1: columns, likewise.
  int split_dim = -1;
  int64_t split_begin = 0;
  std::vector<int64_t> full_shape;  // Empty: equal to `shape`.
  // ZeRO-1 (train/zero.h): this holds elements [flat_begin, flat_begin +
  // value.size()) of the tensor `shape` describes (its whole when 0 and
  // value-sized).
  int64_t flat_begin = 0;

  const std::vector<int64_t>& FullShape() const { return full_shape.empty() ? shape : full_shape; }
  int64_t FullElements() const {
    int64_t n = 1;
    for (int64_t d : FullShape()) n *= d;
    return n;
  }

  int64_t NumElements() const { return static_cast<int64_t>(value.size()); }
  // Allocates (zeroed) or frees the gradient to match `trainable`.
  void SetTrainable(bool on) {
    trainable = on;
    if (on) {
      grad.assign(value.size(), 0.0f);
    } else {
      grad.clear();
      grad.shrink_to_fit();
    }
  }
};

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_PARAMETERS_H_
