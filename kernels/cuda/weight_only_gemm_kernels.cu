// Weight-only int8 (Q8_0-derived) and int4 (Q4_K-derived) matrix products
// with float activations: the GEMV for decode (<= 8 tokens: every weight is
// read once and used for all tokens) and a shared-memory tiled GEMM for
// prefill chunks. Weights are dequantized in registers exactly as ggml does;
// products and sums are f32. Generic CUDA (no dp4a / MMA).
#include <cuda_fp16.h>

#include "kernels/cuda/weight_only_gemm_kernels.cuh"

namespace moeflow::cuda {
namespace {

constexpr int kGemvMaxTokens = 8;
constexpr int kGemvWarps = 8;

__device__ inline float Half(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// Eight consecutive weights of row r starting at column c (c % 8 == 0).
__device__ inline void LoadWeights8(const WeightOnlyDeviceMatrix& w, int64_t r, int64_t c,
                                    float* out) {
  if (w.kind == 0) {
    const uint2 q = *reinterpret_cast<const uint2*>(w.qs + r * w.cols + c);
    const float d = Half(w.scales[r * (w.cols / 32) + c / 32]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[i] = static_cast<float>(static_cast<int8_t>((q.x >> (8 * i)) & 0xff)) * d;
      out[4 + i] = static_cast<float>(static_cast<int8_t>((q.y >> (8 * i)) & 0xff)) * d;
    }
  } else {
    const uint32_t q = *reinterpret_cast<const uint32_t*>(w.qs + r * (w.cols / 2) + c / 2);
    const int64_t blk = r * (w.cols / 256) + c / 256;
    const int j = static_cast<int>((c % 256) / 32);
    const float d1 = Half(w.scales[2 * blk]) * w.sub[blk * 16 + j];
    const float m1 = Half(w.scales[2 * blk + 1]) * w.sub[blk * 16 + 8 + j];
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = d1 * static_cast<float>((q >> (4 * i)) & 0xf) - m1;
  }
}

// grid (ceil(n_out / kGemvWarps), n_batch); one warp per output row.
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(WeightOnlyGemmDeviceArgs a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  const int64_t b = blockIdx.y;
  if (n >= a.n_out) return;
  const int64_t r = b * a.n_out + n;
  const float* x = a.x + b * a.x_batch;
  float acc[kGemvMaxTokens] = {};
  for (int64_t c = 8 * lane; c < a.w.cols; c += 256) {
    float w[8];
    LoadWeights8(a.w, r, c, w);
#pragma unroll
    for (int m = 0; m < kGemvMaxTokens; ++m) {
      if (m < a.n_tokens) {
        const float4 x0 = *reinterpret_cast<const float4*>(x + m * a.x_stride + c);
        const float4 x1 = *reinterpret_cast<const float4*>(x + m * a.x_stride + c + 4);
        acc[m] += w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x +
                  w[5] * x1.y + w[6] * x1.z + w[7] * x1.w;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxTokens; ++m) {
    if (m >= a.n_tokens) break;
    float v = acc[m];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) a.y[b * a.y_batch + m * a.y_stride + n] = v;
  }
}

constexpr int kTileN = 64;  // output rows per block
constexpr int kTileM = 32;  // tokens per block
constexpr int kTileK = 32;  // columns per step

// grid (ceil(n_out / kTileN), ceil(n_tokens / kTileM), n_batch), 256 threads;
// thread (tx = tid % 16, ty = tid / 16) computes rows tx + 16 i (i < 4) for
// tokens ty + 16 j (j < 2).
__global__ void __launch_bounds__(256) GemmKernel(WeightOnlyGemmDeviceArgs a) {
  __shared__ float ws[kTileN][kTileK + 1];
  __shared__ float xs[kTileM][kTileK + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t b = blockIdx.z;
  const float* x = a.x + b * a.x_batch;
  float acc[2][4] = {};
  for (int64_t k0 = 0; k0 < a.w.cols; k0 += kTileK) {
    // 64 × 32 weights: thread tid dequantizes 8 consecutive ones.
    {
      const int rr = tid / 4, cc = (tid % 4) * 8;
      float w[8] = {};
      if (n0 + rr < a.n_out) LoadWeights8(a.w, b * a.n_out + n0 + rr, k0 + cc, w);
#pragma unroll
      for (int i = 0; i < 8; ++i) ws[rr][cc + i] = w[i];
    }
    // 32 × 32 activations: 4 per thread.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + 256 * i, mm = e / kTileK, cc = e % kTileK;
      xs[mm][cc] = m0 + mm < a.n_tokens ? x[(m0 + mm) * a.x_stride + k0 + cc] : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      float wv[4], xv[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) wv[i] = ws[tx + 16 * i][kk];
#pragma unroll
      for (int j = 0; j < 2; ++j) xv[j] = xs[ty + 16 * j][kk];
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] += wv[i] * xv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int64_t m = m0 + ty + 16 * j;
    if (m >= a.n_tokens) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t n = n0 + tx + 16 * i;
      if (n < a.n_out) a.y[b * a.y_batch + m * a.y_stride + n] = acc[j][i];
    }
  }
}

}  // namespace

cudaError_t LaunchWeightOnlyGemm(const WeightOnlyGemmDeviceArgs& a, cudaStream_t stream) {
  if (a.n_out == 0 || a.n_tokens == 0 || a.n_batch == 0) return cudaSuccess;
  if (a.n_tokens <= kGemvMaxTokens) {
    const dim3 grid(static_cast<unsigned>((a.n_out + kGemvWarps - 1) / kGemvWarps),
                    static_cast<unsigned>(a.n_batch));
    GemvKernel<<<grid, kGemvWarps * 32, 0, stream>>>(a);
  } else {
    const dim3 grid(static_cast<unsigned>((a.n_out + kTileN - 1) / kTileN),
                    static_cast<unsigned>((a.n_tokens + kTileM - 1) / kTileM),
                    static_cast<unsigned>(a.n_batch));
    GemmKernel<<<grid, 256, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace moeflow::cuda
