// BF16 GEMM through cuBLAS for the weights the CUDA gpu_worker keeps in BF16
// (BF16 / F16 / F32 files; model/memory_plan.h): Y = X · Wᵀ with X bf16
// [M × K] (activations converted by layer_ops.h RunConvertToBf16), W bf16
// [N × K] (a ggml matrix {K, N}: N rows of K), Y f32 [M × N], f32
// accumulation (CUBLAS_COMPUTE_32F).
//
// Role in the data flow: the projections of BF16 models and the lm_head when
// it is BF16. CPU reference: the double-accumulated product of the same bf16
// values; the tests allow the f32 summation bound K · 2^-24 · Σ|w·x|.
//
// Thread-safety: a CublasBf16Gemm owns one cuBLAS handle; use it from one
// thread at a time (cuBLAS handles are not thread-safe), any stream.
// Failure: Create returns Internal with the cuBLAS status (no device, no
// library); CanImplement returns InvalidArgument naming the bad dimension or
// leading dimension; Run returns Internal with the cuBLAS status.
#ifndef MOEFLOW_KERNELS_CUDA_CUBLAS_GEMM_H_
#define MOEFLOW_KERNELS_CUDA_CUBLAS_GEMM_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moeflow::cuda {

struct Bf16GemmArguments {
  int64_t m = 0;                // tokens
  int64_t n = 0;                // output features (rows of W)
  int64_t k = 0;                // input features
  const uint16_t* x = nullptr;  // bf16 [m × ldx], ldx >= k
  int64_t ldx = 0;
  const uint16_t* w = nullptr;  // bf16 [n × ldw], ldw >= k
  int64_t ldw = 0;
  float* y = nullptr;  // f32 [m × ldy], ldy >= n
  int64_t ldy = 0;
  float beta = 0.f;  // y = x·wᵀ + beta·y (1: accumulate into a residual)
  cudaStream_t stream = nullptr;
};

// The same product in f32 (cublasSgemm), for the small F32 matrices the
// plan keeps in f32 (the router's ffn_gate_inp).
struct F32GemmArguments {
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  const float* x = nullptr;  // [m × ldx]
  int64_t ldx = 0;
  const float* w = nullptr;  // [n × ldw]
  int64_t ldw = 0;
  float* y = nullptr;  // [m × ldy]
  int64_t ldy = 0;
  float beta = 0.f;
  cudaStream_t stream = nullptr;
};

class CublasBf16Gemm {
 public:
  static absl::StatusOr<std::unique_ptr<CublasBf16Gemm>> Create();
  ~CublasBf16Gemm();
  CublasBf16Gemm(const CublasBf16Gemm&) = delete;
  CublasBf16Gemm& operator=(const CublasBf16Gemm&) = delete;

  static absl::Status CanImplement(const Bf16GemmArguments& args);
  absl::Status Run(const Bf16GemmArguments& args);
  absl::Status RunF32(const F32GemmArguments& args);

 private:
  CublasBf16Gemm() = default;
  void* handle_ = nullptr;  // cublasHandle_t
};

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_CUBLAS_GEMM_H_
