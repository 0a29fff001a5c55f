// The AVX-512 variant of MlaAttention (attention_simd.inc, 16-float vectors).
#include <immintrin.h>

namespace moeflow {
namespace internal {
namespace {
using Vec = __m512;
inline Vec VZero() { return _mm512_setzero_ps(); }
inline Vec VLoad(const float* p) { return _mm512_loadu_ps(p); }
inline void VStore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec VSet1(float x) { return _mm512_set1_ps(x); }
inline Vec VFmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float VReduce(Vec v) { return _mm512_reduce_add_ps(v); }
inline float VReduceMax(Vec v) { return _mm512_reduce_max_ps(v); }
inline Vec VAdd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec VSub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec VMul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec VMax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec VRound(Vec v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT); }
// v · 2^n for integral n in [-126, 0].
inline Vec VLdexp(Vec v, Vec n) { return _mm512_scalef_ps(v, n); }
// 0 where x < limit, else v.
inline Vec VZeroWhereLess(Vec x, Vec limit, Vec v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_GE_OQ), v);
}
}  // namespace
}  // namespace internal
}  // namespace moeflow

#define MOEFLOW_ATTN_WIDTH 16
#define MOEFLOW_ATTN_ROW_TILE 4
#define MOEFLOW_ATTN_COL_CHUNKS 4
#define MOEFLOW_ATTN_SCORES MlaScoresAvx512
#define MOEFLOW_ATTN_CONTEXT MlaContextAvx512
#define MOEFLOW_ATTN_SOFTMAX MlaSoftmaxAvx512
#include "kernels/cpu/attention_simd.inc"
