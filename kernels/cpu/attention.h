// Causal softmax attention of one query token over a list of cached rows, for
// a group of heads that share those rows: the core of absorbed MLA
// (DeepSeek-V2/V3), where every head attends over the same compressed KV rows
// [kv_lora (the values) | rope part].
//
// Role in the data flow: EngineAttentionBlock (engine/engine.cc)
// calls MlaAttention once per (query token, group of heads) after the
// absorbed queries (q_nope·attn_k_b ++ q_pe) are built, and feeds the context
// rows (in kv_lora space) to the per-head attn_v_b matmuls. It splits the
// (token, head group) pairs over its ThreadPool; this kernel is single-threaded.
//
//   scores[h][j] = (q[h] · rows[j][0 .. row_dim)) · scale        j < n_rows
//   p[h]         = softmax(scores[h])                            (float exp, double sum)
//   out[h][c]    = Σ_j p[h][j] · rows[j][c]                      c < v_dim, j ascending
//
// Variants: a scalar reference (CpuIsa::kScalar: ggml's scalar F32 dot for
// the scores, the context summed per column), an AVX2 path when row_dim and
// v_dim are multiples of 8 and an AVX-512 path for the AVX-512 ISAs when they
// are multiples of 16 (attention_simd.inc, one source per vector width). The
// AVX-512 path tiles 4 heads × 4 rows for the scores (each row loaded once
// per tile for all the group's heads) and 4 heads × 64 columns for the
// context (each row segment loaded once for 4 heads); the AVX2 path 4 heads
// × 2 rows and 4 heads × 16 columns (its 16 registers).
//
// Determinism: each (head, row) dot product and each (head, column) context
// sum is computed in one fixed order (16-lane FMA accumulation over the
// columns, then a fixed lane reduction; 8 lanes with AVX2; context sums over j ascending)
// whatever the tile it falls in, so a head's result does not depend on which
// or how many other heads are in the group, nor on the thread that runs it.
// It does depend on the ISA (different summation orders; the results agree
// within float32 summation error — tests/kernels/cpu/attention_test.cc).
//
// Thread-safety: pure function of its arguments; concurrent calls with
// disjoint `scores` and `out` are safe. Failure: none at run time (shapes
// are CHECKed).
#ifndef MOEFLOW_KERNELS_CPU_ATTENTION_H_
#define MOEFLOW_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "kernels/cpu/matmul.h"

namespace moeflow {

struct MlaAttentionShape {
  int64_t n_heads = 0;  // heads in this call (a group of the model's heads)
  int64_t row_dim = 0;  // floats per query and per cached row
  int64_t v_dim = 0;    // leading floats of each row that are the value (<= row_dim)
  float scale = 1.0f;   // applied to each dot product before the softmax
};

// q: n_heads rows of row_dim floats, head h at q + h * q_stride.
// rows: n_rows >= 1 pointers to cached rows (row_dim floats each), in
// position order. scores: scratch of n_heads * n_rows floats. out: head h's
// v_dim floats at out + h * out_stride.
void MlaAttention(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                  const float* const* rows, int64_t n_rows, float* scores, float* out,
                  int64_t out_stride, CpuIsa isa);

// Softmax in place over n > 0 floats (ggml_soft_max's steps: subtract the
// max, float exp, divide by the sum, here summed in double). Shared by every
// attention variant, so that they differ only in the dot products and the
// context sums, and by the router softmax of the engine and the reference.
void SoftmaxInPlace(float* s, int64_t n);

namespace internal {
// The AVX-512 variant's two halves (attention_avx512.cc), shapes as
// MlaAttention with row_dim and v_dim multiples of 16: the scaled scores
// [n_heads × n_rows], and the context from the softmaxed scores `p`.
void MlaScoresAvx512(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                     const float* const* rows, int64_t n_rows, float* scores);
void MlaContextAvx512(const MlaAttentionShape& shape, const float* p, const float* const* rows,
                      int64_t n_rows, float* out, int64_t out_stride);
// The same with 8-float vectors (attention_avx2.cc): row_dim and v_dim
// multiples of 8.
void MlaScoresAvx2(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                   const float* const* rows, int64_t n_rows, float* scores);
void MlaContextAvx2(const MlaAttentionShape& shape, const float* p, const float* const* rows,
                    int64_t n_rows, float* out, int64_t out_stride);
}  // namespace internal

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_ATTENTION_H_
