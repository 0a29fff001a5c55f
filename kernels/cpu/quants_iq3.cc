// Quantization to ggml's IQ3_XXS and IQ3_S (quantize_row_iq3_xxs_impl,
// quantize_row_iq3_s_impl), byte for byte with the same input and
// importance: per 32 values the signs are split off (IQ3_XXS keeps an even
// number per 8, as its 7-bit sign index demands), a scale search maps |x| to
// the levels 0..7 of the grid positions 1, 3, ..., 15, four at a time,
// snapping codes off the grid to their best neighbour (quants_iq_tables.cc),
// and keeps the best weighted least-squares fit; the sub-block scales end as
// 4-bit codes. Weights: importance_i · sqrt(σ² + x_i²), or x_i² without an
// importance matrix. Compiled with -ffp-contract=off, as ggml-base.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "base/check.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

constexpr int kMaxQ = 8;  // levels 0 .. 7
constexpr float kGroupMaxEpsIq3Xxs = 1e-8f;

// ggml's iq3_find_best_neighbour (4 values).
int BestNeighbour4(const IqSearchGrid& g, uint32_t code, const float* xval, const float* weight,
                   float scale, int8_t* L) {
  const uint16_t* nb = g.NeighboursOf(code);
  MOEFLOW_CHECK(nb[0] > 0);
  float best_d2 = FLT_MAX;
  int best = -1;
  for (int k = 1; k <= nb[0]; ++k) {
    const auto& p = g.pos[nb[k]];
    float d2 = 0.0f;
    for (int i = 0; i < 4; ++i) {
      const float diff = scale * static_cast<float>(p[i]) - xval[i];
      d2 += weight[i] * diff * diff;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      best = nb[k];
    }
  }
  MOEFLOW_CHECK(best >= 0);
  for (int i = 0; i < 4; ++i) L[i] = static_cast<int8_t>((g.pos[best][i] - 1) / 2);
  return best;
}

inline uint32_t Code4(const int8_t* L) {
  uint32_t u = 0;
  for (int i = 0; i < 4; ++i) u |= static_cast<uint32_t>(L[i]) << (3 * i);
  return u;
}

// Levels of 4 values at inverse scale id, onto the grid (best neighbour at
// `scale`); returns the entry, *on_grid whether the plain code was on it.
int SnapGroup4(const IqSearchGrid& g, float id, float scale, const float* xval, const float* waux,
               int8_t* L, bool* on_grid) {
  for (int i = 0; i < 4; ++i) {
    const int l = NearestInt(0.5f * (id * xval[i] - 1.0f));
    L[i] = static_cast<int8_t>(std::max(0, std::min(kMaxQ - 1, l)));
  }
  const uint32_t u = Code4(L);
  const int e = g.Entry(u);
  if (on_grid != nullptr) *on_grid = e >= 0;
  if (e >= 0) return e;
  return BestNeighbour4(g, u, xval, waux, scale, L);
}

void FitSums32(const float* weight, const float* xval, const int8_t* L, float* sumqx,
               float* sumq2) {
  *sumqx = 0.0f;
  *sumq2 = 0.0f;
  for (int i = 0; i < 32; ++i) {
    const float q = static_cast<float>(2 * L[i] + 1);
    *sumqx += weight[i] * xval[i] * q;
    *sumq2 += weight[i] * q * q;
  }
}

// One sub-block of 32 values: grid entries, signs and scale.
struct Iq3SubBlock {
  bool searched = false;  // false: below the threshold, nothing stored
  float scale = 0.0f;
  int entry[8] = {};
  uint8_t signs[4] = {};
};

// The IQ3 search of 32 values. IQ3_XXS: even signs, ε 1e-8, 31 candidate
// scales, groups already on the grid keep their levels in the refit; IQ3_S:
// free signs, only x = 0 skipped, 19 candidates, every group refit.
Iq3SubBlock SearchSubBlock32(const IqSearchGrid& g, const float* xb, const float* weight,
                             bool xxs) {
  Iq3SubBlock out;
  float xval[32], waux[32];
  int8_t L[32] = {}, Laux[32];
  for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
  for (int k = 0; k < 4; ++k) {
    const uint8_t s = SplitSigns8(xb + 8 * k, weight + 8 * k, xxs, xval + 8 * k);
    out.signs[k] = xxs ? static_cast<uint8_t>(s & 127) : s;
  }
  float max = xval[0];
  for (int i = 1; i < 32; ++i) max = std::max(max, xval[i]);
  if (xxs ? max < kGroupMaxEpsIq3Xxs : max == 0.0f) return out;
  out.searched = true;
  float best = 0.0f;
  float scale = max / static_cast<float>(2 * kMaxQ - 1);
  bool on_grid[8];
  std::fill(on_grid, on_grid + 8, xxs);
  const int range = xxs ? 15 : 9;
  for (int is = -range; is <= range; ++is) {
    const float id = (static_cast<float>(2 * kMaxQ - 1) + static_cast<float>(is) * 0.2f) / max;
    const float this_scale = 1.0f / id;
    bool on_grid_aux[8];
    for (int k = 0; k < 8; ++k) {
      SnapGroup4(g, id, this_scale, xval + 4 * k, waux + 4 * k, Laux + 4 * k, &on_grid_aux[k]);
    }
    float sumqx, sumq2;
    FitSums32(weight, xval, Laux, &sumqx, &sumq2);
    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, 32);
      std::copy(on_grid_aux, on_grid_aux + 8, on_grid);
    }
  }
  const bool any_off = std::find(on_grid, on_grid + 8, false) != on_grid + 8;
  if (any_off && scale > 0.0f) {
    const float id = 1.0f / scale;
    for (int k = 0; k < 8; ++k) {
      if (xxs && on_grid[k]) continue;
      const int e = SnapGroup4(g, id, scale, xval + 4 * k, waux + 4 * k, L + 4 * k, nullptr);
      for (int i = 0; i < 4; ++i) L[4 * k + i] = static_cast<int8_t>((g.pos[e][i] - 1) / 2);
    }
    float sumqx, sumq2;
    FitSums32(weight, xval, L, &sumqx, &sumq2);
    if (sumq2 > 0.0f) scale = sumqx / sumq2;
  }
  if (scale < 0.0f) {  // never expected; kept as ggml has it
    scale = -scale;
    for (int k = 0; k < 4; ++k) {
      out.signs[k] = static_cast<uint8_t>(xxs ? ~out.signs[k] & 127 : ~out.signs[k]);
    }
  }
  for (int k = 0; k < 8; ++k) {
    out.entry[k] = g.Entry(Code4(L + 4 * k));
    MOEFLOW_CHECK(out.entry[k] >= 0 && "IQ3: levels off the grid");
  }
  out.scale = scale;
  return out;
}

