// Per-token layer kernels of the CUDA gpu_worker: RMSNorm, YaRN RoPE,
// SiLU-mul, residual add, f32 -> bf16, router top-k. Generic CUDA (no
// architecture-specific instructions), compiled for sm_89 and sm_90 with
// --fmad=false so that the products and sums round as the CPU reference's do
// (model/deepseek2/reference.cc); see layer_ops.h for the tolerances.
#include <cuda_bf16.h>

#include <cfloat>
#include <climits>

#include "kernels/cuda/layer_kernels.cuh"

namespace moeflow::cuda {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// Sum of `v` over the block (blockDim.x a multiple of 32, <= 1024); every
// thread gets the result. `scratch` holds 32 floats.
__device__ float BlockSum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int n_warps = blockDim.x / 32;
  v = lane < n_warps ? scratch[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float BlockMax(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int n_warps = blockDim.x / 32;
  v = lane < n_warps ? scratch[lane] : -FLT_MAX;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One block per row.
__global__ void RmsNormKernel(const float* x, int64_t x_stride, const float* weight, float* out,
                              int64_t out_stride, int64_t n, float eps) {
  __shared__ float scratch[32];
  const float* xr = x + blockIdx.x * x_stride;
  float* outr = out + blockIdx.x * out_stride;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += xr[i] * xr[i];
  sum = BlockSum(sum, scratch);
  const float mean = sum / static_cast<float>(n);
  const float scale = 1.0f / sqrtf(mean + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) outr[i] = (xr[i] * scale) * weight[i];
}

// One thread per (token, head, pair).
__global__ void RopeKernel(const float* in, int64_t in_ts, int64_t in_hs, float* out,
                           int64_t out_ts, int64_t out_hs, const int32_t* positions,
                           int64_t n_tokens, int64_t n_heads, RopeDeviceParams p) {
  const int64_t pairs = p.n_dims / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_tokens * n_heads * pairs) return;
  const int64_t pair = i % pairs;
  const int64_t h = (i / pairs) % n_heads;
  const int64_t t = i / (pairs * n_heads);
  // The reference multiplies theta by theta_scale once per pair: same products here.
  float theta_extrap = static_cast<float>(positions[t]);
  for (int64_t k = 0; k < pair; ++k) theta_extrap *= p.theta_scale;
  const float theta_interp = p.freq_scale * theta_extrap;
  float theta = theta_interp;
  float mscale = p.attn_factor;
  if (p.ext_factor != 0.0f) {
    const float y = static_cast<float>(pair - p.corr_low) / fmaxf(0.001f, p.corr_high - p.corr_low);
    const float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, y));
    const float ramp_mix = ramp * p.ext_factor;
    theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix;
    mscale *= p.ext_mscale;
  }
  const float c = cosf(theta) * mscale;
  const float s = sinf(theta) * mscale;
  const float* src = in + t * in_ts + h * in_hs + 2 * pair;
  float* dst = out + t * out_ts + h * out_hs + 2 * pair;
  const float x0 = src[0], x1 = src[1];
  dst[0] = x0 * c - x1 * s;
  dst[1] = x0 * s + x1 * c;
}

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t in_stride, float* out,
                              int64_t out_stride, int64_t n_rows, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_rows * n) return;
  const int64_t r = i / n, c = i % n;
  const float g = gate[r * in_stride + c];
  out[r * out_stride + c] = g / (1.0f + expf(-g)) * up[r * in_stride + c];
}

__global__ void ResidualAddKernel(const float* residual, const float* a, const float* b, float* out,
                                  int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float sum = b != nullptr ? a[i] + b[i] : a[i];
  out[i] = sum + residual[i];
}

__global__ void ConvertToBf16Kernel(const float* in, uint16_t* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const __nv_bfloat16 v = __float2bfloat16_rn(in[i]);
  out[i] = *reinterpret_cast<const uint16_t*>(&v);
}

constexpr int kMaxExperts = 1024;
constexpr int kMaxTopK = 32;

// Better selection candidate: higher score, ties to the lower id (the
// reference's stable descending sort).
__device__ bool Better(float v, int id, float best, int best_id) {
  return v > best || (v == best && id < best_id);
}

