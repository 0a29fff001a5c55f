#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "base/check.h"
#include "formats/ggml_types.h"

namespace moeflow {

void SoftmaxInPlace(float* s, int64_t n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, s[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
}

namespace {

bool HasAvx512(CpuIsa isa) {
  return isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16 || isa == CpuIsa::kAmx ||
         isa == CpuIsa::kAvx512NoVnni;
}

// The reference: one head at a time, ggml's F32 dot of `isa` (scalar or
// AVX2) for the scores, the context summed over j ascending per column.
void MlaAttentionGeneric(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                         const float* const* rows, int64_t n_rows, float* scores, float* out,
                         int64_t out_stride, CpuIsa isa) {
  const VecDotFn dot = GetVecDot(GgmlType::kF32, isa == CpuIsa::kAvx2 ? isa : CpuIsa::kScalar);
  for (int64_t h = 0; h < shape.n_heads; ++h) {
    const float* qh = q + h * q_stride;
    float* s = scores + h * n_rows;
    for (int64_t j = 0; j < n_rows; ++j) s[j] = dot(shape.row_dim, qh, rows[j]) * shape.scale;
    SoftmaxInPlace(s, n_rows);
    float* o = out + h * out_stride;
    std::fill(o, o + shape.v_dim, 0.f);
    for (int64_t j = 0; j < n_rows; ++j) {
      const float p = s[j];
      const float* v = rows[j];
      for (int64_t c = 0; c < shape.v_dim; ++c) o[c] += p * v[c];
    }
  }
}

// The SIMD halves for `shape` on `isa` (all null: the reference).
struct RowBlocked {
  void (*scores)(const MlaAttentionShape&, const float*, int64_t, const float* const*, int64_t,
                 float*, int64_t) = nullptr;
  void (*context)(const MlaAttentionShape&, const float*, int64_t, const float* const*, int64_t,
                  float*, int64_t, bool) = nullptr;
  void (*softmax)(float*, int64_t) = nullptr;
};

RowBlocked RowBlockedKernels(const MlaAttentionShape& shape, CpuIsa isa) {
  if (HasAvx512(isa) && shape.row_dim % 16 == 0 && shape.v_dim % 16 == 0) {
    return {internal::MlaScoresAvx512, internal::MlaContextAvx512, internal::MlaSoftmaxAvx512};
  }
  if (isa == CpuIsa::kAvx2 && shape.row_dim % 8 == 0 && shape.v_dim % 8 == 0) {
    return {internal::MlaScoresAvx2, internal::MlaContextAvx2, internal::MlaSoftmaxAvx2};
  }
  return {};
}

// Rows per block: 32 rows of DeepSeek's 576 floats are 74 KB, resident in
// L2 while the call's (token, head) pairs pass over them.
constexpr int64_t kRowBlock = 32;

// MlaAttentionTokens with the SIMD halves `k`: the rows in blocks of
// kRowBlock, every (token, head) of the call over each block.
void RunRowBlocked(const RowBlocked& k, const MlaTokensArgs& a) {
  const MlaAttentionShape& shape = a.shape;
  const int64_t H = shape.n_heads;
  const int64_t stride = a.first_seen + a.n_tok - 1;  // scores per (token, head)
  for (int64_t j0 = 0; j0 < stride; j0 += kRowBlock) {
    for (int64_t i = 0; i < a.n_tok; ++i) {
      const int64_t seen = a.first_seen + i;
      if (seen <= j0) continue;
      const int64_t n = std::min(seen, j0 + kRowBlock) - j0;
      k.scores(shape, a.q + i * H * a.q_stride, a.q_stride, a.rows + j0, n,
               a.scores + i * H * stride + j0, stride);
    }
  }
  for (int64_t i = 0; i < a.n_tok; ++i) {
    for (int64_t h = 0; h < H; ++h) k.softmax(a.scores + (i * H + h) * stride, a.first_seen + i);
  }
  for (int64_t j0 = 0; j0 < stride; j0 += kRowBlock) {
    for (int64_t i = 0; i < a.n_tok; ++i) {
      const int64_t seen = a.first_seen + i;
      if (seen <= j0) continue;
      const int64_t n = std::min(seen, j0 + kRowBlock) - j0;
      k.context(shape, a.scores + i * H * stride + j0, stride, a.rows + j0, n,
                a.out + i * H * a.out_stride, a.out_stride, j0 > 0);
    }
  }
}

}  // namespace

void MlaAttention(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                  const float* const* rows, int64_t n_rows, float* scores, float* out,
                  int64_t out_stride, CpuIsa isa) {
  MOEFLOW_CHECK(shape.n_heads > 0 && shape.row_dim > 0 && n_rows > 0);
  MOEFLOW_CHECK(shape.v_dim > 0 && shape.v_dim <= shape.row_dim);
  MOEFLOW_CHECK(q_stride >= shape.row_dim && out_stride >= shape.v_dim);
  if (const RowBlocked k = RowBlockedKernels(shape, isa); k.scores != nullptr) {
    // The SIMD variants: one token of MlaAttentionTokens, its rows in blocks
    // that stay in L2 while every head tile and column chunk passes over
    // them (a long context read once per call instead of once per context
    // chunk; every sum in the same order as over all rows at once).
    MlaTokensArgs a;
    a.shape = shape;
    a.q = q;
    a.q_stride = q_stride;
    a.n_tok = 1;
    a.rows = rows;
    a.first_seen = n_rows;
    a.scores = scores;
    a.out = out;
    a.out_stride = out_stride;
    RunRowBlocked(k, a);
    return;
  }
  MlaAttentionGeneric(shape, q, q_stride, rows, n_rows, scores, out, out_stride, isa);
}

void MlaAttentionTokens(const MlaTokensArgs& a, CpuIsa isa) {
  MOEFLOW_CHECK(a.n_tok > 0 && a.first_seen > 0);
  const RowBlocked k = RowBlockedKernels(a.shape, isa);
  if (k.scores != nullptr) {
    RunRowBlocked(k, a);
    return;
  }
  const int64_t H = a.shape.n_heads;
  for (int64_t i = 0; i < a.n_tok; ++i) {  // the reference, token by token
    MlaAttention(a.shape, a.q + i * H * a.q_stride, a.q_stride, a.rows, a.first_seen + i, a.scores,
                 a.out + i * H * a.out_stride, a.out_stride, isa);
  }
}

}  // namespace moeflow
