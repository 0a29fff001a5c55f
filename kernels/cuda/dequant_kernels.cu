// GPU dequantization of ggml blocks to float32: the load-time path that turns
// a GGUF file's Q8_0 / Q4_K / Q6_K weights into the layouts the GPU worker
// keeps. Arithmetic follows the CPU reference (kernels/cpu/quants.cc) operation
// for operation, so results are bit-identical to it (and so to ggml).
#include <cuda_fp16.h>

#include "kernels/cuda/dequant_kernels.cuh"

namespace moeflow::cuda {
namespace {

constexpr int kQK8_0 = 32;
constexpr int kQK_K = 256;

// Byte layouts (ggml's block structs): Q8_0 = f16 d + 32 x int8.
constexpr int kQ8_0Bytes = 2 + 32;
// Q4_K = f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
constexpr int kQ4_KBytes = 2 + 2 + 12 + 128;
// Q6_K = 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, f16 d.
constexpr int kQ6_KBytes = 128 + 64 + 16 + 2;

__device__ inline float LoadHalf(const uint8_t* p) {
  __half_raw raw;
  raw.x = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__half(raw));
}

// One thread per element: x[i] = d * q[i].
__global__ void DequantizeQ8_0Kernel(const uint8_t* blocks, float* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const uint8_t* block = blocks + (i / kQK8_0) * kQ8_0Bytes;
  const float d = LoadHalf(block);
  const int8_t q = static_cast<int8_t>(block[2 + i % kQK8_0]);
  out[i] = q * d;
}

// Scale j (0..7) and min j of a Q4_K/Q5_K block's 12 packed bytes.
__device__ inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

// One thread per element. Element e of a block: 64-element chunk c = e / 64,
// within it the low nibbles come first (sub-block 2c), then the high ones (2c+1).
__global__ void DequantizeQ4_KKernel(const uint8_t* blocks, float* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const uint8_t* block = blocks + (i / kQK_K) * kQ4_KBytes;
  const int e = static_cast<int>(i % kQK_K);
  const float d = LoadHalf(block);
  const float dmin = LoadHalf(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qs = block + 16;
  const int chunk = e / 64;
  const int within = e % 64;
  const bool high = within >= 32;
  const int sub = 2 * chunk + (high ? 1 : 0);
  uint8_t sc, m;
  ScaleMinK4(sub, scales, &sc, &m);
  const float d1 = d * sc;
  const float m1 = dmin * m;
  const uint8_t byte = qs[chunk * 32 + within % 32];
  const int q = high ? (byte >> 4) : (byte & 0xF);
  out[i] = d1 * q - m1;
}

// One thread per element. 128-element halves; within a half, l in [0,32) and
// four groups (l, l+32, l+64, l+96) built from ql nibbles and qh bit pairs.
__global__ void DequantizeQ6_KKernel(const uint8_t* blocks, float* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const uint8_t* block = blocks + (i / kQK_K) * kQ6_KBytes;
  const int e = static_cast<int>(i % kQK_K);
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(block + 192);
  const float d = LoadHalf(block + 208);
  const int half = e / 128;
  const int r = e % 128;
  const int group = r / 32;
  const int l = r % 32;
  const uint8_t* ql_h = ql + 64 * half;
  const uint8_t* qh_h = qh + 32 * half;
  const int8_t* sc_h = sc + 8 * half;
  const int is = l / 16;
  // Groups 0/1 take the low nibbles of ql[l] / ql[l + 32], groups 2/3 the high ones.
  const uint8_t packed = ql_h[l + 32 * (group & 1)];
  const uint8_t low = group >= 2 ? (packed >> 4) : (packed & 0xF);
  const int q = static_cast<int8_t>((low | (((qh_h[l] >> (2 * group)) & 3) << 4))) - 32;
  out[i] = d * sc_h[is + 2 * group] * q;
}

cudaError_t Launch(void (*kernel)(const uint8_t*, float*, int64_t), const void* blocks,
                   float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t grid = (n + kThreads - 1) / kThreads;
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(blocks), out, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchDequantizeQ8_0(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream) {
  return Launch(DequantizeQ8_0Kernel, blocks, out, n_blocks * kQK8_0, stream);
}

cudaError_t LaunchDequantizeQ4_K(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream) {
  return Launch(DequantizeQ4_KKernel, blocks, out, n_blocks * kQK_K, stream);
}

cudaError_t LaunchDequantizeQ6_K(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream) {
  return Launch(DequantizeQ6_KKernel, blocks, out, n_blocks * kQK_K, stream);
}

}  // namespace moeflow::cuda
