// MLA attention with weight absorption over the paged compressed KV cache:
// decode (one query per sequence, split-K over the positions, then a combine
// pass: flash-decoding) and chunked prefill (FlashAttention-style: the cache
// is read in tiles of kTile positions into shared memory and each query keeps
// an online softmax). Scores are q · row over the whole row (kv_lora +
// rope), the context is Σ p · row[0..kv_lora) — the absorbed form of
// reference.cc's AttentionBlock (the caller applies attn_k_b before and
// attn_v_b after, with the weight-only GEMMs).
//
// Generic CUDA (warp shuffles, shared memory; no tensor-core MMA): one warp
// computes one query's score per position, each lane holding kv_lora / 32 +
// rope / 32 query values and kv_lora / 32 accumulators in registers.
#include <cuda_bf16.h>

#include <cfloat>

#include "kernels/cuda/mla_attention_kernels.cuh"

namespace moeflow::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kKvPerLane = kMlaMaxKvLora / 32;  // 16
constexpr int kRopePerLane = kMlaMaxRope / 32;  // 4
constexpr int kTile = 32;                       // prefill: positions per shared-memory tile
constexpr int kQueriesPerWarp = 2;              // prefill

__device__ inline float Bf16(uint16_t bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }

__device__ inline int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ inline float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Per-lane slice of one query: q_kv[i] = q[lane + 32 i], q_pe[i] = q[kv_lora + lane + 32 i].
struct QuerySlice {
  float kv[kKvPerLane];
  float pe[kRopePerLane];
};

__device__ inline void LoadQuery(const float* q, const MlaDeviceParams& p, int lane,
                                 QuerySlice* s) {
#pragma unroll
  for (int i = 0; i < kKvPerLane; ++i) {
    s->kv[i] = i < p.kv_lora / 32 ? q[lane + 32 * i] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kRopePerLane; ++i) {
    s->pe[i] = i < p.rope_dim / 32 ? q[p.kv_lora + lane + 32 * i] : 0.f;
  }
}

// Online softmax state of one query in one warp (m, l replicated over lanes).
struct OnlineState {
  float m = -INFINITY;
  float l = 0.f;
  float acc[kKvPerLane] = {};
};

// Folds the cache row `row` (bf16, kv_lora + rope values) into `st`.
__device__ inline void Accumulate(const QuerySlice& q, const uint16_t* row,
                                  const MlaDeviceParams& p, int lane, OnlineState* st) {
  float dot = 0.f;
  float v[kKvPerLane];
#pragma unroll
  for (int i = 0; i < kKvPerLane; ++i) {
    v[i] = i < p.kv_lora / 32 ? Bf16(row[lane + 32 * i]) : 0.f;
    dot += q.kv[i] * v[i];
  }
#pragma unroll
  for (int i = 0; i < kRopePerLane; ++i) {
    if (i < p.rope_dim / 32) dot += q.pe[i] * Bf16(row[p.kv_lora + lane + 32 * i]);
  }
  const float s = WarpSum(dot) * p.kq_scale;
  const float m_new = fmaxf(st->m, s);
  const float corr = expf(st->m - m_new);  // 0 for the first position (m = -inf)
  const float w = expf(s - m_new);
  st->l = st->l * corr + w;
#pragma unroll
  for (int i = 0; i < kKvPerLane; ++i) st->acc[i] = st->acc[i] * corr + w * v[i];
  st->m = m_new;
}

__device__ inline const uint16_t* CacheRow(const uint16_t* cache, const int32_t* page_table,
                                           int64_t pos, const MlaDeviceParams& p) {
  const int64_t row_dim = p.kv_lora + p.rope_dim;
  const int64_t page = page_table[pos / p.page_tokens];
  return cache + (page * p.page_tokens + pos % p.page_tokens) * row_dim;
}

__global__ void CacheWriteKernel(const float* rows, const int32_t* slots, int64_t n_tokens,
                                 int64_t row_dim, uint16_t* cache) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_tokens * row_dim) return;
  const int64_t t = i / row_dim, c = i % row_dim;
  cache[static_cast<int64_t>(slots[t]) * row_dim + c] =
      __bfloat16_as_ushort(__float2bfloat16_rn(rows[i]));
}

