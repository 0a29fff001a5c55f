// Device-side launchers of MLA attention over the paged compressed KV cache
// (see mla_attention.h for the host API, layouts and checks). Plain C++ so
// that nvcc never sees Abseil headers.
#ifndef MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_KERNELS_CUH_
#define MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_KERNELS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace moeflow::cuda {

// Limits of the register tiles: per lane at most 16 kv_lora and 4 rope values.
constexpr int kMlaMaxKvLora = 512;
constexpr int kMlaMaxRope = 128;
constexpr int kMlaMaxSplits = 16;

struct MlaDeviceParams {
  int n_heads = 0;
  int kv_lora = 0;      // multiple of 32, <= kMlaMaxKvLora
  int rope_dim = 0;     // multiple of 32, <= kMlaMaxRope
  int page_tokens = 0;  // positions per cache page
  int max_pages = 0;    // page-table row length per sequence
  float kq_scale = 1.f;
};

// cache: bf16 [n_pages × page_tokens × (kv_lora + rope_dim)].
// rows: f32 [n_tokens × row_dim]; slots[t] = page · page_tokens + offset.
cudaError_t LaunchMlaCacheWrite(const float* rows, const int32_t* slots, int64_t n_tokens,
                                int64_t row_dim, uint16_t* cache, cudaStream_t stream);

// Decode: one query per sequence. q: f32 [n_seqs × n_heads × row_dim]
// (absorbed), page_table: int32 [n_seqs × max_pages], seq_lens: int32
// [n_seqs] (>= 1, the query's own row already cached), out: f32
// [n_seqs × n_heads × kv_lora]. Split-K over the positions in `n_splits`
// parts; partial_acc: f32 [n_seqs × n_heads × n_splits × kv_lora],
// partial_ml: f32 [n_seqs × n_heads × n_splits × 2].
cudaError_t LaunchMlaDecode(const float* q, const uint16_t* cache, const int32_t* page_table,
                            const int32_t* seq_lens, float* out, int64_t n_seqs, int n_splits,
                            float* partial_acc, float* partial_ml, const MlaDeviceParams& params,
                            cudaStream_t stream);

// Prefill of one sequence's chunk: query t (position start_pos + t) attends
// to positions 0..start_pos + t of the cache (rows written beforehand).
// q: f32 [n_tokens × n_heads × row_dim], page_table: int32 [max_pages],
// out: f32 [n_tokens × n_heads × kv_lora].
cudaError_t LaunchMlaPrefill(const float* q, const uint16_t* cache, const int32_t* page_table,
                             int64_t start_pos, int64_t n_tokens, float* out,
                             const MlaDeviceParams& params, cudaStream_t stream);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_KERNELS_CUH_
