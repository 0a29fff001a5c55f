// Quantization to ggml's IQ2_XXS, IQ2_XS and IQ2_S (quantize_row_iq2_*_impl),
// byte for byte with the same input and importance. Per group of 8 values the
// signs are split off (IQ2_XXS / IQ2_XS keep an even number of them, flipping
// the least important value if needed, as their 7-bit sign index demands),
// then a scale search over 13-19 candidates maps |x| to the levels 0..2 of
// the grid's positions 1, 3, 5, snapping codes off the grid to their best
// neighbour (quants_iq_tables.cc), and keeps the best weighted least-squares
// fit; the sub-block scales are finally quantized to 4 bits.
// Weights: importance_i · sqrt(σ² + x_i²); IQ2_S without an importance
// matrix uses σ²/4 + x_i². IQ2_XXS and IQ2_XS need importance (quants.cc
// gives them 1 per value when there is none). Compiled with
// -ffp-contract=off, as ggml-base.
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

constexpr int kMaxQ = 3;  // levels 0 .. kMaxQ - 1
constexpr float kGroupMaxEpsIq2S = 1e-8f;

// ggml's iq2_find_best_neighbour: the neighbour of `code` closest to x under
// `weight` at `scale`; its levels go to L.
int BestNeighbour(const IqSearchGrid& g, uint32_t code, const float* xval, const float* weight,
                  float scale, int8_t* L) {
  const uint16_t* nb = g.NeighboursOf(code);
  MOEFLOW_CHECK(nb[0] > 0);
  float best_d2 = FLT_MAX;
  int best = -1;
  for (int k = 1; k <= nb[0]; ++k) {
    const auto& p = g.pos[nb[k]];
    float d2 = 0.0f;
    for (int i = 0; i < 8; ++i) {
      const float diff = scale * static_cast<float>(p[i]) - xval[i];
      d2 += weight[i] * diff * diff;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      best = nb[k];
    }
  }
  MOEFLOW_CHECK(best >= 0);
  for (int i = 0; i < 8; ++i) L[i] = static_cast<int8_t>((g.pos[best][i] - 1) / 2);
  return best;
}

// Level of |x| at inverse scale id: nearest (id · x - 1) / 2 in 0..kMaxQ-1.
inline int8_t Level(float id, float x) {
  const int l = NearestInt(0.5f * (id * x - 1.0f));
  return static_cast<int8_t>(std::max(0, std::min(kMaxQ - 1, l)));
}

inline uint32_t Code(const int8_t* L) {
  uint32_t u = 0;
  for (int i = 0; i < 8; ++i) u |= static_cast<uint32_t>(L[i]) << (2 * i);
  return u;
}

// Levels of 8 values at inverse scale id, snapped onto the grid (the best
// neighbour at `scale`). Returns the entry; `on_grid` says whether the
// plain code was on it.
int SnapGroup(const IqSearchGrid& g, float id, float scale, const float* xval, const float* waux,
              int8_t* L, bool* on_grid) {
  for (int i = 0; i < 8; ++i) L[i] = Level(id, xval[i]);
  const uint32_t u = Code(L);
  const int e = g.Entry(u);
  if (on_grid != nullptr) *on_grid = e >= 0;
  if (e >= 0) return e;
  return BestNeighbour(g, u, xval, waux, scale, L);
}

// Σ w x q and Σ w q² with q = 2 l + 1.
void FitSums(int n, const float* weight, const float* xval, const int8_t* L, float* sumqx,
             float* sumq2) {
  *sumqx = 0.0f;
  *sumq2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float q = static_cast<float>(2 * L[i] + 1);
    *sumqx += weight[i] * xval[i] * q;
    *sumq2 += weight[i] * q * q;
  }
}

