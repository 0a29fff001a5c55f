#include "kernels/cpu/quants.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "formats/quant_blocks.h"

// Bit-exactness with ggml depends on the order of every float operation: the
// expressions below keep ggml's association (e.g. `(w * x) * l`), and the
// BUILD file compiles this file with -ffp-contract=off so no multiply-add is
// fused (ggml-base, where ggml's reference kernels live, is built without FMA).

namespace moeflow {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
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

// The 16 non-uniform levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl).
constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

// ---------------------------------------------------------------------------
// Dequantization.

void DequantizeF16(const uint16_t* __restrict h, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = HalfToFloat(h[i]);
}

void DequantizeBf16(const uint16_t* __restrict h, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = BitsFloat(static_cast<uint32_t>(h[i]) << 16);
}

// The legacy formats copy their 16 quant bytes to the stack first: the
// output then cannot alias them, and the 16-iteration loops vectorize.
void DequantizeQ4_0(const BlockQ4_0& b, float* __restrict y) {
  const float d = HalfToFloat(b.d);
  uint8_t qs[kQK / 2];
  std::memcpy(qs, b.qs, sizeof(qs));
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void DequantizeQ4_1(const BlockQ4_1& b, float* __restrict y) {
  const float d = HalfToFloat(b.d);
  const float m = HalfToFloat(b.m);
  uint8_t qs[kQK / 2];
  std::memcpy(qs, b.qs, sizeof(qs));
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// 1 << j for the fifth bits of Q5_0 / Q5_1: a mask load instead of a shift by
// a varying count, which SSE2 lacks, lets their loops vectorize.
constexpr uint32_t kBit[32] = {1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,
                               1u << 7,  1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13,
                               1u << 14, 1u << 15, 1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20,
                               1u << 21, 1u << 22, 1u << 23, 1u << 24, 1u << 25, 1u << 26, 1u << 27,
                               1u << 28, 1u << 29, 1u << 30, 1u << 31};

void DequantizeQ5_0(const BlockQ5_0& b, float* __restrict y) {
  const float d = HalfToFloat(b.d);
  const uint32_t qh = LoadU32(b.qh);
  uint8_t qs[kQK / 2];
  std::memcpy(qs, b.qs, sizeof(qs));
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = ((qs[j] & 0x0f) | ((qh & kBit[j]) != 0 ? 16 : 0)) - 16;
    const int hi = ((qs[j] >> 4) | ((qh & kBit[j + 16]) != 0 ? 16 : 0)) - 16;
    y[j] = static_cast<float>(lo) * d;
    y[j + kQK / 2] = static_cast<float>(hi) * d;
  }
}

void DequantizeQ5_1(const BlockQ5_1& b, float* __restrict y) {
  const float d = HalfToFloat(b.d);
  const float m = HalfToFloat(b.m);
  const uint32_t qh = LoadU32(b.qh);
  uint8_t qs[kQK / 2];
  std::memcpy(qs, b.qs, sizeof(qs));
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0x0f) | ((qh & kBit[j]) != 0 ? 16 : 0);
    const int hi = (qs[j] >> 4) | ((qh & kBit[j + 16]) != 0 ? 16 : 0);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + kQK / 2] = static_cast<float>(hi) * d + m;
  }
}

void DequantizeQ8_0(const BlockQ8_0& b, float* y) {
  const float d = HalfToFloat(b.d);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
}

