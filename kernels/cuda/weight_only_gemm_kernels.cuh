// Device-side launchers of the weight-only int8 / int4 GEMV and GEMM (see
// weight_only_gemm.h for the repacked layouts, the host API and its checks).
// Plain C++ so that nvcc never sees Abseil headers.
#ifndef MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_KERNELS_CUH_
#define MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_KERNELS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace moeflow::cuda {

// A repacked weight matrix in device memory, rows × cols (y = W x contracts
// cols). kind 0 (int8, from Q8_0): qs int8 [rows][cols], scales f16
// [rows][cols / 32]. kind 1 (int4, from Q4_K): qs [rows][cols / 2] bytes
// (value c in byte c / 2, low nibble when c is even), scales f16 pairs
// (d, dmin) [rows][cols / 256][2], sub uint8 [rows][cols / 256][16]
// (8 sub-block scales, then 8 mins). Value (r, c), j = (c % 256) / 32:
//   int8: q · d;   int4: (d · sc[j]) · q − dmin · m[j]   (= ggml's dequantization).
struct WeightOnlyDeviceMatrix {
  int kind = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* qs = nullptr;
  const uint16_t* scales = nullptr;
  const uint8_t* sub = nullptr;
};

// For each batch b < n_batch and token m < n_tokens:
//   y[b·y_batch + m·y_stride + n] = Σ_c W[b·n_out + n, c] · x[b·x_batch + m·x_stride + c]
// for n < n_out (W.rows = n_batch · n_out). n_tokens <= 8 takes the GEMV
// kernel (one warp per output row, weights read once), larger batches the
// tiled GEMM.
struct WeightOnlyGemmDeviceArgs {
  WeightOnlyDeviceMatrix w;
  int64_t n_out = 0;
  int64_t n_tokens = 0;
  int64_t n_batch = 1;
  const float* x = nullptr;
  int64_t x_stride = 0;
  int64_t x_batch = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  int64_t y_batch = 0;
};

cudaError_t LaunchWeightOnlyGemm(const WeightOnlyGemmDeviceArgs& args, cudaStream_t stream);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_KERNELS_CUH_
