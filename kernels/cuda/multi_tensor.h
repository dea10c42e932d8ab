// Shared plumbing for kernels that update many tensors in one launch (AdamW,
// global-norm clipping): each tensor descriptor carries its element count n
// and its offset, the sum of n over the descriptors before it, so the tensors
// form one flat index space that blocks walk in fixed-size chunks.
//
// Descriptor arrays live in device memory; their pointers are fixed for a
// training run, so callers fill and upload them once, before the first step.
#ifndef LLAMAPRO_KERNELS_CUDA_MULTI_TENSOR_H_
#define LLAMAPRO_KERNELS_CUDA_MULTI_TENSOR_H_

#include <cstdint>

namespace llamapro::cuda {

// Sets tensors[i].offset to the sum of n over tensors[0..i) and returns the
// total (the `total` argument of the multi-tensor launchers).
template <typename Tensor>
int64_t AssignOffsets(Tensor* tensors, int count) {
  int64_t offset = 0;
  for (int i = 0; i < count; ++i) {
    tensors[i].offset = offset;
    offset += tensors[i].n;
  }
  return offset;
}

#ifdef __CUDACC__
// Elements per chunk: one block walks one chunk at a time.
inline constexpr int64_t kMultiTensorChunk = 4096;

// Index of the tensor holding flat element `element` (< total): the last
// tensor whose offset is <= element (empty tensors share their successor's
// offset and are skipped).
template <typename Tensor>
__device__ int FindTensor(const Tensor* tensors, int count, int64_t element) {
  int lo = 0;
  int hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tensors[mid].offset <= element) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Calls visit(tensor, index_within_tensor) for every element of chunk
// `chunk`, spread over the block's threads; tensors are visited in order and
// elements in increasing order per thread.
template <typename Tensor, typename Visit>
__device__ void ForEachInChunk(const Tensor* tensors, int count, int64_t total, int64_t chunk,
                               Visit visit) {
  int64_t begin = chunk * kMultiTensorChunk;
  const int64_t end = begin + kMultiTensorChunk < total ? begin + kMultiTensorChunk : total;
  int t = FindTensor(tensors, count, begin);
  while (begin < end && t < count) {
    const Tensor& tensor = tensors[t];
    const int64_t tensor_end = tensor.offset + tensor.n;
    const int64_t segment_end = tensor_end < end ? tensor_end : end;
    for (int64_t g = begin + threadIdx.x; g < segment_end; g += blockDim.x) {
      visit(tensor, g - tensor.offset);
    }
    if (segment_end > begin) begin = segment_end;
    ++t;
  }
}
#endif  // __CUDACC__

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_MULTI_TENSOR_H_