void DequantizeQ2_K(const BlockQ2_K& b, float* y) {
  const float d = HalfToFloat(b.d);
  const float dmin = HalfToFloat(b.dmin);
  // Two halves of 128; in each, four bit planes of 32 elements, each plane
  // two sub-blocks of 16 with their own 4-bit scale and min.
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int plane = 0; plane < 4; ++plane) {
      const int shift = 2 * plane;
      for (int sub = 0; sub < 2; ++sub) {
        const uint8_t sc = b.scales[8 * half + 2 * plane + sub];
        const float dl = d * static_cast<float>(sc & 0x0f);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = 16 * sub; l < 16 * sub + 16; ++l) {
          *y++ = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

// Q3_K's sixteen 6-bit scales, unbiased: low nibbles in bytes 0-7 (scale j in
// the low nibble of byte j for j < 8, the high nibble of byte j - 8 after),
// high bit pairs in bytes 8-11.
int Q3KScale(const uint8_t* scales, int j) {
  const int low = j < 8 ? scales[j] & 0x0f : scales[j - 8] >> 4;
  const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

void DequantizeQ3_K(const BlockQ3_K& b, float* y) {
  const float d_all = HalfToFloat(b.d);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int plane = 0; plane < 4; ++plane) {
      const int shift = 2 * plane;
      const uint8_t hbit = static_cast<uint8_t>(1u << (4 * half + plane));
      for (int sub = 0; sub < 2; ++sub) {
        const float dl = d_all * static_cast<float>(Q3KScale(b.scales, 8 * half + 2 * plane + sub));
        for (int l = 16 * sub; l < 16 * sub + 16; ++l) {
          const int v = ((q[l] >> shift) & 3) - ((b.hmask[l] & hbit) ? 0 : 4);
          *y++ = dl * static_cast<float>(v);
        }
      }
    }
  }
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K: j < 4 in the
// low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with
// their top 2 bits in the top bits of bytes j - 4 (scale) and j (min).
void ScaleMinK4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void DequantizeQ4_K(const BlockQ4_K& b, float* y) {
  const float d = HalfToFloat(b.d);
  const float dmin = HalfToFloat(b.dmin);
  const uint8_t* q = b.qs;
  for (int chunk = 0; chunk < 4; ++chunk) {
    uint8_t sc, m;
    ScaleMinK4(2 * chunk, b.scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(2 * chunk + 1, b.scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
  }
}

void DequantizeQ5_K(const BlockQ5_K& b, float* y) {
  const float d = HalfToFloat(b.d);
  const float dmin = HalfToFloat(b.dmin);
  const uint8_t* ql = b.qs;
  for (int chunk = 0; chunk < 4; ++chunk) {
    uint8_t sc, m;
    ScaleMinK4(2 * chunk, b.scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(2 * chunk + 1, b.scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    const uint8_t bit1 = static_cast<uint8_t>(1u << (2 * chunk));
    const uint8_t bit2 = static_cast<uint8_t>(2u << (2 * chunk));
    for (int l = 0; l < 32; ++l) {
      const int v = (ql[l] & 0x0f) + ((b.qh[l] & bit1) ? 16 : 0);
      *y++ = d1 * static_cast<float>(v) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int v = (ql[l] >> 4) + ((b.qh[l] & bit2) ? 16 : 0);
      *y++ = d2 * static_cast<float>(v) - m2;
    }
    ql += 32;
  }
}

void DequantizeQ6_K(const BlockQ6_K& b, float* y) {
  const float d = HalfToFloat(b.d);
  // Element 128h + 32k + l (k = 0..3, l = 0..31): low 4 bits from ql[64h + l]
  // (k = 0, 2: low / high nibble) or ql[64h + 32 + l] (k = 1, 3), high 2 bits
  // from bits 2k of qh[32h + l], scale sc[8h + 2k + l / 16].
  for (int half = 0; half < 2; ++half) {
    const uint8_t* qh = b.qh + 32 * half;
    for (int k = 0; k < 4; ++k) {
      const uint8_t* ql = b.ql + 64 * half + 32 * (k & 1);
      const int nibble_shift = 4 * (k >> 1);
      for (int s = 0; s < 2; ++s) {
        // ggml computes d * sc * q left to right; d * sc is hoisted unchanged.
        const float dl = d * static_cast<float>(b.scales[8 * half + 2 * k + s]);
        float* out = y + 128 * half + 32 * k + 16 * s;
        for (int l = 16 * s; l < 16 * s + 16; ++l) {
          const int q = (((ql[l] >> nibble_shift) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
          out[l - 16 * s] = dl * static_cast<float>(q);
        }
      }
    }
  }
}

void DequantizeQ8_K(const BlockQ8_K& b, float* y) {
  for (int j = 0; j < kQK_K; ++j) y[j] = b.d * static_cast<float>(b.qs[j]);
}

void DequantizeIQ4_XS(const BlockIQ4_XS& b, float* y) {
  const float d = HalfToFloat(b.d);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const int ls =
        ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f) | (((b.scales_h >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    const uint8_t* qs = b.qs + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * static_cast<float>(kIq4nlValues[qs[j] & 0x0f]);
      y[j + 16] = dl * static_cast<float>(kIq4nlValues[qs[j] >> 4]);
    }
    y += 32;
  }
}

// ---------------------------------------------------------------------------
// Quantization of the legacy 32-element formats (ggml's quantize_row_*_ref).

// The value of largest magnitude (the first one on ties), signed.
float SignedAbsMax(const float* x, int n) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void MinMax(const float* x, int n, float* min, float* max) {
  *min = FLT_MAX;
  *max = -FLT_MAX;
  for (int j = 0; j < n; ++j) {
    if (x[j] < *min) *min = x[j];
    if (x[j] > *max) *max = x[j];
  }
}

void QuantizeQ4_0(const float* x, BlockQ4_0* b) {
  const float max = SignedAbsMax(x, kQK);
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = Fp32ToFp16(d);
  for (int j = 0; j < kQK / 2; ++j) {
    // Truncation after +8.5 rounds half up; the max maps to -8 exactly.
    const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
    const int hi = std::min(15, static_cast<int>(x[j + kQK / 2] * id + 8.5f));
    b->qs[j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void QuantizeQ4_1(const float* x, BlockQ4_1* b) {
  float min, max;
  MinMax(x, kQK, &min, &max);
  const float d = (max - min) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = Fp32ToFp16(d);
  b->m = Fp32ToFp16(min);
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = std::min(15, static_cast<int>((x[j] - min) * id + 0.5f));
    const int hi = std::min(15, static_cast<int>((x[j + kQK / 2] - min) * id + 0.5f));
    b->qs[j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void QuantizeQ5_0(const float* x, BlockQ5_0* b) {
  const float max = SignedAbsMax(x, kQK);
  const float d = max / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = Fp32ToFp16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = std::min(31, static_cast<int>(x[j] * id + 16.5f));
    const int hi = std::min(31, static_cast<int>(x[j + kQK / 2] * id + 16.5f));
    b->qs[j] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
    qh |= static_cast<uint32_t>(lo >> 4) << j;
    qh |= static_cast<uint32_t>(hi >> 4) << (j + kQK / 2);
  }
  std::memcpy(b->qh, &qh, sizeof(qh));
}

void QuantizeQ5_1(const float* x, BlockQ5_1* b) {
  float min, max;
  MinMax(x, kQK, &min, &max);
  const float d = (max - min) / 31.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = Fp32ToFp16(d);
  b->m = Fp32ToFp16(min);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    // ggml clamps nothing here: (max - min) * id + 0.5 stays below 32.
    const uint8_t lo = static_cast<uint8_t>(static_cast<int>((x[j] - min) * id + 0.5f));
    const uint8_t hi = static_cast<uint8_t>(static_cast<int>((x[j + kQK / 2] - min) * id + 0.5f));
    b->qs[j] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
    qh |= static_cast<uint32_t>((lo & 0x10) >> 4) << j;
    qh |= static_cast<uint32_t>((hi & 0x10) >> 4) << (j + kQK / 2);
  }
  std::memcpy(b->qh, &qh, sizeof(qh));
}

void QuantizeQ8_0(const float* x, BlockQ8_0* b) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = Fp32ToFp16(d);
  // roundf: halves away from zero (not nearest-even as the K-quants).
  for (int j = 0; j < kQK; ++j) b->qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
}

// ---------------------------------------------------------------------------
// K-quant helpers: ggml's scale searches (make_qx_quants, make_q3_quants,
// make_qkx2_quants), reproduced operation for operation.

// Symmetric levels -nmax..nmax-1 for n values with weights x^2 (ggml's
// make_qx_quants with rmse_type 1 and no importance weights, as Q6_K uses):
// starts from the scale that maps the extreme value to -nmax, then tries 18
// nearby scales and keeps the one with the best weighted least-squares fit.
// Writes L[i] + nmax into L; returns the scale.
float MakeQxQuants(int n, int nmax, const float* x, int8_t* L) {
  const float max = SignedAbsMax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const float fnmax = static_cast<float>(nmax);
  float iscale = -fnmax / max;
  float sumlx = 0.0f;
  float suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, NearestInt(iscale * x[i])));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sumlx = 0.0f;
    suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, NearestInt(iscale * x[i])));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * static_cast<float>(l);
      suml2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = std::max(-nmax, std::min(nmax - 1, NearestInt(iscale * x[i])));
        L[i] = static_cast<int8_t>(l + nmax);
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's search (ggml's make_q3_quants with do_rmse): start at the scale that
// maps the extreme to -nmax, then up to 5 rounds of coordinate descent moving
// single levels while the x^2-weighted fit improves. Writes L[i] + nmax.
float MakeQ3Quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = SignedAbsMax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const float iscale = -static_cast<float>(nmax) / max;
  float sumlx = 0.0f;
  float suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, NearestInt(iscale * x[i])));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int round = 0; round < 5; ++round) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * static_cast<float>(L[i]);
      if (slx > 0.0f) {
        float sl2 = suml2 - w * static_cast<float>(L[i]) * static_cast<float>(L[i]);
        int new_l = NearestInt(x[i] * sl2 / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          slx += w * x[i] * static_cast<float>(new_l);
          sl2 += w * static_cast<float>(new_l) * static_cast<float>(new_l);
          if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (n_changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric levels 0..nmax with an offset (ggml's make_qkx2_quants): x ~
// scale * L - the_min. Starts from the min/max fit, then tries nstep + 1
// scales (rmin + rdelta * is + nmax) / (max - min), solving the weighted least
// squares for scale and min at each, and keeps the lowest weighted error
// (|diff| if use_mad, else diff^2). Returns the scale; *the_min >= 0.
float MakeQkx2Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                     bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    std::fill(L, L + n, 0);
    *the_min = -min;
    return 0.0f;
  }
  const float fnmax = static_cast<float>(nmax);
  float iscale = fnmax / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = NearestInt(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + fnmax) / (max - min);
    float sum_l = 0.0f;
    float sum_l2 = 0.0f;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, NearestInt(iscale * (x[i] - min))));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const float fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0.0f) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0.0f) {
        this_min = 0.0f;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0.0f;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Packs 256 2-bit values: in each half of 128, byte l holds elements l,
// l + 32, l + 64, l + 96 from the low bits up.
void Pack2Bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
    }
  }
}