// grid (n_heads, n_seqs, n_splits), kWarps warps.
__global__ void __launch_bounds__(kWarps * 32)
    DecodeSplitKernel(const float* q, const uint16_t* cache, const int32_t* page_table,
                      const int32_t* seq_lens, float* partial_acc, float* partial_ml,
                      MlaDeviceParams p) {
  __shared__ float sm_m[kWarps], sm_l[kWarps];
  __shared__ float sm_acc[kWarps][kMlaMaxKvLora];
  const int h = blockIdx.x, s = blockIdx.y, z = blockIdx.z, n_splits = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_dim = p.kv_lora + p.rope_dim;
  const int64_t len = seq_lens[s];
  const int64_t chunk = (len + n_splits - 1) / n_splits;
  const int64_t begin = z * chunk;
  const int64_t end = min(len, begin + chunk);
  const int32_t* pages = page_table + static_cast<int64_t>(s) * p.max_pages;

  QuerySlice qs;
  LoadQuery(q + (static_cast<int64_t>(s) * p.n_heads + h) * row_dim, p, lane, &qs);
  OnlineState st;
  for (int64_t pos = begin + warp; pos < end; pos += kWarps) {
    Accumulate(qs, CacheRow(cache, pages, pos, p), p, lane, &st);
  }
  if (lane == 0) {
    sm_m[warp] = st.m;
    sm_l[warp] = st.l;
  }
#pragma unroll
  for (int i = 0; i < kKvPerLane; ++i) {
    if (i < p.kv_lora / 32) sm_acc[warp][lane + 32 * i] = st.acc[i];
  }
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm_m[w]);
  const int64_t slot = (static_cast<int64_t>(s) * p.n_heads + h) * n_splits + z;
  float* acc_out = partial_acc + slot * p.kv_lora;
  for (int c = threadIdx.x; c < p.kv_lora; c += blockDim.x) {
    float a = 0.f;
    if (m != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        if (sm_l[w] > 0.f) a += sm_acc[w][c] * expf(sm_m[w] - m);
      }
    }
    acc_out[c] = a;
  }
  if (threadIdx.x == 0) {
    float l = 0.f;
    if (m != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        if (sm_l[w] > 0.f) l += sm_l[w] * expf(sm_m[w] - m);
      }
    }
    partial_ml[slot * 2] = m;
    partial_ml[slot * 2 + 1] = l;
  }
}

// grid (n_heads, n_seqs); out = Σ_z acc_z e^(m_z - M) / Σ_z l_z e^(m_z - M).
__global__ void DecodeCombineKernel(const float* partial_acc, const float* partial_ml, float* out,
                                    int n_splits, MlaDeviceParams p) {
  const int h = blockIdx.x, s = blockIdx.y;
  const int64_t base = (static_cast<int64_t>(s) * p.n_heads + h) * n_splits;
  float m = -INFINITY;
  for (int z = 0; z < n_splits; ++z) m = fmaxf(m, partial_ml[(base + z) * 2]);
  float l = 0.f;
  for (int z = 0; z < n_splits; ++z) {
    const float lz = partial_ml[(base + z) * 2 + 1];
    if (lz > 0.f) l += lz * expf(partial_ml[(base + z) * 2] - m);
  }
  float* o = out + (static_cast<int64_t>(s) * p.n_heads + h) * p.kv_lora;
  for (int c = threadIdx.x; c < p.kv_lora; c += blockDim.x) {
    float a = 0.f;
    for (int z = 0; z < n_splits; ++z) {
      if (partial_ml[(base + z) * 2 + 1] > 0.f) {
        a += partial_acc[(base + z) * p.kv_lora + c] * expf(partial_ml[(base + z) * 2] - m);
      }
    }
    o[c] = a / l;
  }
}

