#include "train/cuda_optimizer.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/global_norm.cuh"
#include "kernels/cuda/multi_tensor.h"
#include "model/cuda_status.h"

namespace llamapro {
namespace {

// MakeOptimizer's checks, and SGD refused: the CUDA backend implements AdamW.
absl::Status CheckAdamWConfig(const OptimizerConfig& config) {
  if (config.name == "sgd") {
    return absl::InvalidArgumentError(
        "optimizer sgd runs on the CPU backend only: the CUDA backend implements adamw");
  }
  return CheckOptimizerConfig(config);
}

}  // namespace

struct CudaAdamW::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  // exp_avg of every tensor, then exp_avg_sq of every tensor (one
  // allocation); per tensor its two pointers.
  float* state = nullptr;
  std::vector<float*> exp_avg, exp_avg_sq;
  std::vector<int64_t> sizes;
  std::vector<std::string> names;      // Parameter names, in pass->trainable() order.
  cuda::AdamWTensor* adamw = nullptr;  // Device descriptor arrays.
  cuda::F32Tensor* grads = nullptr;
  int count = 0;
  int64_t total = 0;
  double* norm = nullptr;  // [0]: the sum of squares; [1..]: SumOfSquares scratch.

  ~Impl() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (void* p : {static_cast<void*>(state), static_cast<void*>(adamw), static_cast<void*>(grads),
                    static_cast<void*>(norm)}) {
      if (p != nullptr) cudaFree(p);
    }
  }
};

CudaAdamW::CudaAdamW(const OptimizerConfig& config, CudaTrainingPass* pass)
    : config_(config), pass_(pass) {}

CudaAdamW::~CudaAdamW() {
  if (impl_ != nullptr) cudaSetDevice(impl_->device);
  impl_.reset();
}

absl::StatusOr<std::unique_ptr<CudaAdamW>> CudaAdamW::Create(const OptimizerConfig& config,
                                                             CudaTrainingPass* pass) {
  LP_RETURN_IF_ERROR(CheckAdamWConfig(config));
  if (pass == nullptr) return absl::InvalidArgumentError("CudaAdamW: null pass");
  std::unique_ptr<CudaAdamW> optimizer(new CudaAdamW(config, pass));
  optimizer->impl_ = std::make_unique<Impl>();
  Impl& impl = *optimizer->impl_;
  impl.device = pass->device();
  impl.stream = pass->stream();
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl.device));

  std::vector<CudaTrainable>& trainable = pass->trainable();
  impl.count = static_cast<int>(trainable.size());
  int64_t elements = 0;
  for (const CudaTrainable& t : trainable) {
    impl.names.push_back(t.param->name);
    impl.sizes.push_back(t.n);
    elements += t.n;
  }
  if (elements > 0) {
    LP_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&impl.state),
                                       static_cast<size_t>(2 * elements) * sizeof(float)));
    LP_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(
        impl.state, 0, static_cast<size_t>(2 * elements) * sizeof(float), impl.stream));
  }
  std::vector<cuda::AdamWTensor> adamw(trainable.size());
  std::vector<cuda::F32Tensor> grads(trainable.size());
  int64_t offset = 0;
  for (size_t i = 0; i < trainable.size(); ++i) {
    const CudaTrainable& t = trainable[i];
    impl.exp_avg.push_back(impl.state + offset);
    impl.exp_avg_sq.push_back(impl.state + elements + offset);
    offset += t.n;
    adamw[i].param = t.master;
    adamw[i].grad = t.grad;
    adamw[i].exp_avg = impl.exp_avg.back();
    adamw[i].exp_avg_sq = impl.exp_avg_sq.back();
    adamw[i].param_bf16 = t.weight;
    adamw[i].n = t.n;
    adamw[i].decay = t.param->decay ? 1 : 0;
    grads[i].data = t.grad;
    grads[i].n = t.n;
  }
  impl.total = cuda::AssignOffsets(adamw.data(), impl.count);
  cuda::AssignOffsets(grads.data(), impl.count);
  if (impl.count > 0) {
    LP_CUDA_RETURN_IF_ERROR(
        cudaMalloc(reinterpret_cast<void**>(&impl.adamw), adamw.size() * sizeof(adamw[0])));
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(impl.adamw, adamw.data(),
                                            adamw.size() * sizeof(adamw[0]), cudaMemcpyHostToDevice,
                                            impl.stream));
    LP_CUDA_RETURN_IF_ERROR(
        cudaMalloc(reinterpret_cast<void**>(&impl.grads), grads.size() * sizeof(grads[0])));
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(impl.grads, grads.data(),
                                            grads.size() * sizeof(grads[0]), cudaMemcpyHostToDevice,
                                            impl.stream));
  }
  LP_CUDA_RETURN_IF_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&impl.norm),
                 static_cast<size_t>(1 + cuda::SumOfSquaresScratchSize()) * sizeof(double)));
  // The host descriptor arrays go out of scope here.
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl.stream));
  return optimizer;
}