void QuantizeQ2_K(const float* x, BlockQ2_K* b) {
  constexpr float kQ4Scale = 15.0f;
  uint8_t L[kQK_K];
  uint8_t Laux[16];
  float weights[16];
  float mins[kQK_K / 16];
  float scales[kQK_K / 16];
  float max_scale = 0.0f;  // scales are positive since the min is deducted
  float max_min = 0.0f;
  for (int j = 0; j < kQK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = MakeQkx2Quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f,
                               15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0.0f) {
    const float iscale = kQ4Scale / max_scale;
    for (int j = 0; j < kQK_K / 16; ++j) {
      b->scales[j] = static_cast<uint8_t>(NearestInt(iscale * scales[j]));
    }
    b->d = Fp32ToFp16(max_scale / kQ4Scale);
  } else {
    std::fill(b->scales, b->scales + kQK_K / 16, 0);
    b->d = Fp32ToFp16(0.0f);
  }
  if (max_min > 0.0f) {
    const float iscale = kQ4Scale / max_min;
    for (int j = 0; j < kQK_K / 16; ++j) {
      b->scales[j] |= static_cast<uint8_t>(NearestInt(iscale * mins[j]) << 4);
    }
    b->dmin = Fp32ToFp16(max_min / kQ4Scale);
  } else {
    b->dmin = Fp32ToFp16(0.0f);
  }
  // Requantize against the scales as stored.
  for (int j = 0; j < kQK_K / 16; ++j) {
    const float d = HalfToFloat(b->d) * static_cast<float>(b->scales[j] & 0x0f);
    if (d == 0.0f) continue;
    const float dm = HalfToFloat(b->dmin) * static_cast<float>(b->scales[j] >> 4);
    for (int ii = 0; ii < 16; ++ii) {
      const int l = NearestInt((x[16 * j + ii] + dm) / d);
      L[16 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  Pack2Bit(L, b->qs);
}

void QuantizeQ3_K(const float* x, BlockQ3_K* b) {
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  float max_scale = 0.0f;  // signed: the scale of largest magnitude
  float amax = 0.0f;
  for (int j = 0; j < kQK_K / 16; ++j) {
    scales[j] = MakeQ3Quants(16, 4, x + 16 * j, L + 16 * j);
    const float scale = std::fabs(scales[j]);
    if (scale > amax) {
      amax = scale;
      max_scale = scales[j];
    }
  }
  std::memset(b->scales, 0, kKScaleSize);
  if (max_scale != 0.0f) {
    const float iscale = -32.0f / max_scale;
    for (int j = 0; j < kQK_K / 16; ++j) {
      // ggml narrows to int8_t before clamping; the product stays in [-32, 32].
      int8_t l = static_cast<int8_t>(NearestInt(iscale * scales[j]));
      l = static_cast<int8_t>(std::max<int>(-32, std::min<int>(31, l)) + 32);
      if (j < 8) {
        b->scales[j] = static_cast<uint8_t>(l & 0x0f);
      } else {
        b->scales[j - 8] |= static_cast<uint8_t>((l & 0x0f) << 4);
      }
      l = static_cast<int8_t>(l >> 4);
      b->scales[j % 4 + 8] |= static_cast<uint8_t>(l << (2 * (j / 4)));
    }
    b->d = Fp32ToFp16(1.0f / iscale);
  } else {
    b->d = Fp32ToFp16(0.0f);
  }
  for (int j = 0; j < kQK_K / 16; ++j) {
    const float d = HalfToFloat(b->d) * static_cast<float>(Q3KScale(b->scales, j));
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = NearestInt(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>(std::max(-4, std::min(3, l)) + 4);
    }
  }
  // High bit of element e goes to bit e / 32 of hmask[e % 32].
  std::memset(b->hmask, 0, kQK_K / 8);
  uint8_t low[kQK_K];
  for (int e = 0; e < kQK_K; ++e) {
    int v = L[e];
    if (v > 3) {
      b->hmask[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
      v -= 4;
    }
    low[e] = static_cast<uint8_t>(v);
  }
  Pack2Bit(low, b->qs);
}

// Q4_K and Q5_K share the scale search and the 6-bit scale packing; they
// differ in the level count and the search parameters.
void QuantizeScalesK4(const float* x, int nmax, float rmin, int nstep, uint8_t* L,
                      uint8_t* packed_scales, uint16_t* d_out, uint16_t* dmin_out) {
  uint8_t Laux[32];
  float weights[32];
  float mins[kQK_K / 32];
  float scales[kQK_K / 32];
  float max_scale = 0.0f;
  float max_min = 0.0f;
  for (int j = 0; j < kQK_K / 32; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] =
        MakeQkx2Quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < kQK_K / 32; ++j) {
    // Narrowed to uint8_t before the clamp, as ggml does.
    const uint8_t ls =
        std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
    if (j < 4) {
      packed_scales[j] = ls;
      packed_scales[j + 4] = lm;
    } else {
      packed_scales[j + 4] = static_cast<uint8_t>((ls & 0x0f) | ((lm & 0x0f) << 4));
      packed_scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      packed_scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  *d_out = Fp32ToFp16(max_scale / 63.0f);
  *dmin_out = Fp32ToFp16(max_min / 63.0f);
  // Requantize against the scales as stored.
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    ScaleMinK4(j, packed_scales, &sc, &m);
    const float d = HalfToFloat(*d_out) * static_cast<float>(sc);
    if (d == 0.0f) continue;
    const float dm = HalfToFloat(*dmin_out) * static_cast<float>(m);
    for (int ii = 0; ii < 32; ++ii) {
      const int l = NearestInt((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

void QuantizeQ4_K(const float* x, BlockQ4_K* b) {
  uint8_t L[kQK_K];
  uint8_t scales[kKScaleSize];
  uint16_t d, dmin;
  QuantizeScalesK4(x, 15, -1.0f, 20, L, scales, &d, &dmin);
  b->d = d;
  b->dmin = dmin;
  std::memcpy(b->scales, scales, kKScaleSize);
  uint8_t* q = b->qs;
  for (int j = 0; j < kQK_K; j += 64) {
    for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    q += 32;
  }
}

void QuantizeQ5_K(const float* x, BlockQ5_K* b) {
  uint8_t L[kQK_K];
  uint8_t scales[kKScaleSize];
  uint16_t d, dmin;
  QuantizeScalesK4(x, 31, -0.5f, 15, L, scales, &d, &dmin);
  b->d = d;
  b->dmin = dmin;
  std::memcpy(b->scales, scales, kKScaleSize);
  std::memset(b->qh, 0, kQK_K / 8);
  uint8_t* ql = b->qs;
  for (int chunk = 0; chunk < 4; ++chunk) {
    const int n = 64 * chunk;
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j];
      if (l1 > 15) {
        l1 -= 16;
        b->qh[j] |= static_cast<uint8_t>(1u << (2 * chunk));
      }
      int l2 = L[n + j + 32];
      if (l2 > 15) {
        l2 -= 16;
        b->qh[j] |= static_cast<uint8_t>(2u << (2 * chunk));
      }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    ql += 32;
  }
}

void QuantizeQ6_K(const float* x, BlockQ6_K* b) {
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  float max_scale = 0.0f;
  float max_abs_scale = 0.0f;
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    scales[ib] = MakeQxQuants(16, 32, x + 16 * ib, L + 16 * ib);
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(b, 0, sizeof(*b));
    return;
  }
  const float iscale = -128.0f / max_scale;
  b->d = Fp32ToFp16(1.0f / iscale);
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    b->scales[ib] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[ib])));
  }
  for (int j = 0; j < kQK_K / 16; ++j) {
    const float d = HalfToFloat(b->d) * static_cast<float>(b->scales[j]);
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = NearestInt(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
    }
  }
  uint8_t* ql = b->ql;
  uint8_t* qh = b->qh;
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = L[j + l] & 0x0f;
      const uint8_t q2 = L[j + l + 32] & 0x0f;
      const uint8_t q3 = L[j + l + 64] & 0x0f;
      const uint8_t q4 = L[j + l + 96] & 0x0f;
      ql[l] = static_cast<uint8_t>(q1 | (q3 << 4));
      ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
      qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                   ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

void QuantizeQ8_K(const float* x, BlockQ8_K* b) {
  const float max = SignedAbsMax(x, kQK_K);
  if (max == 0.0f) {
    // ggml leaves bsums untouched here; zero them so output is deterministic.
    std::memset(b, 0, sizeof(*b));
    return;
  }
  // -127 (not -128) so that the SIMD dot products never see -128.
  const float iscale = -127.0f / max;
  for (int j = 0; j < kQK_K; ++j) {
    b->qs[j] = static_cast<int8_t>(std::min(127, NearestInt(iscale * x[j])));
  }
  for (int g = 0; g < kQK_K / 16; ++g) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += b->qs[16 * g + i];
    b->bsums[g] = static_cast<int16_t>(sum);
  }
  b->d = 1.0f / iscale;
}

// ---------------------------------------------------------------------------
// Dispatch.

// `fn` is a template argument so that the per-block kernel inlines.
template <typename Block, void (*fn)(const Block&, float*)>
void DequantizeBlocks(const void* src, float* dst, int64_t n, int block_size) {
  const Block* blocks = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / block_size; ++i) fn(blocks[i], dst + i * block_size);
}

template <typename Block, void (*fn)(const float*, Block*)>
void QuantizeBlocks(const float* src, void* dst, int64_t n, int block_size) {
  Block* blocks = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / block_size; ++i) fn(src + i * block_size, &blocks[i]);
}

absl::Status CheckCount(GgmlType type, int64_t n, bool supported, const char* what) {
  const GgmlTypeTraits& t = Traits(type);
  if (!supported) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ggml type ", t.name, " is not supported"));
  }
  if (n < 0 || n % t.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", n, " elements of ", t.name,
                                                   ": not a multiple of the block size ",
                                                   t.block_size));
  }
  return absl::OkStatus();
}

}  // namespace

