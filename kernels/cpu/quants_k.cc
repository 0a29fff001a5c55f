// Quantization to ggml's K-quants Q2_K ... Q6_K and the Q8_K activation
// blocks without an importance matrix (quantize_row_*_ref: ggml's scale
// searches make_qx_quants, make_q3_quants, make_qkx2_quants, operation for
// operation), byte for byte.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

// Bit-exactness with ggml depends on the order of every float operation: the
// expressions below keep ggml's association, and the BUILD file compiles
// this file with -ffp-contract=off so no multiply-add is fused (ggml-base,
// where ggml's reference kernels live, is built without FMA).

namespace moeflow {
namespace quants_internal {
namespace {

// ---------------------------------------------------------------------------
// K-quant helpers: ggml's scale searches (make_q3_quants, make_qkx2_quants),
// reproduced operation for operation; make_qx_quants is in quants_search.cc.

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

}  // namespace

void FinishQ2_K(const float* x, uint8_t* L, BlockQ2_K* b) {
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

void FinishQ3_K(const float* x, int8_t* L, BlockQ3_K* b) {
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

void PackScalesK4(const uint8_t* ls, const uint8_t* lm, uint8_t* packed) {
  for (int j = 0; j < kQK_K / 32; ++j) {
    if (j < 4) {
      packed[j] = ls[j];
      packed[j + 4] = lm[j];
    } else {
      packed[j + 4] = static_cast<uint8_t>((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
      packed[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      packed[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

void RequantizeK4(const float* x, int nmax, const uint8_t* packed, uint16_t d16, uint16_t dmin16,
                  uint8_t* L) {
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    ScaleMinK4(j, packed, &sc, &m);
    const float d = HalfToFloat(d16) * static_cast<float>(sc);
    if (d == 0.0f) continue;
    const float dm = HalfToFloat(dmin16) * static_cast<float>(m);
    for (int ii = 0; ii < 32; ++ii) {
      const int l = NearestInt((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

void PackQ4_K(const uint8_t* L, BlockQ4_K* b) {
  uint8_t* q = b->qs;
  for (int j = 0; j < kQK_K; j += 64) {
    for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    q += 32;
  }
}

void PackQ5_K(const uint8_t* L, BlockQ5_K* b) {
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

namespace {

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
    b->d = FloatToHalf(max_scale / kQ4Scale);
  } else {
    std::fill(b->scales, b->scales + kQK_K / 16, 0);
    b->d = FloatToHalf(0.0f);
  }
  if (max_min > 0.0f) {
    const float iscale = kQ4Scale / max_min;
    for (int j = 0; j < kQK_K / 16; ++j) {
      b->scales[j] |= static_cast<uint8_t>(NearestInt(iscale * mins[j]) << 4);
    }
    b->dmin = FloatToHalf(max_min / kQ4Scale);
  } else {
    b->dmin = FloatToHalf(0.0f);
  }
  FinishQ2_K(x, L, b);
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
    b->d = FloatToHalf(1.0f / iscale);
  } else {
    b->d = FloatToHalf(0.0f);
  }
  FinishQ3_K(x, L, b);
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
  uint8_t ls[kQK_K / 32], lm[kQK_K / 32];
  for (int j = 0; j < kQK_K / 32; ++j) {
    // Narrowed to uint8_t before the clamp, as ggml does.
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_scale * scales[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
  }
  PackScalesK4(ls, lm, packed_scales);
  *d_out = FloatToHalf(max_scale / 63.0f);
  *dmin_out = FloatToHalf(max_min / 63.0f);
  RequantizeK4(x, nmax, packed_scales, *d_out, *dmin_out, L);
}

void QuantizeQ4_K(const float* x, BlockQ4_K* b) {
  uint8_t L[kQK_K];
  uint8_t scales[kKScaleSize];
  uint16_t d, dmin;
  QuantizeScalesK4(x, 15, -1.0f, 20, L, scales, &d, &dmin);
  b->d = d;
  b->dmin = dmin;
  std::memcpy(b->scales, scales, kKScaleSize);
  PackQ4_K(L, b);
}

void QuantizeQ5_K(const float* x, BlockQ5_K* b) {
  uint8_t L[kQK_K];
  uint8_t scales[kKScaleSize];
  uint16_t d, dmin;
  QuantizeScalesK4(x, 31, -0.5f, 15, L, scales, &d, &dmin);
  b->d = d;
  b->dmin = dmin;
  std::memcpy(b->scales, scales, kKScaleSize);
  PackQ5_K(L, b);
}

}  // namespace

// ggml's quantize_row_q6_K_ref (qw null) or quantize_row_q6_K_impl: the
// importance goes straight into make_qx_quants.
void QuantizeQ6_KBlock(const float* x, const float* qw, BlockQ6_K* b) {
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  float max_scale = 0.0f;
  float max_abs_scale = 0.0f;
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    scales[ib] =
        MakeQxQuants(16, 32, x + 16 * ib, L + 16 * ib, qw != nullptr ? qw + 16 * ib : nullptr);
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
  b->d = FloatToHalf(1.0f / iscale);
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

namespace {

void QuantizeQ6_K(const float* x, BlockQ6_K* b) { QuantizeQ6_KBlock(x, nullptr, b); }

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

template <typename Block, void (*fn)(const float*, Block*), int kBlock>
void QuantizeBlocks(const float* src, void* dst, int64_t n) {
  Block* blocks = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kBlock; ++i) fn(src + i * kBlock, &blocks[i]);
}

}  // namespace

void QuantizeRowQ2_K(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeRowQ2_KWeighted(src, dst, n, importance);
  QuantizeBlocks<BlockQ2_K, QuantizeQ2_K, kQK_K>(src, dst, n);
}

void QuantizeRowQ3_K(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeRowQ3_KWeighted(src, dst, n, importance);
  QuantizeBlocks<BlockQ3_K, QuantizeQ3_K, kQK_K>(src, dst, n);
}

void QuantizeRowQ4_K(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeRowQ4_KWeighted(src, dst, n, importance);
  QuantizeBlocks<BlockQ4_K, QuantizeQ4_K, kQK_K>(src, dst, n);
}

void QuantizeRowQ5_K(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeRowQ5_KWeighted(src, dst, n, importance);
  QuantizeBlocks<BlockQ5_K, QuantizeQ5_K, kQK_K>(src, dst, n);
}

void QuantizeRowQ6_K(const float* src, void* dst, int64_t n, const float* importance) {
  BlockQ6_K* blocks = static_cast<BlockQ6_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    QuantizeQ6_KBlock(src + i * kQK_K, importance != nullptr ? importance + i * kQK_K : nullptr,
                      &blocks[i]);
  }
}

void QuantizeRowQ8_K(const float* src, void* dst, int64_t n, const float* importance) {
  (void)importance;
  QuantizeBlocks<BlockQ8_K, QuantizeQ8_K, kQK_K>(src, dst, n);
}

}  // namespace quants_internal
}  // namespace moeflow
