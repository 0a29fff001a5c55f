// Device-side launchers of the per-token layer kernels (see layer_ops.h for
// the host API, its shape checks and the CPU references). Plain C++ so that
// nvcc never sees Abseil headers; every launcher enqueues on `stream` and
// returns cudaGetLastError().
#ifndef MOEFLOW_KERNELS_CUDA_LAYER_KERNELS_CUH_
#define MOEFLOW_KERNELS_CUDA_LAYER_KERNELS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace moeflow::cuda {

// out[t, i] = x[t, i] / sqrt(mean_i(x[t]²) + eps) · weight[i]; rows of n, row
// strides in floats. out may alias x.
cudaError_t LaunchRmsNorm(const float* x, int64_t x_stride, const float* weight, float* out,
                          int64_t out_stride, int64_t n_rows, int64_t n, float eps,
                          cudaStream_t stream);

// YaRN RoPE, NORM type (adjacent pairs), as Deepseek2RopeParams::Apply. The
// host precomputes everything with a log or pow in it so that the device
// does only products, the ramp and cos/sin.
struct RopeDeviceParams {
  int n_dims = 0;           // rotated values per head (even)
  float theta_scale = 1.f;  // freq_base^(-2 / n_dims)
  float freq_scale = 1.f;   // 1 / rope scaling factor
  float ext_factor = 0.f;   // 1: YaRN
  float attn_factor = 1.f;  // magnitude
  float ext_mscale = 1.f;   // 1 + 0.1 ln(1 / freq_scale), applied when ext_factor != 0
  float corr_low = 0.f;     // YaRN correction dims
  float corr_high = 0.f;
};

// For token t and head h: the n_dims values at
// in + t·in_token_stride + h·in_head_stride are rotated by position
// positions[t] and written at the same place under `out` (out may alias in).
cudaError_t LaunchRope(const float* in, int64_t in_token_stride, int64_t in_head_stride, float* out,
                       int64_t out_token_stride, int64_t out_head_stride, const int32_t* positions,
                       int64_t n_tokens, int64_t n_heads, const RopeDeviceParams& params,
                       cudaStream_t stream);

// out[t, i] = silu(gate[t, i]) · up[t, i], silu(x) = x / (1 + e^-x); rows of
// n with their own strides (gate and up may be two halves of one row).
cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t in_stride, float* out,
                          int64_t out_stride, int64_t n_rows, int64_t n, cudaStream_t stream);

// out[i] = (a[i] + b[i]) + residual[i] (b may be null: a[i] + residual[i]),
// the reference's Combine order. out may alias any input.
cudaError_t LaunchResidualAdd(const float* residual, const float* a, const float* b, float* out,
                              int64_t n, cudaStream_t stream);

// float -> bfloat16 (round to nearest even), for the cuBLAS BF16 GEMM inputs.
cudaError_t LaunchConvertToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream);

// The MoE router after the gate GEMM: per token, probabilities (softmax or
// sigmoid of the logits), selection scores (+ bias), group-limited top-k,
// weights normalized and scaled (Router::Route's rules).
struct RouterDeviceParams {
  int n_experts = 0;      // <= 1024
  int k = 0;              // experts kept per token, <= 32
  int sigmoid = 0;        // 1: sigmoid gating (V3), 0: softmax
  int n_groups = 1;       // expert groups (V3: 8)
  int n_groups_used = 1;  // groups kept (V3: 4)
  int normalize = 0;      // divide the kept weights by their sum
  float scale = 1.f;      // then multiply by this
};
// logits [n_tokens × n_experts]; bias [n_experts] or null; ids and weights
// [n_tokens × k], each row in descending selection score (ties: lower id).
cudaError_t LaunchRouterTopK(const float* logits, const float* bias, int32_t* ids, float* weights,
                             int64_t n_tokens, const RouterDeviceParams& params,
                             cudaStream_t stream);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_LAYER_KERNELS_CUH_
