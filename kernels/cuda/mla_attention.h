// Host adapters of MLA attention over the paged compressed KV cache
// (mla_attention_kernels.cu): the cache write, decode (flash-decoding with
// split-K) and chunked prefill (FlashAttention-style tiles).
//
// Role in the data flow: the CUDA gpu_worker's attention. Per layer and
// token, the caller computes the cache row [rms_norm(kv_cmpr), rope(k_pe)]
// (layer_ops.h), writes it with RunMlaCacheWrite, absorbs the queries
// (q_abs[h] = [attn_k_b[h] · q_nope[h], rope(q_pe[h])], a batched
// weight-only GEMM over the heads), runs decode or prefill here to get the
// context ctx[h] = Σ_j softmax_j(kq_scale · q_abs[h] · row_j) · row_j[0..kv_lora),
// and applies attn_v_b[h] and attn_output after (reference.cc's absorbed
// AttentionBlock, the CPU reference the tests compare with).
//
// Cache layout (one layer): bf16 [n_pages × page_tokens × (kv_lora + rope)];
// sequence s's position j is in page page_table[s][j / page_tokens] at
// offset j % page_tokens. Pages are allocated by the caller (model/
// memory_plan.h plans them in pages of kGpuKvPageTokens).
//
// Numerics: rows are bf16 (the tests round their reference rows to bf16 the
// same way), scores and sums are f32 with an online softmax; the result
// agrees with the double-accumulated reference to about 1e-5 relative.
//
// Thread-safety: stateless; callers serialize on their stream.
// Failure: InvalidArgument from CanImplement (shape limits: kv_lora and rope
// multiples of 32, kv_lora <= 512, rope <= 128, n_splits in [1, 16]);
// Internal with the CUDA error when a launch fails.
#ifndef MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_H_
#define MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/mla_attention_kernels.cuh"

namespace moeflow::cuda {

struct MlaCacheWriteArguments {
  const float* rows = nullptr;     // [n_tokens × (kv_lora + rope)]
  const int32_t* slots = nullptr;  // [n_tokens]: page · page_tokens + offset
  int64_t n_tokens = 0;
  int64_t row_dim = 0;
  uint16_t* cache = nullptr;  // bf16
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementMlaCacheWrite(const MlaCacheWriteArguments& args);
absl::Status RunMlaCacheWrite(const MlaCacheWriteArguments& args);

struct MlaDecodeArguments {
  MlaDeviceParams params;
  const float* q = nullptr;             // [n_seqs × n_heads × (kv_lora + rope)]
  const uint16_t* cache = nullptr;      // bf16 pages
  const int32_t* page_table = nullptr;  // [n_seqs × params.max_pages]
  const int32_t* seq_lens = nullptr;    // [n_seqs], each in [1, max_pages · page_tokens]
  float* out = nullptr;                 // [n_seqs × n_heads × kv_lora]
  int64_t n_seqs = 0;
  int n_splits = 1;            // split-K parts, [1, kMlaMaxSplits]
  float* workspace = nullptr;  // MlaDecodeWorkspaceFloats(...) floats
  cudaStream_t stream = nullptr;
};
int64_t MlaDecodeWorkspaceFloats(int64_t n_seqs, int64_t n_heads, int n_splits, int64_t kv_lora);
// Splits for a context of `max_len` positions: one per 512 positions, <= 16.
int MlaDecodeSplitsFor(int64_t max_len);
absl::Status CanImplementMlaDecode(const MlaDecodeArguments& args);
absl::Status RunMlaDecode(const MlaDecodeArguments& args);

struct MlaPrefillArguments {
  MlaDeviceParams params;
  const float* q = nullptr;             // [n_tokens × n_heads × (kv_lora + rope)]
  const uint16_t* cache = nullptr;      // rows 0..start_pos + n_tokens - 1 written
  const int32_t* page_table = nullptr;  // [params.max_pages]
  int64_t start_pos = 0;
  int64_t n_tokens = 0;
  float* out = nullptr;  // [n_tokens × n_heads × kv_lora]
  cudaStream_t stream = nullptr;
};
absl::Status CanImplementMlaPrefill(const MlaPrefillArguments& args);
absl::Status RunMlaPrefill(const MlaPrefillArguments& args);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_MLA_ATTENTION_H_
