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

}  // namespace

void MlaAttention(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                  const float* const* rows, int64_t n_rows, float* scores, float* out,
                  int64_t out_stride, CpuIsa isa) {
  MOEFLOW_CHECK(shape.n_heads > 0 && shape.row_dim > 0 && n_rows > 0);
  MOEFLOW_CHECK(shape.v_dim > 0 && shape.v_dim <= shape.row_dim);
  MOEFLOW_CHECK(q_stride >= shape.row_dim && out_stride >= shape.v_dim);
  if (HasAvx512(isa) && shape.row_dim % 16 == 0 && shape.v_dim % 16 == 0) {
    internal::MlaScoresAvx512(shape, q, q_stride, rows, n_rows, scores);
    for (int64_t h = 0; h < shape.n_heads; ++h)
      SoftmaxInPlace(scores + h * n_rows, n_rows);
    internal::MlaContextAvx512(shape, scores, rows, n_rows, out, out_stride);
    return;
  }
  if (isa == CpuIsa::kAvx2 && shape.row_dim % 8 == 0 && shape.v_dim % 8 == 0) {
    internal::MlaScoresAvx2(shape, q, q_stride, rows, n_rows, scores);
    for (int64_t h = 0; h < shape.n_heads; ++h)
      SoftmaxInPlace(scores + h * n_rows, n_rows);
    internal::MlaContextAvx2(shape, scores, rows, n_rows, out, out_stride);
    return;
  }
  MlaAttentionGeneric(shape, q, q_stride, rows, n_rows, scores, out, out_stride, isa);
}

}  // namespace moeflow
