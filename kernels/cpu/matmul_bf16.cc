// AVX-512 BF16 (vdpbf16ps) vec_dots: the kAvx512Bf16 variant of
// kernels/cpu/matmul for BF16 weights, and the opt-in F16-via-BF16 dot
// (see matmul.h for how each differs from ggml and from the scalar
// reference). Compiled with -mavx512bf16 in this translation unit only;
// called only after CPUID has reported AVX-512 BF16 (matmul.cc).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/matmul_internal.h"

namespace moeflow {
namespace {

inline __m512bh AsBf16(__m512i v) { return (__m512bh)v; }

// Σ x[i]·y[i] over BF16 x and y: vdpbf16ps multiplies pairs exactly (8-bit
// significands) and adds them into fp32 lanes, rounding to nearest even.
float DotBf16(int64_t n, const void* vx, const void* vy) {
  const uint16_t* x = static_cast<const uint16_t*>(vx);
  const uint16_t* y = static_cast<const uint16_t*>(vy);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    acc0 = _mm512_dpbf16_ps(acc0, AsBf16(_mm512_loadu_si512(x + i)),
                            AsBf16(_mm512_loadu_si512(y + i)));
    acc1 = _mm512_dpbf16_ps(acc1, AsBf16(_mm512_loadu_si512(x + i + 32)),
                            AsBf16(_mm512_loadu_si512(y + i + 32)));
    acc2 = _mm512_dpbf16_ps(acc2, AsBf16(_mm512_loadu_si512(x + i + 64)),
                            AsBf16(_mm512_loadu_si512(y + i + 64)));
    acc3 = _mm512_dpbf16_ps(acc3, AsBf16(_mm512_loadu_si512(x + i + 96)),
                            AsBf16(_mm512_loadu_si512(y + i + 96)));
  }
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_dpbf16_ps(acc0, AsBf16(_mm512_loadu_si512(x + i)),
                            AsBf16(_mm512_loadu_si512(y + i)));
  }
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (n - i)) - 1);
    acc1 = _mm512_dpbf16_ps(acc1, AsBf16(_mm512_maskz_loadu_epi16(m, x + i)),
                            AsBf16(_mm512_maskz_loadu_epi16(m, y + i)));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// 32 F16 values → 32 BF16 (each rounded to nearest even from its exact fp32
// value). Lanes come out as [16..31 | 0..15]; x and y use the same order, so
// the pairs of a dot product still match.
inline __m512bh F16x32ToBf16(const uint16_t* p) {
  const __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512 hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

inline __m512bh F16x32ToBf16Masked(const uint16_t* p, int64_t count) {
  const __mmask16 m_lo = static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1);
  const __mmask16 m_hi =
      static_cast<__mmask16>(count <= 16 ? 0 : count >= 32 ? 0xffff : (1u << (count - 16)) - 1);
  const __m512 lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m_lo, p));
  const __m512 hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m_hi, p + 16));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// Σ x[i]·y[i] over F16 x (weights) and y (activations, ggml's F16
// vec_dot_type), both rounded to BF16 first.
float DotF16ViaBf16(int64_t n, const void* vx, const void* vy) {
  const uint16_t* x = static_cast<const uint16_t*>(vx);
  const uint16_t* y = static_cast<const uint16_t*>(vy);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_dpbf16_ps(acc0, F16x32ToBf16(x + i), F16x32ToBf16(y + i));
    acc1 = _mm512_dpbf16_ps(acc1, F16x32ToBf16(x + i + 32), F16x32ToBf16(y + i + 32));
  }
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_dpbf16_ps(acc0, F16x32ToBf16(x + i), F16x32ToBf16(y + i));
  }
  if (i < n) {
    acc1 = _mm512_dpbf16_ps(acc1, F16x32ToBf16Masked(x + i, n - i),
                            F16x32ToBf16Masked(y + i, n - i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

}  // namespace

const Bf16VecDots& Avx512Bf16VecDots() {
  static const Bf16VecDots table{DotBf16, DotF16ViaBf16};
  return table;
}

}  // namespace moeflow
