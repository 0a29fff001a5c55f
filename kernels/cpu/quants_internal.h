// Internal to kernels/cpu/quants: the float helpers every format file shares
// (ggml's nearest_int, fp16 <-> fp32) and the per-format row converters that
// quants.cc dispatches to. The format files are compiled like quants.cc
// (-O3 -ffp-contract=off, no ISA flags), so these inline helpers are the same
// code everywhere. Pure functions; no failure modes (quants.cc checks types
// and counts before calling).
#ifndef MOEFLOW_KERNELS_CPU_QUANTS_INTERNAL_H_
#define MOEFLOW_KERNELS_CPU_QUANTS_INTERNAL_H_

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "formats/quant_blocks.h"

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

// ggml's shared scale searches (quants_search.cc), operation for operation.
// make_qx_quants with rmse_type 1: symmetric levels -nmax..nmax-1 (L holds
// l + nmax), weights `qw` or x² when null; returns the scale.
float MakeQxQuants(int n, int nmax, const float* x, int8_t* L, const float* qw);
// make_qkx3_quants (use_mad false): levels 0..nmax with a min, weights or x²
// when null; *the_min = -min; returns the scale.
float MakeQkx3Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep);
// make_qp_quants: levels 0..nmax for non-negative x, importance-weighted.
float MakeQpQuants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights);
// best_index_int8: index of the entry of the ascending `values` nearest x.
int BestIndexInt8(int n, const int8_t* values, float x);

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

// The shared tails of the K-quant quantizers (quants_k.cc), for the
// importance-weighted ones (quants_k_weighted.cc): requantize against the
// stored scales and pack.
void FinishQ2_K(const float* x, uint8_t* L, BlockQ2_K* b);
void FinishQ3_K(const float* x, int8_t* L, BlockQ3_K* b);
void PackScalesK4(const uint8_t* ls, const uint8_t* lm, uint8_t* packed);
void RequantizeK4(const float* x, int nmax, const uint8_t* packed, uint16_t d16, uint16_t dmin16,
                  uint8_t* L);
void PackQ4_K(const uint8_t* L, BlockQ4_K* b);
void PackQ5_K(const uint8_t* L, BlockQ5_K* b);
// One Q6_K block; qw: its 256 importance weights or null.
void QuantizeQ6_KBlock(const float* x, const float* qw, BlockQ6_K* b);
// quants_k_weighted.cc: ggml's quantize_row_q*_K_impl (importance given).
void QuantizeRowQ2_KWeighted(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowQ3_KWeighted(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowQ4_KWeighted(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowQ5_KWeighted(const float* src, void* dst, int64_t n, const float* importance);

// An IQ grid as ggml's IQ quantizers search it (quants_iq_tables.cc): each
// entry's values as positions 2 l + 1 (l the level index), a map from a
// packed level code (`bits` per value) to its entry, or for codes off the
// grid to their neighbour list (count, then entries, nearest first).
struct IqSearchGrid {
  int width = 8;  // values per entry
  int bits = 2;   // bits per value in a code
  std::vector<std::array<int8_t, 8>> pos;
  std::vector<int32_t> map;
  std::vector<uint16_t> neighbours;
  // The entry of `code`, or -1 when it is off the grid.
  int Entry(uint32_t code) const { return map[code] >= 0 ? map[code] : -1; }
  const uint16_t* NeighboursOf(uint32_t code) const { return neighbours.data() - map[code] - 1; }
};
enum class IqGridId { kIq2Xxs, kIq2Xs, kIq2S, kIq1S, kIq3Xxs, kIq3S };
const IqSearchGrid& SearchGrid(IqGridId id);

// |x| of 8 values into xval, their sign bits returned (bit i: x_i < 0); with
// `even`, an odd number of negatives is made even by flipping the value of
// least w·x² (the IQ2_XXS / IQ2_XS / IQ3_XXS sign indices hold 7 bits and
// the parity). quants_iq_tables.cc.
uint8_t SplitSigns8(const float* xb, const float* weight, bool even, float* xval);

// factor · Σ x² / 256 over a super-block, in ggml's order (the σ² of the
// IQ1-IQ3 weights: factor 2, or 1 for IQ2_XXS / IQ2_XS).
inline float SuperBlockSigma2(const float* x, float factor) {
  float sumx2 = 0.0f;
  for (int i = 0; i < kQK_K; ++i) sumx2 += x[i] * x[i];
  return factor * sumx2 / static_cast<float>(kQK_K);
}

// A 4-bit IQ sub-block scale: nearest (id · scale - 1) / 2 within 0..15.
inline int IqScaleCode4(float id, float scale) {
  const int l = NearestInt(0.5f * (id * scale - 1.0f));
  return l < 0 ? 0 : l > 15 ? 15 : l;
}

// Runs fn(x, importance or null, block) over the super-blocks of a row.
template <typename Block, void (*fn)(const float*, const float*, Block*)>
void QuantizeSuperBlocks(const float* src, void* dst, int64_t n, const float* importance) {
  Block* blocks = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    fn(src + i * kQK_K, importance != nullptr ? importance + i * kQK_K : nullptr, &blocks[i]);
  }
}

// The IQ quantizers (quants_iq1.cc, quants_iq2.cc, quants_iq3.cc,
// quants_iq4.cc). IQ1_S, IQ2_XXS and IQ2_XS require `importance` (ggml
// refuses them without); quants.cc passes 1 per value when it has none.
void QuantizeRowIQ2_XXS(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ2_XS(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ2_S(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ3_XXS(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ3_S(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ1_S(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ1_M(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ4_NL(const float* src, void* dst, int64_t n, const float* importance);
void QuantizeRowIQ4_XS(const float* src, void* dst, int64_t n, const float* importance);

// quants_iq_dequant.cc.
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