void QuantizeIQ2_XXS(const float* xbl, const float* qwbl, BlockIQ2_XXS* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq2Xxs);
  float scales[kQK_K / 32];
  float weight[32], xval[32], waux[32];
  int8_t L[32], Laux[32];
  uint8_t block_signs[4];
  uint32_t q2[2 * (kQK_K / 32)] = {};
  y->d = FloatToHalf(0.0f);
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 1.0f);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float* xb = xbl + 32 * ib;
    const float* qw = qwbl + 32 * ib;
    for (int i = 0; i < 32; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
    for (int k = 0; k < 4; ++k) {
      block_signs[k] = SplitSigns8(xb + 8 * k, weight + 8 * k, true, xval + 8 * k) & 127;
    }
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = std::max(max, xval[i]);
    if (max < kGroupMaxEps) {
      scales[ib] = 0.0f;
      continue;
    }
    // The starting scale of make_qp_quants over 4 levels (its L is rebuilt).
    float scale = MakeQpQuants(32, kMaxQ + 1, xval, reinterpret_cast<uint8_t*>(L), weight);
    const float eff_max = scale * static_cast<float>(kMaxQ);
    if (eff_max <= 0.0f) {
      scales[ib] = 0.0f;
      continue;
    }
    float best = 0.0f;
    for (int is = -6; is <= 6; ++is) {
      const float id =
          (static_cast<float>(2 * kMaxQ - 1) + static_cast<float>(is) * 0.1f) / eff_max;
      const float this_scale = 1.0f / id;
      for (int k = 0; k < 4; ++k) {
        SnapGroup(g, id, this_scale, xval + 8 * k, waux + 8 * k, Laux + 8 * k, nullptr);
      }
      float sumqx, sumq2;
      FitSums(32, weight, xval, Laux, &sumqx, &sumq2);
      if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
        scale = sumqx / sumq2;
        best = scale * sumqx;
        std::memcpy(L, Laux, 32);
      }
    }
    if (scale > 0.0f) {
      const float id = 1.0f / scale;
      for (int k = 0; k < 4; ++k) {
        const int e = SnapGroup(g, id, scale, xval + 8 * k, waux + 8 * k, L + 8 * k, nullptr);
        for (int i = 0; i < 8; ++i) L[8 * k + i] = static_cast<int8_t>((g.pos[e][i] - 1) / 2);
      }
      float sumqx, sumq2;
      FitSums(32, weight, xval, L, &sumqx, &sumq2);
      if (sumq2 > 0.0f) scale = sumqx / sumq2;
    }
    if (scale < 0.0f) {  // never expected; kept as ggml has it
      scale = -scale;
      for (int k = 0; k < 4; ++k) block_signs[k] = static_cast<uint8_t>(~block_signs[k] & 127);
    }
    for (int k = 0; k < 4; ++k) {
      const int e = g.Entry(Code(L + 8 * k));
      MOEFLOW_CHECK(e >= 0 && "IQ2_XXS: levels off the grid");
      q2[2 * ib] |= static_cast<uint32_t>(e) << (8 * k);
      q2[2 * ib + 1] |= static_cast<uint32_t>(block_signs[k]) << (7 * k);
    }
    scales[ib] = scale;
    max_scale = std::max(max_scale, scale);
  }
  if (max_scale == 0.0f) {
    std::memset(y->qs, 0, sizeof(y->qs));
    return;
  }
  const float d = max_scale / 31.0f;
  y->d = FloatToHalf(d);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    q2[2 * ib + 1] |= static_cast<uint32_t>(IqScaleCode4(id, scales[ib])) << 28;
  }
  std::memcpy(y->qs, q2, sizeof(y->qs));
}

// IQ2_XS and IQ2_S: 16 values per scale, two groups of 8. They differ in σ²,
// the weights without importance, free or even signs, and the packing.
struct Iq2SubBlock {
  bool searched = false;  // false: below the group epsilon, nothing stored
  float scale = 0.0f;
  int entry[2] = {0, 0};
  uint8_t signs[2] = {0, 0};
};

Iq2SubBlock SearchSubBlock16(const IqSearchGrid& g, const float* xb, const float* weight,
                             bool even_signs, float eps) {
  Iq2SubBlock out;
  float xval[16], waux[16];
  int8_t L[16] = {}, Laux[16];
  for (int i = 0; i < 16; ++i) waux[i] = std::sqrt(weight[i]);
  for (int k = 0; k < 2; ++k) {
    const uint8_t s = SplitSigns8(xb + 8 * k, weight + 8 * k, even_signs, xval + 8 * k);
    out.signs[k] = even_signs ? static_cast<uint8_t>(s & 127) : s;
  }
  float max = xval[0];
  for (int i = 1; i < 16; ++i) max = std::max(max, xval[i]);
  if (max < eps) return out;  // scale 0, entries and signs as ggml leaves them
  out.searched = true;
  float best = 0.0f;
  float scale = max / static_cast<float>(2 * kMaxQ - 1);
  bool on_grid[2] = {true, true};
  for (int is = -9; is <= 9; ++is) {
    const float id = (static_cast<float>(2 * kMaxQ - 1) + static_cast<float>(is) * 0.1f) / max;
    const float this_scale = 1.0f / id;
    bool on_grid_aux[2];
    for (int k = 0; k < 2; ++k) {
      SnapGroup(g, id, this_scale, xval + 8 * k, waux + 8 * k, Laux + 8 * k, &on_grid_aux[k]);
    }
    float sumqx, sumq2;
    FitSums(16, weight, xval, Laux, &sumqx, &sumq2);
    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, 16);
      on_grid[0] = on_grid_aux[0];
      on_grid[1] = on_grid_aux[1];
    }
  }
  if ((!on_grid[0] || !on_grid[1]) && scale > 0.0f) {
    const float id = 1.0f / scale;
    for (int k = 0; k < 2; ++k) {
      if (on_grid[k]) continue;
      SnapGroup(g, id, scale, xval + 8 * k, waux + 8 * k, L + 8 * k, nullptr);
    }
    float sumqx, sumq2;
    FitSums(16, weight, xval, L, &sumqx, &sumq2);
    if (sumq2 > 0.0f) scale = sumqx / sumq2;
  }
  if (scale < 0.0f) {  // never expected; kept as ggml has it
    scale = -scale;
    for (int k = 0; k < 2; ++k) {
      out.signs[k] = static_cast<uint8_t>(even_signs ? ~out.signs[k] & 127 : ~out.signs[k]);
    }
  }
  for (int k = 0; k < 2; ++k) {
    out.entry[k] = g.Entry(Code(L + 8 * k));
    MOEFLOW_CHECK(out.entry[k] >= 0 && "IQ2: levels off the grid");
  }
  out.scale = scale;
  return out;
}