float Fp16ToFp32(uint16_t h) { return HalfToFloat(h); }

uint16_t Fp32ToFp16(float f) {
  const uint32_t w = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((w >> 16) & 0x8000u);
  uint32_t a = w & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;     // every NaN -> the canonical quiet NaN
  if (a >= 0x38800000u) {                         // |f| >= 2^-14: a normal half (or overflow)
    a += 0x0fffu + ((a >> 13) & 1u);              // round to nearest even at bit 13
    if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 65520 (or Inf) -> Inf
    return sign | static_cast<uint16_t>((a - (112u << 23)) >> 13);
  }
  // Subnormal half: adding 0.5 puts the value where one float ulp is 2^-24,
  // so the addition itself rounds to the half's grid (ties to even).
  const float rounded = BitsFloat(a) + 0.5f;
  return sign | static_cast<uint16_t>(FloatBits(rounded) - FloatBits(0.5f));
}

float Bf16ToFp32(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToBf16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

bool CanDequantize(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ8_K:
    case GgmlType::kIQ4_XS:
      return true;
    default:
      return false;
  }
}

bool CanQuantize(GgmlType type) { return CanDequantize(type) && type != GgmlType::kIQ4_XS; }

absl::Status Dequantize(GgmlType type, const void* src, float* dst, int64_t n) {
  MOEFLOW_RETURN_IF_ERROR(CheckCount(type, n, CanDequantize(type), "dequantizing"));
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case GgmlType::kF16:
      DequantizeF16(static_cast<const uint16_t*>(src), dst, n);
      break;
    case GgmlType::kBF16:
      DequantizeBf16(static_cast<const uint16_t*>(src), dst, n);
      break;
    case GgmlType::kQ4_0:
      DequantizeBlocks<BlockQ4_0, DequantizeQ4_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ4_1:
      DequantizeBlocks<BlockQ4_1, DequantizeQ4_1>(src, dst, n, kQK);
      break;
    case GgmlType::kQ5_0:
      DequantizeBlocks<BlockQ5_0, DequantizeQ5_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ5_1:
      DequantizeBlocks<BlockQ5_1, DequantizeQ5_1>(src, dst, n, kQK);
      break;
    case GgmlType::kQ8_0:
      DequantizeBlocks<BlockQ8_0, DequantizeQ8_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ2_K:
      DequantizeBlocks<BlockQ2_K, DequantizeQ2_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ3_K:
      DequantizeBlocks<BlockQ3_K, DequantizeQ3_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ4_K:
      DequantizeBlocks<BlockQ4_K, DequantizeQ4_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ5_K:
      DequantizeBlocks<BlockQ5_K, DequantizeQ5_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ6_K:
      DequantizeBlocks<BlockQ6_K, DequantizeQ6_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ8_K:
      DequantizeBlocks<BlockQ8_K, DequantizeQ8_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kIQ4_XS:
      DequantizeBlocks<BlockIQ4_XS, DequantizeIQ4_XS>(src, dst, n, kQK_K);
      break;
    default:
      MOEFLOW_CHECK(false && "CanDequantize and Dequantize disagree");
  }
  return absl::OkStatus();
}

