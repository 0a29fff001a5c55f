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
inline float VReduceMax(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Vec VAdd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec VSub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec VMul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec VMax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec VRound(Vec v) {
  return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// v · 2^n for integral n in [-126, 0]: n added to the exponent field.
inline Vec VLdexp(Vec v, Vec n) {
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(v), e));
}
// 0 where x < limit, else v.
inline Vec VZeroWhereLess(Vec x, Vec limit, Vec v) {
  return _mm256_and_ps(_mm256_cmp_ps(x, limit, _CMP_GE_OQ), v);
}
}  // namespace
}  // namespace internal
}  // namespace moeflow

#define MOEFLOW_ATTN_WIDTH 8
#define MOEFLOW_ATTN_ROW_TILE 2
#define MOEFLOW_ATTN_COL_CHUNKS 2
#define MOEFLOW_ATTN_SCORES MlaScoresAvx2
#define MOEFLOW_ATTN_CONTEXT MlaContextAvx2
#define MOEFLOW_ATTN_SOFTMAX MlaSoftmaxAvx2
#include "kernels/cpu/attention_simd.inc"
