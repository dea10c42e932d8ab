// Block-wide reductions for the kernels in this folder (device code only).
//
// Each sums in a fixed order for a given block size, so results are
// deterministic run to run. Every thread of the block must call them (they
// synchronize), and `scratch` must hold 32 values of the summed type in shared
// memory. The total is returned to every thread.
#ifndef LLAMAPRO_KERNELS_CUDA_REDUCE_CUH_
#define LLAMAPRO_KERNELS_CUDA_REDUCE_CUH_

namespace llamapro::cuda {

template <typename T>
__device__ __forceinline__ T WarpSum(T value) {
  for (int offset = 16; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float WarpMax(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Sum over the block; blockDim.x must be a multiple of 32.
template <typename T>
__device__ T BlockSum(T value, T* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = WarpSum(value);
  __syncthreads();  // scratch may still be read by a previous call.
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = lane < warps ? scratch[lane] : T(0);
  return WarpSum(value);
}

// Max over the block; blockDim.x must be a multiple of 32.
__device__ inline float BlockMax(float value, float* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = WarpMax(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = lane < warps ? scratch[lane] : -__int_as_float(0x7f800000);
  return WarpMax(value);
}

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_REDUCE_CUH_
