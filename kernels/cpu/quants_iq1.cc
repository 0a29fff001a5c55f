// Quantization to ggml's IQ1_S and IQ1_M (quantize_row_iq1_s_impl,
// quantize_row_iq1_m_impl), byte for byte with the same input and
// importance. With only three levels (-1, 0, 1) plus a shift of ±1/8, the
// best split of a sub-block's sorted values into three groups is found
// exhaustively from prefix sums (both shifts; IQ1_M lets each half of 16
// values take its own shift), the levels snapped onto the grid through the
// neighbour lists of quants_iq_tables.cc, and the scales quantized to 3 bits
// (IQ1_M refits the block scale over the whole super-block). Weights:
// importance_i · sqrt(σ² + x_i²); IQ1_M without importance x_i². IQ1_S
// needs importance (quants.cc gives it 1 per value when there is none).
// Compiled with -ffp-contract=off, as ggml-base.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "base/check.h"
#include "formats/iq_grids.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

constexpr float kGroupMaxEpsIq1S = 1e-12f;
constexpr float kGroupMaxEpsIq1M = 1e-7f;
constexpr float kShiftPlus[3] = {-1 + kIq1Delta, kIq1Delta, 1 + kIq1Delta};
constexpr float kShiftMinus[3] = {-1 - kIq1Delta, -kIq1Delta, 1 - kIq1Delta};

// ggml's iq1_find_best_neighbour2: the neighbour of `code` whose shifted
// values xx[l] · scale are closest to x under `weight`; its levels go to L.
int BestNeighbourShifted(const IqSearchGrid& g, uint32_t code, const float* x, const float* weight,
                         float scale, const float* xx, int8_t* L) {
  const uint16_t* nb = g.NeighboursOf(code);
  MOEFLOW_CHECK(nb[0] > 0);
  float best = FLT_MAX;
  int best_entry = -1;
  for (int k = 1; k <= nb[0]; ++k) {
    const auto& p = g.pos[nb[k]];
    float d2 = 0.0f;
    for (int i = 0; i < 8; ++i) {
      const float q = xx[(p[i] - 1) / 2];
      const float diff = scale * q - x[i];
      d2 += weight[i] * diff * diff;
    }
    if (d2 < best) {
      best = d2;
      best_entry = nb[k];
    }
  }
  // ggml then scans the whole grid, which cannot find a closer point than
  // the nearest finite one among the neighbours; for non-finite inputs it
  // aborts, as here.
  MOEFLOW_CHECK(best_entry >= 0 && "IQ1: no grid point (non-finite input?)");
  for (int i = 0; i < 8; ++i) L[i] = static_cast<int8_t>((g.pos[best_entry][i] - 1) / 2);
  return best_entry;
}

inline uint32_t Code8(const int8_t* L) {
  uint32_t u = 0;
  for (int i = 0; i < 8; ++i) u |= static_cast<uint32_t>(L[i]) << (2 * i);
  return u;
}

// Indices 0..n-1 ordered by x ascending, equal values in index order (glibc's
// qsort, a merge sort, is stable for ggml's pairs).
void SortedOrder(const float* x, int n, int* order) {
  for (int j = 0; j < n; ++j) order[j] = j;
  std::stable_sort(order, order + n, [&](int a, int b) { return x[a] < x[b]; });
}

float MaxAbs(const float* x, int n) {
  float max = std::fabs(x[0]);
  for (int i = 1; i < n; ++i) max = std::max(max, std::fabs(x[i]));
  return max;
}

inline int ScaleCode3(float id, float scale) {
  return std::max(0, std::min(7, NearestInt(0.5f * (id * scale - 1.0f))));
}

