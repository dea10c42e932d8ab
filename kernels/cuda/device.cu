#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cuda/device.h"

namespace llamapro::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // Clear the sticky error so later calls are not confused.
    return 0;
  }
  return count;
}

std::string DeviceDescription(int index) {
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  char memory[32];
  std::snprintf(memory, sizeof memory, "%.1f GiB",
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024 * 1024));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + memory + ")";
}

double PeakBf16FlopsForName(const std::string& name) {
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has("H200") || has("GH200")) return 989.4e12;
  if (has("H100") || has("H800")) {
    if (has("PCIe") || has("PCIE")) return 756e12;
    if (has("NVL")) return 835e12;
    return 989.4e12;  // SXM (HBM3).
  }
  if (has("A100") || has("A800")) return 312e12;
  if (has("L40S")) return 362e12;
  return 0;
}

double PeakBf16Flops(int index) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return PeakBf16FlopsForName(prop.name);
}

std::string CudaErrorMessage(cudaError_t err, const char* expr, const char* file, int line) {
  return std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
         cudaGetErrorString(err);
}

namespace internal {
void Fail(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace internal

}  // namespace llamapro::cuda
