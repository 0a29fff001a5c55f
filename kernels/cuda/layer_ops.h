// Host adapters of the per-token layer kernels of the CUDA gpu_worker:
// RMSNorm, YaRN RoPE, SiLU-mul, residual add, f32 -> bf16 and the MoE
// router's top-k (layer_kernels.cu). Each has an Arguments struct (shapes in
// the comments, device pointers), CanImplement (shape checks with the
// offending value in the message) and Run (CanImplement, then an
// asynchronous launch on args.stream).
//
// The kernels know no model: RopeDeviceParams and RouterDeviceParams come
// from the model's config through gpu_worker/cuda_params.h.
//
// CPU references (model/deepseek2/reference.h), which the tests in
// tests/kernels/cuda compare with on random inputs: RmsNorm, Deepseek2-
// RopeParams::Apply, Router::Route (from the gate logits on), Combine, and
// silu(g)·u as SwigluFfn computes it. The kernels use the same formulas in
// f32 (the reference sums some reductions in double), compiled without FMA
// contraction, so they agree to a few f32 ulps (RMSNorm, RoPE: angles are
// built by the same products; cos/sin differ by <= 2 ulp) and the router
// picks the same experts unless two selection scores are within float
// rounding of each other.
//
// Thread-safety: stateless; callers serialize on their stream.
// Failure: InvalidArgument from CanImplement (nothing is launched);
// Internal with the CUDA error from Run when the launch fails (no device,
// bad pointer). Errors of the kernel itself surface at the next
// synchronization of the stream.
#ifndef MOEFLOW_KERNELS_CUDA_LAYER_OPS_H_
#define MOEFLOW_KERNELS_CUDA_LAYER_OPS_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/layer_kernels.cuh"

namespace moeflow::cuda {

struct RmsNormArguments {
  const float* x = nullptr;  // [n_rows × x_stride], the first n of each row normalized
  int64_t x_stride = 0;
  const float* weight = nullptr;  // [n]
  float* out = nullptr;           // [n_rows × out_stride]; may alias x
  int64_t out_stride = 0;
  int64_t n_rows = 0;
  int64_t n = 0;
  float eps = 1e-6f;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementRmsNorm(const RmsNormArguments& args);
absl::Status RunRmsNorm(const RmsNormArguments& args);

struct RopeArguments {
  // Head h of token t: n_dims values at in + t·in_token_stride + h·in_head_stride,
  // written at out + t·out_token_stride + h·out_head_stride (may alias).
  const float* in = nullptr;
  int64_t in_token_stride = 0;
  int64_t in_head_stride = 0;
  float* out = nullptr;
  int64_t out_token_stride = 0;
  int64_t out_head_stride = 0;
  const int32_t* positions = nullptr;  // [n_tokens], >= 0
  int64_t n_tokens = 0;
  int64_t n_heads = 0;
  RopeDeviceParams params;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementRope(const RopeArguments& args);
absl::Status RunRope(const RopeArguments& args);

struct SiluMulArguments {
  const float* gate = nullptr;  // [n_rows × in_stride], first n of each row
  const float* up = nullptr;    // [n_rows × in_stride]
  int64_t in_stride = 0;
  float* out = nullptr;  // [n_rows × out_stride]
  int64_t out_stride = 0;
  int64_t n_rows = 0;
  int64_t n = 0;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementSiluMul(const SiluMulArguments& args);
absl::Status RunSiluMul(const SiluMulArguments& args);

struct ResidualAddArguments {
  const float* residual = nullptr;  // [n]
  const float* a = nullptr;         // [n]
  const float* b = nullptr;         // [n] or null
  float* out = nullptr;             // [n]: (a + b) + residual
  int64_t n = 0;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementResidualAdd(const ResidualAddArguments& args);
absl::Status RunResidualAdd(const ResidualAddArguments& args);

struct ConvertToBf16Arguments {
  const float* in = nullptr;  // [n]
  uint16_t* out = nullptr;    // [n] bf16 bits
  int64_t n = 0;
  cudaStream_t stream = nullptr;
};
absl::Status RunConvertToBf16(const ConvertToBf16Arguments& args);

struct RouterTopKArguments {
  const float* logits = nullptr;  // [n_tokens × n_experts], the gate GEMM's output
  const float* bias = nullptr;    // [n_experts] (exp_probs_b) or null
  int32_t* ids = nullptr;         // [n_tokens × k]
  float* weights = nullptr;       // [n_tokens × k]
  int64_t n_tokens = 0;
  RouterDeviceParams params;
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementRouterTopK(const RouterTopKArguments& args);
absl::Status RunRouterTopK(const RouterTopKArguments& args);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_LAYER_OPS_H_
