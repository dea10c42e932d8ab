#include <cmath>

#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/bf16.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

// The explicit _rn intrinsics keep nvcc from contracting a * b + c into a
// fused multiply-add, which the CPU code does not do, so both round alike.
__global__ void AdamWKernel(const AdamWTensor* __restrict__ tensors, int count, int64_t total,
                            AdamWScalars s) {
  const int64_t chunks = (total + kMultiTensorChunk - 1) / kMultiTensorChunk;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    ForEachInChunk(tensors, count, total, chunk, [&](const AdamWTensor& t, int64_t j) {
      float p = t.param[j];
      const float g = t.grad[j];
      if (t.decay != 0 && s.apply_decay != 0) p = __fmul_rn(p, s.decay_factor);
      const float m = __fadd_rn(__fmul_rn(t.exp_avg[j], s.beta1), __fmul_rn(s.one_minus_beta1, g));
      const float v = __fadd_rn(__fmul_rn(t.exp_avg_sq[j], s.beta2),
                                __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
      const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
      p = __fadd_rn(p, __fmul_rn(s.neg_step_size, __fdiv_rn(m, denom)));
      t.exp_avg[j] = m;
      t.exp_avg_sq[j] = v;
      t.param[j] = p;
      if (t.param_bf16 != nullptr) t.param_bf16[j] = F32ToBF16(p);
    });
  }
}

}  // namespace

AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t step) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  AdamWScalars s;
  s.decay_factor = static_cast<float>(1.0 - lr * weight_decay);
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(eps);
  s.apply_decay = weight_decay != 0 ? 1 : 0;
  return s;
}

cudaError_t AdamWStep(const AdamWTensor* tensors, int count, int64_t total,
                      const AdamWScalars& scalars, cudaStream_t stream) {
  if (count < 0 || total < 0 || (total > 0 && count == 0)) return cudaErrorInvalidValue;
  if (total == 0) return cudaSuccess;
  const int64_t chunks = (total + kMultiTensorChunk - 1) / kMultiTensorChunk;
  const int64_t blocks = chunks < kMaxBlocks ? chunks : kMaxBlocks;
  AdamWKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(tensors, count, total,
                                                                      scalars);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