void QuantizeIQ1_S(const float* xbl, const float* qwbl, BlockIQ1_S* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq1S);
  constexpr int kBlock = 32;
  float scales[kQK_K / kBlock];
  int8_t shifts[kQK_K / kBlock];
  float weight[kBlock], sumx[kBlock + 1], sumw[kBlock + 1];
  int order[kBlock];
  int8_t L[kBlock];
  y->d = FloatToHalf(0.0f);
  std::memset(y->qs, 0, sizeof(y->qs));
  std::memset(y->qh, 0, sizeof(y->qh));
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 2.0f);
  for (int ib = 0; ib < kQK_K / kBlock; ++ib) {
    const float* xb = xbl + kBlock * ib;
    const float* qw = qwbl + kBlock * ib;
    for (int i = 0; i < kBlock; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    scales[ib] = 0.0f;
    shifts[ib] = 1;
    if (MaxAbs(xb, kBlock) < kGroupMaxEpsIq1S) continue;
    SortedOrder(xb, kBlock, order);
    sumx[0] = sumw[0] = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
      const int i = order[j];
      sumx[j + 1] = sumx[j] + weight[i] * xb[i];
      sumw[j + 1] = sumw[j] + weight[i];
    }
    // Values [0, i1) of the order at level 0, [i1, i2) at 1, the rest at 2.
    float best_score = -FLT_MAX, scale = MaxAbs(xb, kBlock);
    int besti1 = -1, besti2 = -1, best_shift = 0;
    for (int i1 = 0; i1 <= kBlock; ++i1) {
      for (int i2 = i1; i2 <= kBlock; ++i2) {
        for (int shift : {1, -1}) {
          const float* v = shift == 1 ? kShiftPlus : kShiftMinus;
          const float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] +
                              (sumx[kBlock] - sumx[i2]) * v[2];
          const float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] +
                              (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                              (sumw[kBlock] - sumw[i2]) * v[2] * v[2];
          if (sumq2 > 0.0f && sumqx * sumqx > best_score * sumq2) {
            scale = sumqx / sumq2;
            best_score = scale * sumqx;
            besti1 = i1;
            besti2 = i2;
            best_shift = shift;
          }
        }
      }
    }
    if (besti1 < 0 || besti2 < 0 || best_shift == 0) continue;
    for (int j = 0; j < kBlock; ++j)
      L[order[j]] = static_cast<int8_t>(j < besti1 ? 0 : j < besti2 ? 1 : 2);
    if (scale < 0.0f) {
      for (int j = 0; j < kBlock; ++j) L[j] = static_cast<int8_t>(2 - L[j]);
      scale = -scale;
      best_shift = -best_shift;
    }
    const float* xx = best_shift == 1 ? kShiftPlus : kShiftMinus;
    bool all_on_grid = true;
    int index[kBlock / 8];
    for (int k = 0; k < kBlock / 8; ++k) {
      const uint32_t u = Code8(L + 8 * k);
      index[k] = g.Entry(u);
      if (index[k] < 0) {
        all_on_grid = false;
        index[k] = BestNeighbourShifted(g, u, xb + 8 * k, weight + 8 * k, scale, xx, L + 8 * k);
      }
    }
    if (!all_on_grid) {
      float sumqx = 0.0f, sumq2 = 0.0f;
      for (int k = 0; k < kBlock / 8; ++k) {
        for (int j = 0; j < 8; ++j) {
          const float w = weight[8 * k + j];
          const float q = xx[(g.pos[index[k]][j] - 1) / 2];
          sumqx += w * q * xb[8 * k + j];
          sumq2 += w * q * q;
        }
      }
      if (sumqx > 0.0f && sumq2 > 0.0f) scale = sumqx / sumq2;
    }
    uint16_t h = 0;
    for (int k = 0; k < kBlock / 8; ++k) {
      y->qs[(kBlock / 8) * ib + k] = static_cast<uint8_t>(index[k] & 255);
      h = static_cast<uint16_t>(h | ((index[k] >> 8) << (3 * k)));
    }
    y->qh[ib] = h;
    scales[ib] = scale;
    shifts[ib] = static_cast<int8_t>(best_shift);
    max_scale = std::max(max_scale, scale);
  }
  if (max_scale == 0.0f) return;
  const float d = max_scale / 15.0f;
  y->d = FloatToHalf(d * 1.125f);
  const float id = 1.0f / d;
  for (int ib = 0; ib < kQK_K / kBlock; ++ib) {
    int l = ScaleCode3(id, scales[ib]);
    if (shifts[ib] == -1) l |= 8;
    y->qh[ib] = static_cast<uint16_t>(y->qh[ib] | (l << 12));
  }
}

