// AdamW over many tensors in one launch: fp32 master weights, gradients and
// optimizer state, with PyTorch's torch.optim.AdamW semantics exactly as
// train/optimizer.cc implements them on the CPU (same fp32 scalars, same
// order of fp32 operations, no fused multiply-adds), so equal inputs give
// bit-identical results on both:
//   p = p * (1 - lr * wd)                       (only where decay != 0)
//   m = m * b1 + (1 - b1) * g
//   v = v * b2 + (1 - b2) * g * g
//   p = p + (-lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps))
// Optionally refreshes a bf16 working copy of each updated master weight.
#ifndef LLAMAPRO_KERNELS_CUDA_ADAMW_CUH_
#define LLAMAPRO_KERNELS_CUDA_ADAMW_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/multi_tensor.h"

namespace llamapro::cuda {

// One trainable tensor: device pointers to n fp32 values each.
struct AdamWTensor {
  float* param = nullptr;       // Master weights, updated in place.
  const float* grad = nullptr;  // Read only.
  float* exp_avg = nullptr;     // m, updated in place.
  float* exp_avg_sq = nullptr;  // v, updated in place.
  // If not nullptr: n bf16 values set to the updated master weights, rounded
  // to nearest even (the copy the forward pass reads).
  uint16_t* param_bf16 = nullptr;
  int64_t n = 0;
  int64_t offset = 0;  // Set by AssignOffsets (multi_tensor.h).
  int32_t decay = 1;   // Weight decay applies (0 for norm weights and biases).
};

// The fp32 scalars of one update, rounded from double exactly where
// train/optimizer.cc rounds them.
struct AdamWScalars {
  float decay_factor;  // 1 - lr * weight_decay
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float neg_step_size;          // -(lr / (1 - beta1^step))
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float eps;
  int32_t apply_decay;  // weight_decay != 0
};

// Scalars for update number `step` (1 for the first) at learning rate `lr`.
AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t step);

// Updates every tensor of `tensors` (a device array of `count` descriptors
// with offsets from AssignOffsets; `total` is its return value). Enqueues on
// `stream` and returns the launch status (cudaErrorInvalidValue for bad
// counts); never synchronizes, never allocates. Tensors must not overlap.
cudaError_t AdamWStep(const AdamWTensor* tensors, int count, int64_t total,
                      const AdamWScalars& scalars, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_ADAMW_CUH_