void QuantizeIQ2_XS(const float* xbl, const float* qwbl, BlockIQ2_XS* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq2Xs);
  float scales[kQK_K / 16];
  float weight[16];
  uint16_t q2[kQK_K / 8] = {};
  y->d = FloatToHalf(0.0f);
  std::memset(y->scales, 0, sizeof(y->scales));
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 1.0f);
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    const float* xb = xbl + 16 * ib;
    const float* qw = qwbl + 16 * ib;
    for (int i = 0; i < 16; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    const Iq2SubBlock s = SearchSubBlock16(g, xb, weight, true, kGroupMaxEps);
    scales[ib] = s.scale;
    if (!s.searched) continue;
    for (int k = 0; k < 2; ++k) {
      q2[2 * ib + k] = static_cast<uint16_t>(s.entry[k] | (s.signs[k] << 9));
    }
    max_scale = std::max(max_scale, s.scale);
  }
  if (max_scale == 0.0f) {
    std::memset(y->qs, 0, sizeof(y->qs));
    return;
  }
  const float d = max_scale / 31.0f;
  y->d = FloatToHalf(d);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    const int l = IqScaleCode4(id, scales[ib]);
    y->scales[ib / 2] = static_cast<uint8_t>(ib % 2 == 0 ? l : y->scales[ib / 2] | (l << 4));
  }
  std::memcpy(y->qs, q2, sizeof(y->qs));
}

void QuantizeIQ2_S(const float* xbl, const float* qwbl, BlockIQ2_S* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq2S);
  float scales[kQK_K / 16];
  float weight[16];
  std::memset(y, 0, sizeof(*y));
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 2.0f);
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    const float* xb = xbl + 16 * ib;
    if (qwbl != nullptr) {
      const float* qw = qwbl + 16 * ib;
      for (int i = 0; i < 16; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    } else {
      for (int i = 0; i < 16; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
    }
    const Iq2SubBlock s = SearchSubBlock16(g, xb, weight, false, kGroupMaxEpsIq2S);
    scales[ib] = s.scale;
    if (!s.searched) continue;
    for (int k = 0; k < 2; ++k) {
      const int i8 = 2 * ib + k;
      y->qs[i8] = static_cast<uint8_t>(s.entry[k] & 255);
      y->qh[i8 / 4] = static_cast<uint8_t>(y->qh[i8 / 4] | ((s.entry[k] >> 8) << (2 * (i8 % 4))));
      y->qs[kQK_K / 8 + i8] = s.signs[k];
    }
    max_scale = std::max(max_scale, s.scale);
  }
  if (max_scale == 0.0f) return;
  const float d = max_scale / 31.0f;
  y->d = FloatToHalf(d * 0.9875f);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    const int l = IqScaleCode4(id, scales[ib]);
    y->scales[ib / 2] = static_cast<uint8_t>(ib % 2 == 0 ? l : y->scales[ib / 2] | (l << 4));
  }
}

}  // namespace

void QuantizeRowIQ2_XXS(const float* src, void* dst, int64_t n, const float* importance) {
  MOEFLOW_CHECK(importance != nullptr);
  QuantizeSuperBlocks<BlockIQ2_XXS, QuantizeIQ2_XXS>(src, dst, n, importance);
}
void QuantizeRowIQ2_XS(const float* src, void* dst, int64_t n, const float* importance) {
  MOEFLOW_CHECK(importance != nullptr);
  QuantizeSuperBlocks<BlockIQ2_XS, QuantizeIQ2_XS>(src, dst, n, importance);
}
void QuantizeRowIQ2_S(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeSuperBlocks<BlockIQ2_S, QuantizeIQ2_S>(src, dst, n, importance);
}

}  // namespace quants_internal
}  // namespace moeflow
