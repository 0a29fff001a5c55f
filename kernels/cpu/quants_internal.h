// Internal to kernels/cpu/quants: the float helpers every format file shares
// (ggml's nearest_int, fp16 <-> fp32) and the per-format row converters that
// quants.cc dispatches to. The format files are compiled like quants.cc
// (-O3 -ffp-contract=off, no ISA flags), so these inline helpers are the same
// code everywhere. Pure functions; no failure modes (quants.cc checks types
// and counts before calling).
#ifndef MOEFLOW_KERNELS_CPU_QUANTS_INTERNAL_H_
#define MOEFLOW_KERNELS_CPU_QUANTS_INTERNAL_H_

#include <cstdint>
#include <cstring>

namespace moeflow {
namespace quants_internal {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Round to nearest, ties to even, for |f| <= 2^22 - 1: adding 1.5 * 2^23
// moves f into the binade where one ulp is 1, so the FPU's rounding does the
// work and the integer is read back from the mantissa. ggml's nearest_int;
// kept literally (not lrintf) so out-of-range inputs wrap exactly as ggml's.
inline int NearestInt(float f) {
  const float biased = f + 12582912.0f;
  return static_cast<int>(FloatBits(biased) & 0x007fffffu) - 0x00400000;
}

// IEEE half -> float, branch-free so that loops over it vectorize. Exact: a
// normal half only needs its exponent rebiased (+112); a subnormal one is
// rebuilt as (1.m * 2^-14) - 2^-14 = m * 2^-24; Inf/NaN keep their payload
// and a NaN becomes quiet, as the x86 conversion (and ggml's) does.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = h & 0x7c00u;
  const uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t normal = em + (112u << 23);
  const uint32_t inf_nan = (em + (224u << 23)) | ((h & 0x03ffu) != 0 ? 0x00400000u : 0u);
  const uint32_t subnormal = FloatBits(BitsFloat(em + (113u << 23)) - BitsFloat(113u << 23));
  // Selected with masks, not branches, so the loops over it vectorize.
  const uint32_t is_sub = 0u - static_cast<uint32_t>(exp == 0);
  const uint32_t is_inf_nan = 0u - static_cast<uint32_t>(exp == 0x7c00u);
  const uint32_t is_normal = ~(is_sub | is_inf_nan);
  return BitsFloat(sign | (subnormal & is_sub) | (inf_nan & is_inf_nan) | (normal & is_normal));
}

// ggml's GROUP_MAX_EPS: a group whose largest magnitude is below this is zero.
constexpr float kGroupMaxEps = 1e-15f;

// Q3_K's sixteen 6-bit scales, unbiased: low nibbles in bytes 0-7 (scale j in
// the low nibble of byte j for j < 8, the high nibble of byte j - 8 after),
// high bit pairs in bytes 8-11.
inline int Q3KScale(const uint8_t* scales, int j) {
  const int low = j < 8 ? scales[j] & 0x0f : scales[j - 8] >> 4;
  const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K: j < 4 in the
// low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with
// their top 2 bits in the top bits of bytes j - 4 (scale) and j (min).
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// float -> IEEE half, round to nearest even (quants.cc; = Fp32ToFp16).
uint16_t FloatToHalf(float f);

// The value of largest magnitude (the first one on ties), signed.
float SignedAbsMax(const float* x, int n);

// Row converters: n elements (a multiple of the block size) of blocks at
// `src` -> floats, and floats -> blocks. `importance` is null (ggml's
// quantize without an importance matrix) or n weights, one per element
// (ggml's quant_weights of the row, repeated for each row).
#define MOEFLOW_QUANT_ROW_FUNCTIONS(T)                           \
  void DequantizeRow##T(const void* src, float* dst, int64_t n); \
  void QuantizeRow##T(const float* src, void* dst, int64_t n, const float* importance);

// quants_legacy.cc
MOEFLOW_QUANT_ROW_FUNCTIONS(Q4_0)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q4_1)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q5_0)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q5_1)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q8_0)
// quants_k.cc
MOEFLOW_QUANT_ROW_FUNCTIONS(Q2_K)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q3_K)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q4_K)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q5_K)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q6_K)
MOEFLOW_QUANT_ROW_FUNCTIONS(Q8_K)
#undef MOEFLOW_QUANT_ROW_FUNCTIONS

// quants_iq_dequant.cc (the quantizers live in quants_iq*.cc).
void DequantizeRowIQ2_XXS(const void* src, float* dst, int64_t n);
void DequantizeRowIQ2_XS(const void* src, float* dst, int64_t n);
void DequantizeRowIQ2_S(const void* src, float* dst, int64_t n);
void DequantizeRowIQ3_XXS(const void* src, float* dst, int64_t n);
void DequantizeRowIQ3_S(const void* src, float* dst, int64_t n);
void DequantizeRowIQ1_S(const void* src, float* dst, int64_t n);
void DequantizeRowIQ1_M(const void* src, float* dst, int64_t n);
void DequantizeRowIQ4_NL(const void* src, float* dst, int64_t n);
void DequantizeRowIQ4_XS(const void* src, float* dst, int64_t n);

}  // namespace quants_internal
}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_QUANTS_INTERNAL_H_
