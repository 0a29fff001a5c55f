// Weight-only int8 / int4 GEMV and GEMM on the GPU (weight_only_gemm_kernels.cu)
// over weights repacked at load from the GGUF's Q8_0 / Q4_K blocks
// (weight_repack.h), with f32 activations and outputs.
//
// Role in the data flow: every non-expert projection of the CUDA gpu_worker
// whose weights are quantized (attn_q_a/q_b, kv_a, attn_output, the dense and
// shared-expert FFNs, lm_head), and — batched over heads — the MLA
// absorption with attn_k_b and attn_v_b. CPU reference:
// RepackedMatVecReference (weight_repack.h), itself checked against
// kernels/cpu Dequantize; the tests compare on random inputs with the f32
// summation bound K · 2^-24 · Σ|w·x|.
//
// Thread-safety: DeviceRepackedMatrix is move-only and immutable after
// Upload (any stream may read it); Run is stateless.
// Failure: Upload returns Internal with the CUDA error (out of memory, no
// device); CanImplement returns InvalidArgument naming the bad shape, stride
// or alignment; Run returns it or the launch's CUDA error.
#ifndef MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_H_
#define MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/weight_only_gemm_kernels.cuh"
#include "kernels/cuda/weight_repack.h"

namespace moeflow::cuda {

// A RepackedMatrix in device memory (owns its three buffers).
class DeviceRepackedMatrix {
 public:
  static absl::StatusOr<DeviceRepackedMatrix> Upload(const RepackedMatrix& m);
  DeviceRepackedMatrix() = default;
  DeviceRepackedMatrix(DeviceRepackedMatrix&& other) noexcept;
  DeviceRepackedMatrix& operator=(DeviceRepackedMatrix&& other) noexcept;
  DeviceRepackedMatrix(const DeviceRepackedMatrix&) = delete;
  DeviceRepackedMatrix& operator=(const DeviceRepackedMatrix&) = delete;
  ~DeviceRepackedMatrix();

  const WeightOnlyDeviceMatrix& view() const { return view_; }

 private:
  void Release();
  WeightOnlyDeviceMatrix view_;
  void* qs_ = nullptr;
  void* scales_ = nullptr;
  void* sub_ = nullptr;
};

// y[b][m][n] = Σ_c W[b·n_out + n][c] · x[b][m][c]; see WeightOnlyGemmDeviceArgs.
// Shapes: W rows = n_batch · n_out, W cols = K; x rows of K floats at
// x_stride (16-byte aligned: x, x_stride and x_batch multiples of 4 floats);
// y rows at y_stride (>= n_out).
struct WeightOnlyGemmArguments {
  WeightOnlyGemmDeviceArgs device;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementWeightOnlyGemm(const WeightOnlyGemmArguments& args);
absl::Status RunWeightOnlyGemm(const WeightOnlyGemmArguments& args);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_WEIGHT_ONLY_GEMM_H_
