// The AVX2 variant of MlaAttention (attention_simd.inc, 8-float vectors;
// 4 heads × 2 rows score tiles and 4 heads × 16 columns context tiles keep
// the accumulators within the 16 ymm registers).
#include <immintrin.h>

namespace moeflow {
namespace internal {
namespace {
using Vec = __m256;
inline Vec VZero() { return _mm256_setzero_ps(); }
inline Vec VLoad(const float* p) { return _mm256_loadu_ps(p); }
inline void VStore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec VSet1(float x) { return _mm256_set1_ps(x); }
inline Vec VFmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
// Fixed order: high half onto low, then pairs, then the last two.
inline float VReduce(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
}  // namespace
}  // namespace internal
}  // namespace moeflow

#define MOEFLOW_ATTN_WIDTH 8
#define MOEFLOW_ATTN_ROW_TILE 2
#define MOEFLOW_ATTN_COL_CHUNKS 2
#define MOEFLOW_ATTN_SCORES MlaScoresAvx2
#define MOEFLOW_ATTN_CONTEXT MlaContextAvx2
#include "kernels/cpu/attention_simd.inc"