absl::StatusOr<double> CudaAdamW::ClipGradients() {
  Impl& impl = *impl_;
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl.device));
  LP_CUDA_RETURN_IF_ERROR(cuda::SumOfSquares(impl.grads, impl.count, impl.total, impl.norm,
                                             impl.norm + 1, impl.stream));
  if (config_.clip_grad_norm > 0) {
    LP_CUDA_RETURN_IF_ERROR(cuda::ClipByGlobalNorm(impl.grads, impl.count, impl.total, impl.norm,
                                                   config_.clip_grad_norm, impl.stream));
  }
  double sum_squares = 0;
  LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&sum_squares, impl.norm, sizeof(double),
                                          cudaMemcpyDeviceToHost, impl.stream));
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl.stream));
  return std::sqrt(sum_squares);
}

absl::Status CudaAdamW::Step(double lr) {
  Impl& impl = *impl_;
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl.device));
  const cuda::AdamWScalars scalars = cuda::MakeAdamWScalars(
      lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay, step_ + 1);
  LP_CUDA_RETURN_IF_ERROR(
      cuda::AdamWStep(impl.adamw, impl.count, impl.total, scalars, impl.stream));
  ++step_;
  return absl::OkStatus();
}

int64_t CudaAdamW::StateBytes() const {
  return 2 * impl_->total * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<std::vector<std::pair<std::string, std::vector<float>>>> CudaAdamW::DownloadState()
    const {
  const Impl& impl = *impl_;
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl.device));
  std::vector<std::pair<std::string, std::vector<float>>> state;
  state.reserve(2 * impl.names.size());
  for (size_t i = 0; i < impl.names.size(); ++i) {
    const size_t n = static_cast<size_t>(impl.sizes[i]);
    for (int kind = 0; kind < 2; ++kind) {
      auto& [name, values] =
          state.emplace_back(absl::StrCat(kind == 0 ? "exp_avg." : "exp_avg_sq.", impl.names[i]),
                             std::vector<float>(n));
      const float* source = kind == 0 ? impl.exp_avg[i] : impl.exp_avg_sq[i];
      LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(values.data(), source, n * sizeof(float),
                                              cudaMemcpyDeviceToHost, impl.stream));
    }
  }
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl.stream));
  return state;
}

absl::Status CudaAdamW::UploadState(absl::string_view name, const std::vector<float>& values) {
  Impl& impl = *impl_;
  for (size_t i = 0; i < impl.names.size(); ++i) {
    for (int kind = 0; kind < 2; ++kind) {
      const std::string state_name =
          absl::StrCat(kind == 0 ? "exp_avg." : "exp_avg_sq.", impl.names[i]);
      if (state_name != name) continue;
      if (static_cast<int64_t>(values.size()) != impl.sizes[i]) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer state tensor '", name, "' has ",
                                                       values.size(), " values; parameter '",
                                                       impl.names[i], "' needs ", impl.sizes[i]));
      }
      LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl.device));
      float* target = kind == 0 ? impl.exp_avg[i] : impl.exp_avg_sq[i];
      LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(target, values.data(), values.size() * sizeof(float),
                                              cudaMemcpyHostToDevice, impl.stream));
      LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl.stream));
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("optimizer state tensor '", name,
                                          "' is unknown to this adamw optimizer (it has exp_avg.*, "
                                          "exp_avg_sq.* for ",
                                          impl.names.size(), " trainable parameters)"));
}

}  // namespace llamapro