// grid (ceil(n_tokens / (kWarps · kQueriesPerWarp)), n_heads), kWarps warps;
// dynamic shared memory: kTile rows of bf16.
__global__ void __launch_bounds__(kWarps * 32)
    PrefillKernel(const float* q, const uint16_t* cache, const int32_t* page_table,
                  int64_t start_pos, int64_t n_tokens, float* out, MlaDeviceParams p) {
  extern __shared__ uint16_t tile[];  // [kTile][row_dim]
  const int h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_dim = p.kv_lora + p.rope_dim;
  const int64_t block_first = static_cast<int64_t>(blockIdx.x) * kWarps * kQueriesPerWarp;
  const int64_t block_last = min(n_tokens, block_first + kWarps * kQueriesPerWarp) - 1;

  QuerySlice qs[kQueriesPerWarp];
  OnlineState st[kQueriesPerWarp];
  int64_t qpos[kQueriesPerWarp];
#pragma unroll
  for (int k = 0; k < kQueriesPerWarp; ++k) {
    const int64_t t = block_first + warp * kQueriesPerWarp + k;
    qpos[k] = t < n_tokens ? start_pos + t : -1;  // -1: no query (past the chunk)
    if (t < n_tokens) LoadQuery(q + (t * p.n_heads + h) * row_dim, p, lane, &qs[k]);
  }
  const int64_t last_pos = start_pos + block_last;  // causal: nothing beyond it is needed
  for (int64_t base = 0; base <= last_pos; base += kTile) {
    const int64_t n_rows = MinI64(kTile, last_pos + 1 - base);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n_rows * row_dim; i += blockDim.x) {
      const int64_t r = i / row_dim, c = i % row_dim;
      tile[r * row_dim + c] = CacheRow(cache, page_table, base + r, p)[c];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kQueriesPerWarp; ++k) {
      if (qpos[k] < 0) continue;
      const int64_t upto = MinI64(n_rows, qpos[k] - base + 1);
      for (int64_t r = 0; r < upto; ++r) Accumulate(qs[k], tile + r * row_dim, p, lane, &st[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < kQueriesPerWarp; ++k) {
    if (qpos[k] < 0) continue;
    float* o = out + ((qpos[k] - start_pos) * p.n_heads + h) * p.kv_lora;
    const float inv = 1.0f / st[k].l;
#pragma unroll
    for (int i = 0; i < kKvPerLane; ++i) {
      if (i < p.kv_lora / 32) o[lane + 32 * i] = st[k].acc[i] * inv;
    }
  }
}

}  // namespace

cudaError_t LaunchMlaCacheWrite(const float* rows, const int32_t* slots, int64_t n_tokens,
                                int64_t row_dim, uint16_t* cache, cudaStream_t stream) {
  const int64_t n = n_tokens * row_dim;
  if (n == 0) return cudaSuccess;
  CacheWriteKernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
      rows, slots, n_tokens, row_dim, cache);
  return cudaGetLastError();
}

cudaError_t LaunchMlaDecode(const float* q, const uint16_t* cache, const int32_t* page_table,
                            const int32_t* seq_lens, float* out, int64_t n_seqs, int n_splits,
                            float* partial_acc, float* partial_ml, const MlaDeviceParams& params,
                            cudaStream_t stream) {
  if (n_seqs == 0) return cudaSuccess;
  const dim3 grid(params.n_heads, static_cast<unsigned>(n_seqs), n_splits);
  DecodeSplitKernel<<<grid, kWarps * 32, 0, stream>>>(q, cache, page_table, seq_lens, partial_acc,
                                                      partial_ml, params);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  DecodeCombineKernel<<<dim3(params.n_heads, static_cast<unsigned>(n_seqs)), 128, 0, stream>>>(
      partial_acc, partial_ml, out, n_splits, params);
  return cudaGetLastError();
}

cudaError_t LaunchMlaPrefill(const float* q, const uint16_t* cache, const int32_t* page_table,
                             int64_t start_pos, int64_t n_tokens, float* out,
                             const MlaDeviceParams& params, cudaStream_t stream) {
  if (n_tokens == 0) return cudaSuccess;
  const size_t smem =
      static_cast<size_t>(kTile) * (params.kv_lora + params.rope_dim) * sizeof(uint16_t);
  if (smem > 48 * 1024) {
    if (cudaError_t err = cudaFuncSetAttribute(
            PrefillKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        err != cudaSuccess) {
      return err;
    }
  }
  const int64_t per_block = kWarps * kQueriesPerWarp;
  const dim3 grid(static_cast<unsigned>((n_tokens + per_block - 1) / per_block), params.n_heads);
  PrefillKernel<<<grid, kWarps * 32, smem, stream>>>(q, cache, page_table, start_pos, n_tokens, out,
                                                     params);
  return cudaGetLastError();
}

}  // namespace moeflow::cuda
