// Helpers of the CUDA kernel tests: why a test must skip (no device), device
// buffers that free themselves, host <-> device copies, and random inputs.
// Tests that need a GPU call NoDeviceReason() first and GTEST_SKIP with it.
#ifndef MOEFLOW_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define MOEFLOW_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow::cuda {

// Empty when a CUDA device is usable; else why not (printed by the skip).
inline std::string NoDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device";
  return "";
}

#define MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE()                         \
  do {                                                             \
    const std::string reason_ = ::moeflow::cuda::NoDeviceReason(); \
    if (!reason_.empty()) {                                        \
      GTEST_SKIP() << reason_;                                     \
    }                                                              \
  } while (0)

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) {
      EXPECT_EQ(cudaMalloc(&ptr_, n * sizeof(T)), cudaSuccess);
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (!host.empty()) {
      EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return static_cast<T*>(ptr_); }
  // Waits for the device, then copies everything back.
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t n_ = 0;
};

// Uniform in [lo, hi), never all zero.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The f32 summation bound of a dot product of n terms: n · 2^-24 · Σ|a·b|
// (recursive summation, Higham's γ_n), plus a floor for exact zeros.
inline double F32DotTolerance(int64_t n, double abs_sum) {
  return static_cast<double>(n) * 5.960464477539063e-08 * abs_sum + 1e-30;
}

}  // namespace moeflow::cuda

#endif  // MOEFLOW_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