absl::Status Quantize(GgmlType type, const float* src, void* dst, int64_t n) {
  MOEFLOW_RETURN_IF_ERROR(CheckCount(type, n, CanQuantize(type), "quantizing"));
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case GgmlType::kF16: {
      uint16_t* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToFp16(src[i]);
      break;
    }
    case GgmlType::kBF16: {
      uint16_t* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToBf16(src[i]);
      break;
    }
    case GgmlType::kQ4_0:
      QuantizeBlocks<BlockQ4_0, QuantizeQ4_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ4_1:
      QuantizeBlocks<BlockQ4_1, QuantizeQ4_1>(src, dst, n, kQK);
      break;
    case GgmlType::kQ5_0:
      QuantizeBlocks<BlockQ5_0, QuantizeQ5_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ5_1:
      QuantizeBlocks<BlockQ5_1, QuantizeQ5_1>(src, dst, n, kQK);
      break;
    case GgmlType::kQ8_0:
      QuantizeBlocks<BlockQ8_0, QuantizeQ8_0>(src, dst, n, kQK);
      break;
    case GgmlType::kQ2_K:
      QuantizeBlocks<BlockQ2_K, QuantizeQ2_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ3_K:
      QuantizeBlocks<BlockQ3_K, QuantizeQ3_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ4_K:
      QuantizeBlocks<BlockQ4_K, QuantizeQ4_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ5_K:
      QuantizeBlocks<BlockQ5_K, QuantizeQ5_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ6_K:
      QuantizeBlocks<BlockQ6_K, QuantizeQ6_K>(src, dst, n, kQK_K);
      break;
    case GgmlType::kQ8_K:
      QuantizeBlocks<BlockQ8_K, QuantizeQ8_K>(src, dst, n, kQK_K);
      break;
    default:
      MOEFLOW_CHECK(false && "CanQuantize and Quantize disagree");
  }
  return absl::OkStatus();
}

}  // namespace moeflow