// One block of kThreads per token.
__global__ void RouterTopKKernel(const float* logits, const float* bias, int32_t* ids_out,
                                 float* weights_out, RouterDeviceParams p) {
  __shared__ float probs[kMaxExperts];
  __shared__ float sel[kMaxExperts];
  __shared__ unsigned char taken[kMaxExperts];
  __shared__ float scratch[32];
  __shared__ float red_v[32];
  __shared__ int red_id[32];
  __shared__ int chosen[kMaxTopK];
  const int64_t t = blockIdx.x;
  const int n = p.n_experts;
  const float* row = logits + t * n;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    probs[e] = row[e];
    taken[e] = 0;
  }
  __syncthreads();
  if (p.sigmoid) {
    for (int e = threadIdx.x; e < n; e += blockDim.x) probs[e] = 1.0f / (1.0f + expf(-probs[e]));
  } else {
    float m = -FLT_MAX;
    for (int e = threadIdx.x; e < n; e += blockDim.x) m = fmaxf(m, probs[e]);
    m = BlockMax(m, scratch);
    float s = 0.f;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      probs[e] = expf(probs[e] - m);
      s += probs[e];
    }
    s = BlockSum(s, scratch);
    const float inv = 1.0f / s;
    for (int e = threadIdx.x; e < n; e += blockDim.x) probs[e] *= inv;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    sel[e] = bias != nullptr ? probs[e] + bias[e] : probs[e];
  }
  __syncthreads();
  if (p.n_groups > 1) {
    // Group score: its best selection score plus its second best.
    __shared__ float group_score[64];
    __shared__ unsigned char keep[64];
    const int per_group = n / p.n_groups;
    for (int g = threadIdx.x; g < p.n_groups; g += blockDim.x) {
      float b1 = -INFINITY, b2 = -INFINITY;
      int i1 = INT_MAX;
      for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (Better(sel[e], e, b1, i1)) {
          b2 = b1;
          b1 = sel[e];
          i1 = e;
        } else if (sel[e] > b2) {
          b2 = sel[e];
        }
      }
      group_score[g] = per_group >= 2 ? b1 + b2 : b1;
      keep[g] = 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int u = 0; u < p.n_groups_used; ++u) {
        int best = -1;
        for (int g = 0; g < p.n_groups; ++g) {
          if (!keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
        }
        keep[best] = 1;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      if (!keep[e / per_group]) sel[e] = -INFINITY;
    }
    __syncthreads();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = 0; j < p.k; ++j) {
    float best = -INFINITY;
    int best_id = INT_MAX;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      if (!taken[e] && Better(sel[e], e, best, best_id)) {
        best = sel[e];
        best_id = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, best, o);
      const int id = __shfl_xor_sync(0xffffffffu, best_id, o);
      if (Better(v, id, best, best_id)) {
        best = v;
        best_id = id;
      }
    }
    if (lane == 0) {
      red_v[warp] = best;
      red_id[warp] = best_id;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
        if (Better(red_v[w], red_id[w], best, best_id)) {
          best = red_v[w];
          best_id = red_id[w];
        }
      }
      chosen[j] = best_id;
      taken[best_id] = 1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    int32_t* ids = ids_out + t * p.k;
    float* w = weights_out + t * p.k;
    float sum = 0.f;
    for (int j = 0; j < p.k; ++j) {
      ids[j] = chosen[j];
      w[j] = probs[chosen[j]];
      sum += w[j];
    }
    if (p.normalize) {
      // The smallest normal f16, as llama.cpp clamps the sum.
      sum = fmaxf(sum, 6.103515625e-5f);
      for (int j = 0; j < p.k; ++j) w[j] /= sum;
    }
    if (p.scale != 0.0f && p.scale != 1.0f) {
      for (int j = 0; j < p.k; ++j) w[j] *= p.scale;
    }
  }
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, int64_t x_stride, const float* weight, float* out,
                          int64_t out_stride, int64_t n_rows, int64_t n, float eps,
                          cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned>(n_rows), kThreads, 0, stream>>>(x, x_stride, weight, out,
                                                                        out_stride, n, eps);
  return cudaGetLastError();
}

cudaError_t LaunchRope(const float* in, int64_t in_token_stride, int64_t in_head_stride, float* out,
                       int64_t out_token_stride, int64_t out_head_stride, const int32_t* positions,
                       int64_t n_tokens, int64_t n_heads, const RopeDeviceParams& params,
                       cudaStream_t stream) {
  const int64_t n = n_tokens * n_heads * (params.n_dims / 2);
  if (n == 0) return cudaSuccess;
  RopeKernel<<<Blocks(n), kThreads, 0, stream>>>(in, in_token_stride, in_head_stride, out,
                                                 out_token_stride, out_head_stride, positions,
                                                 n_tokens, n_heads, params);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t in_stride, float* out,
                          int64_t out_stride, int64_t n_rows, int64_t n, cudaStream_t stream) {
  if (n_rows * n == 0) return cudaSuccess;
  SiluMulKernel<<<Blocks(n_rows * n), kThreads, 0, stream>>>(gate, up, in_stride, out, out_stride,
                                                             n_rows, n);
  return cudaGetLastError();
}

cudaError_t LaunchResidualAdd(const float* residual, const float* a, const float* b, float* out,
                              int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ResidualAddKernel<<<Blocks(n), kThreads, 0, stream>>>(residual, a, b, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchConvertToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(in, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchRouterTopK(const float* logits, const float* bias, int32_t* ids, float* weights,
                             int64_t n_tokens, const RouterDeviceParams& params,
                             cudaStream_t stream) {
  if (n_tokens == 0) return cudaSuccess;
  RouterTopKKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(logits, bias, ids,
                                                                             weights, params);
  return cudaGetLastError();
}

}  // namespace moeflow::cuda
