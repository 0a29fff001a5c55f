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
//   p[h]         = softmax(scores[h])      (scalar: expf, double sum; SIMD: a vector exp, float
//   sum) out[h][c]    = Σ_j p[h][j] · rows[j][c]                      c < v_dim, j ascending
//
// Variants: a scalar reference (CpuIsa::kScalar: ggml's scalar F32 dot for
// the scores, the context summed per column), an AVX2 path when row_dim and
// v_dim are multiples of 8 and an AVX-512 path for the AVX-512 ISAs when they
// are multiples of 16 (attention_simd.inc, one source per vector width). The
// AVX-512 path tiles 4 heads × 4 rows for the scores (each row loaded once
// per tile for all the group's heads) and 4 heads × 64 columns for the
// context (each row segment loaded once for 4 heads); the AVX2 path 4 heads
// × 2 rows and 4 heads × 16 columns (its 16 registers). Both go over the rows
// in blocks of 32 (74 KB of DeepSeek's rows, resident in L2) as
// MlaAttentionTokens does, so that a long context is read from memory once
// per call, not once per head tile and column chunk.
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
// max, float exp, divide by the sum, here summed in double): the scalar
// attention reference's, and the router softmax of the engine and the
// reference. The SIMD variants use a vector exp (internal::MlaSoftmax*,
// ggml's SIMD softmax does the same), a sixth of the time of expf per score.
void SoftmaxInPlace(float* s, int64_t n);

// Causal attention of `n_tok` consecutive query tokens of one sequence, all
// heads at once: token i (0-based) attends rows [0, first_seen + i), heads
// sharing those rows as in MlaAttention. The result of each (token, head) is
// bit-identical to MlaAttention on that token alone with the same ISA: the
// same dot products, softmax and context sums, only in another loop order —
// rows in blocks that stay in L2 while every (token, head) of the call
// passes over them, instead of every token streaming all its rows (long
// prompts: 4096 tokens × 4096 rows of 2.3 KB).
//   q:      token i, head h at q + (i · n_heads + h) · q_stride
//   out:    token i, head h at out + (i · n_heads + h) · out_stride
//   scores: scratch of n_tok · n_heads · (first_seen + n_tok − 1) floats
struct MlaTokensArgs {
  MlaAttentionShape shape;
  const float* q = nullptr;
  int64_t q_stride = 0;
  int64_t n_tok = 0;
  const float* const* rows = nullptr;
  int64_t first_seen = 1;
  float* scores = nullptr;
  float* out = nullptr;
  int64_t out_stride = 0;
};
void MlaAttentionTokens(const MlaTokensArgs& args, CpuIsa isa);

namespace internal {
// The AVX-512 variant's two halves (attention_avx512.cc), shapes as
// MlaAttention with row_dim and v_dim multiples of 16: the scaled scores
// (head h, row j at scores[h · score_stride + j]), and the context from the
// softmaxed scores `p` (same layout), added to `out` when `accumulate` (a
// later block of rows), else written.
void MlaScoresAvx512(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                     const float* const* rows, int64_t n_rows, float* scores, int64_t score_stride);
void MlaContextAvx512(const MlaAttentionShape& shape, const float* p, int64_t p_stride,
                      const float* const* rows, int64_t n_rows, float* out, int64_t out_stride,
                      bool accumulate);
// Softmax in place over n > 0 floats with a vector exp (attention_simd.inc:
// relative error < 2e-7 against expf; the sum in float lanes).
void MlaSoftmaxAvx512(float* s, int64_t n);
// The same with 8-float vectors (attention_avx2.cc): row_dim and v_dim
// multiples of 8.
void MlaScoresAvx2(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                   const float* const* rows, int64_t n_rows, float* scores, int64_t score_stride);
void MlaContextAvx2(const MlaAttentionShape& shape, const float* p, int64_t p_stride,
                    const float* const* rows, int64_t n_rows, float* out, int64_t out_stride,
                    bool accumulate);
void MlaSoftmaxAvx2(float* s, int64_t n);
}  // namespace internal

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_ATTENTION_H_