// The shifted levels of group k (0: first 8 values, 1: last 8) of an IQ1_M
// sub-block whose shift choice is `k2` (0: +,+  1: +,-  2: -,+  3: -,-).
const float* Iq1MShift(int k2, int group) {
  if (group == 0) return k2 < 2 ? kShiftPlus : kShiftMinus;
  return k2 % 2 == 0 ? kShiftPlus : kShiftMinus;
}

void Iq1MWeights(const float* xb, const float* qw, float sigma2, float* weight) {
  if (qw != nullptr) {
    for (int i = 0; i < 16; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
  } else {
    for (int i = 0; i < 16; ++i) weight[i] = xb[i] * xb[i];
  }
}

void QuantizeIQ1_M(const float* xbl, const float* qwbl, BlockIQ1_M* y) {
  const IqSearchGrid& g = SearchGrid(IqGridId::kIq1S);
  constexpr int kBlock = 16;
  constexpr uint8_t kMasks[4] = {0x00, 0x80, 0x08, 0x88};
  float scales[kQK_K / kBlock];
  int8_t shifts[kQK_K / kBlock];
  float weight[kBlock];
  int order[kBlock];
  int8_t L[kBlock];
  std::memset(y, 0, sizeof(*y));
  float max_scale = 0.0f;
  const float sigma2 = SuperBlockSigma2(xbl, 2.0f);
  const float p2 = kShiftPlus[2], m2 = kShiftMinus[2];
  const float cp1 = kShiftPlus[0] * kShiftPlus[0] - kShiftPlus[1] * kShiftPlus[1];
  const float cp2 = kShiftPlus[1] * kShiftPlus[1] - kShiftPlus[2] * kShiftPlus[2];
  const float cm1 = kShiftMinus[0] * kShiftMinus[0] - kShiftMinus[1] * kShiftMinus[1];
  const float cm2 = kShiftMinus[1] * kShiftMinus[1] - kShiftMinus[2] * kShiftMinus[2];
  for (int ib = 0; ib < kQK_K / kBlock; ++ib) {
    const float* xb = xbl + kBlock * ib;
    Iq1MWeights(xb, qwbl != nullptr ? qwbl + kBlock * ib : nullptr, sigma2, weight);
    scales[ib] = 0.0f;
    shifts[ib] = 0;
    if (MaxAbs(xb, kBlock) < kGroupMaxEpsIq1M) continue;
    SortedOrder(xb, kBlock, order);
    // Prefix sums per half of the sub-block (values 0-7 and 8-15 by their
    // position), in sorted order.
    float px[2][kBlock + 1], pw[2][kBlock + 1];
    px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
      const int i = order[j];
      const int h = i < kBlock / 2 ? 0 : 1;
      px[h][j + 1] = px[h][j] + weight[i] * xb[i];
      px[1 - h][j + 1] = px[1 - h][j];
      pw[h][j + 1] = pw[h][j] + weight[i];
      pw[1 - h][j + 1] = pw[1 - h][j];
    }
    const float txs[2] = {px[0][kBlock], px[1][kBlock]};
    const float tws[2] = {pw[0][kBlock], pw[1][kBlock]};
    float best_score = -FLT_MAX, scale = MaxAbs(xb, kBlock);
    int besti1 = -1, besti2 = -1, best_k = -1;
    for (int i1 = 0; i1 <= kBlock; ++i1) {
      for (int i2 = i1; i2 <= kBlock; ++i2) {
        float qx_p[2], qx_m[2], q2_p[2], q2_m[2];
        for (int h = 0; h < 2; ++h) {
          const float sx = px[h][i1] + px[h][i2];
          qx_p[h] = txs[h] * p2 - sx;
          qx_m[h] = txs[h] * m2 - sx;
          q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
          q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
        }
        const float sumqx[4] = {qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1],
                                qx_m[0] + qx_m[1]};
        const float sumq2[4] = {q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1],
                                q2_m[0] + q2_m[1]};
        for (int k = 0; k < 4; ++k) {
          if (sumq2[k] > 0.0f && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
            scale = sumqx[k] / sumq2[k];
            best_score = scale * sumqx[k];
            besti1 = i1;
            besti2 = i2;
            best_k = k;
          }
        }
      }
    }
    if (besti1 < 0 || besti2 < 0 || best_k < 0) continue;
    for (int j = 0; j < kBlock; ++j)
      L[order[j]] = static_cast<int8_t>(j < besti1 ? 0 : j < besti2 ? 1 : 2);
    if (scale < 0.0f) {
      for (int j = 0; j < kBlock; ++j) L[j] = static_cast<int8_t>(2 - L[j]);
      scale = -scale;
      best_k = 3 - best_k;
    }
    bool all_on_grid = true;
    int index[2];
    for (int k = 0; k < 2; ++k) {
      const uint32_t u = Code8(L + 8 * k);
      index[k] = g.Entry(u);
      if (index[k] < 0) {
        all_on_grid = false;
        index[k] = BestNeighbourShifted(g, u, xb + 8 * k, weight + 8 * k, scale,
                                        Iq1MShift(best_k, k), L + 8 * k);
      }
    }
    if (!all_on_grid) {
      float sumqx = 0.0f, sumq2 = 0.0f;
      for (int k = 0; k < 2; ++k) {
        const float* xx = Iq1MShift(best_k, k);
        for (int j = 0; j < 8; ++j) {
          const float w = weight[8 * k + j];
          const float q = xx[(g.pos[index[k]][j] - 1) / 2];
          sumqx += w * q * xb[8 * k + j];
          sumq2 += w * q * q;
        }
      }
      if (sumqx > 0.0f && sumq2 > 0.0f) scale = sumqx / sumq2;
    }
    y->qs[2 * ib] = static_cast<uint8_t>(index[0] & 255);
    y->qs[2 * ib + 1] = static_cast<uint8_t>(index[1] & 255);
    y->qh[ib] = static_cast<uint8_t>((index[0] >> 8) | ((index[1] >> 8) << 4));
    scales[ib] = scale;
    shifts[ib] = static_cast<int8_t>(best_k);
    max_scale = std::max(max_scale, scale);
  }
  if (max_scale == 0.0f) return;
  uint16_t sc[4] = {0, 0, 0, 0};
  float d = max_scale / 15.0f;
  const float id = 1.0f / d;
  // The block scale refit over all 256 values at the chosen 3-bit scales.
  float sumqx = 0.0f, sumq2 = 0.0f;
  for (int ib = 0; ib < kQK_K / kBlock; ++ib) {
    const int l = ScaleCode3(id, scales[ib]);
    sc[ib / 4] = static_cast<uint16_t>(sc[ib / 4] | (l << (3 * (ib % 4))));
    y->qh[ib] = static_cast<uint8_t>(y->qh[ib] | kMasks[shifts[ib]]);
    const float* xb = xbl + kBlock * ib;
    Iq1MWeights(xb, qwbl != nullptr ? qwbl + kBlock * ib : nullptr, sigma2, weight);
    for (int k = 0; k < 2; ++k) {
      const float* xx = Iq1MShift(shifts[ib], k);
      const int e = y->qs[2 * ib + k] | ((y->qh[ib] << (8 - 4 * k)) & 0x700);
      for (int j = 0; j < 8; ++j) {
        const float w = weight[8 * k + j];
        const float q = xx[(g.pos[e][j] - 1) / 2] * static_cast<float>(2 * l + 1);
        sumqx += w * q * xb[8 * k + j];
        sumq2 += w * q * q;
      }
    }
  }
  if (sumq2 > 0.0f) d = sumqx / sumq2;
  const uint16_t d16 = FloatToHalf(d * 1.1125f);
  sc[0] = static_cast<uint16_t>(sc[0] | ((d16 & 0x000f) << 12));
  sc[1] = static_cast<uint16_t>(sc[1] | ((d16 & 0x00f0) << 8));
  sc[2] = static_cast<uint16_t>(sc[2] | ((d16 & 0x0f00) << 4));
  sc[3] = static_cast<uint16_t>(sc[3] | (d16 & 0xf000));
  std::memcpy(y->scales, sc, sizeof(sc));
}

}  // namespace

void QuantizeRowIQ1_S(const float* src, void* dst, int64_t n, const float* importance) {
  MOEFLOW_CHECK(importance != nullptr);
  QuantizeSuperBlocks<BlockIQ1_S, QuantizeIQ1_S>(src, dst, n, importance);
}
void QuantizeRowIQ1_M(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeSuperBlocks<BlockIQ1_M, QuantizeIQ1_M>(src, dst, n, importance);
}

}  // namespace quants_internal
}  // namespace moeflow