// The weights of 32 values: importance · sqrt(σ² + x²), or x².
void Weights32(const float* xb, const float* qw, float sigma2, float* weight) {
  if (qw != nullptr) {
    for (int i = 0; i < 32; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
  } else {
    for (int i = 0; i < 32; ++i) weight[i] = xb[i] * xb[i];
  }
}

void QuantizeIQ3_XXS(const float* xbl, const float* qwbl, BlockIQ3_XXS* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq3Xxs);
  float scales[kQK_K / 32];
  float weight[32];
  uint8_t q3[3 * kQK_K / 8] = {};
  uint32_t scales_and_signs[kQK_K / 32] = {};
  y->d = FloatToHalf(0.0f);
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 2.0f);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float* xb = xbl + 32 * ib;
    Weights32(xb, qwbl != nullptr ? qwbl + 32 * ib : nullptr, sigma2, weight);
    const Iq3SubBlock s = SearchSubBlock32(g, xb, weight, true);
    scales[ib] = s.scale;
    if (!s.searched) continue;
    for (int k = 0; k < 8; ++k) q3[8 * ib + k] = static_cast<uint8_t>(s.entry[k]);
    scales_and_signs[ib] = s.signs[0] | (s.signs[1] << 7) | (s.signs[2] << 14) |
                           (static_cast<uint32_t>(s.signs[3]) << 21);
    max_scale = std::max(max_scale, s.scale);
  }
  if (max_scale == 0.0f) {
    std::memset(y->qs, 0, sizeof(y->qs));
    return;
  }
  const float d = max_scale / 31.0f;
  y->d = FloatToHalf(d * 1.0125f);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    scales_and_signs[ib] |= static_cast<uint32_t>(IqScaleCode4(id, scales[ib])) << 28;
  }
  std::memcpy(q3 + kQK_K / 4, scales_and_signs, sizeof(scales_and_signs));
  std::memcpy(y->qs, q3, sizeof(y->qs));
}

void QuantizeIQ3_S(const float* xbl, const float* qwbl, BlockIQ3_S* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq3S);
  float scales[kQK_K / 32];
  float weight[32];
  std::memset(y, 0, sizeof(*y));
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 2.0f);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float* xb = xbl + 32 * ib;
    Weights32(xb, qwbl != nullptr ? qwbl + 32 * ib : nullptr, sigma2, weight);
    const Iq3SubBlock s = SearchSubBlock32(g, xb, weight, false);
    scales[ib] = s.scale;
    if (!s.searched) continue;
    for (int k = 0; k < 8; ++k) {
      y->qs[8 * ib + k] = static_cast<uint8_t>(s.entry[k] & 255);
      y->qh[ib] = static_cast<uint8_t>(y->qh[ib] | ((s.entry[k] >> 8) << k));
    }
    std::memcpy(y->signs + 4 * ib, s.signs, 4);
    max_scale = std::max(max_scale, s.scale);
  }
  if (max_scale == 0.0f) return;
  const float d = max_scale / 31.0f;
  y->d = FloatToHalf(d * 1.033f);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / 32; ib += 2) {
    y->scales[ib / 2] = static_cast<uint8_t>(IqScaleCode4(id, scales[ib]) |
                                             (IqScaleCode4(id, scales[ib + 1]) << 4));
  }
}

}  // namespace

void QuantizeRowIQ3_XXS(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeSuperBlocks<BlockIQ3_XXS, QuantizeIQ3_XXS>(src, dst, n, importance);
}
void QuantizeRowIQ3_S(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeSuperBlocks<BlockIQ3_S, QuantizeIQ3_S>(src, dst, n, importance);
}

}  // namespace quants_internal
}  // namespace moeflow
