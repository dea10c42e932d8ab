// SiLU-gated multiply (the SwiGLU activation) and its backward on the
// device: bf16 storage, fp32 math. Semantics of ref::SiluMul and
// ref::SiluMulBackward (kernels/cpu/reference*.h).
//
// All arrays hold n bf16 values. Launchers enqueue on `stream` and return the
// launch status (cudaErrorInvalidValue for n < 0); they never synchronize.
// Device pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_SILU_MUL_CUH_
#define LLAMAPRO_KERNELS_CUDA_SILU_MUL_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

// out = silu(gate) * up; out may alias gate or up.
cudaError_t SiluMulForward(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n,
                           cudaStream_t stream);

// dgate = dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate))),
// dup = dout * silu(gate); both overwritten, either may be nullptr; dgate may
// alias gate and dup may alias up (each element is read before it is written).
cudaError_t SiluMulBackward(const uint16_t* gate, const uint16_t* up, const uint16_t* dout,
                            uint16_t* dgate, uint16_t* dup, int64_t n, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_SILU_MUL_CUH_
