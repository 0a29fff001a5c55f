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
}  // namespace
}  // namespace internal
}  // namespace moeflow

#define MOEFLOW_ATTN_WIDTH 16
#define MOEFLOW_ATTN_ROW_TILE 4
#define MOEFLOW_ATTN_COL_CHUNKS 4
#define MOEFLOW_ATTN_SCORES MlaScoresAvx512
#define MOEFLOW_ATTN_CONTEXT MlaContextAvx512
#include "kernels/cpu/attention_simd.inc"
