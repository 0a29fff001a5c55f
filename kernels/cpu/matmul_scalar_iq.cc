// The scalar reference of kernels/cpu/matmul for the IQ formats: ggml's
// generic ggml_vec_dot_iq*_q8_K / iq4_nl_q8_0 arithmetic, one function per
// weight type: exact integer sums per 32 (or 16) elements, scaled by the
// integer sub-block scale, then ggml's float products in ggml's order.
// Compiled with -ffp-contract=off, as ggml's reference.
#include <cstdint>
#include <cstring>

#include "formats/iq_grids.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

float H2F(uint16_t h) { return Fp16ToFp32(h); }

inline int GridByte(uint64_t entry, int j) { return static_cast<int>((entry >> (8 * j)) & 0xff); }

// Σ_j grid[j] · q8[j] · sign_j over one group of 8 (sign_j = -1 where bit j
// of `signs` is set).
inline int SignedGroupDot(uint64_t grid, uint8_t signs, const int8_t* q8) {
  int sum = 0;
  for (int j = 0; j < 8; ++j) sum += GridByte(grid, j) * q8[j] * ((signs >> j) & 1 ? -1 : 1);
  return sum;
}

// Two IQ3 entries (4 values each) as one group of 8.
inline uint64_t Pair32(uint32_t lo, uint32_t hi) {
  return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
}

float DotIQ2_XXS(int64_t n, const void* vx, const void* vy) {
  const BlockIQ2_XXS* x = static_cast<const BlockIQ2_XXS*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = H2F(x[i].d) * y[i].d;
    const int8_t* q8 = y[i].qs;
    int32_t bsum = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib) {
      uint32_t aux[2];
      std::memcpy(aux, x[i].qs + 4 * ib, sizeof(aux));
      const int32_t ls = 2 * static_cast<int32_t>(aux[1] >> 28) + 1;
      int32_t sumi = 0;
      for (int l = 0; l < 4; ++l, q8 += 8) {
        sumi += SignedGroupDot(kIq2XxsGrid.v[(aux[0] >> (8 * l)) & 0xff],
                               kIqSigns.v[(aux[1] >> (7 * l)) & 127], q8);
      }
      bsum += sumi * ls;
    }
    sumf += d * static_cast<float>(bsum);
  }
  return 0.125f * sumf;
}

float DotIQ2_XS(int64_t n, const void* vx, const void* vy) {
  const BlockIQ2_XS* x = static_cast<const BlockIQ2_XS*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = H2F(x[i].d) * y[i].d;
    const int8_t* q8 = y[i].qs;
    int32_t bsum = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib) {
      for (int half = 0; half < 2; ++half) {
        const int32_t ls = 2 * ((x[i].scales[ib] >> (4 * half)) & 0xf) + 1;
        int32_t sumi = 0;
        for (int l = 2 * half; l < 2 * half + 2; ++l, q8 += 8) {
          const uint16_t q = x[i].qs[4 * ib + l];
          sumi += SignedGroupDot(kIq2XsGrid.v[q & 511], kIqSigns.v[q >> 9], q8);
        }
        bsum += sumi * ls;
      }
    }
    sumf += d * static_cast<float>(bsum);
  }
  return 0.125f * sumf;
}

float DotIQ2_S(int64_t n, const void* vx, const void* vy) {
  const BlockIQ2_S* x = static_cast<const BlockIQ2_S*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = H2F(x[i].d) * y[i].d;
    const int8_t* q8 = y[i].qs;
    const uint8_t* qs = x[i].qs;
    const uint8_t* signs = x[i].qs + kQK_K / 8;
    int32_t bsum = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib, qs += 4, signs += 4) {
      int32_t sumi[2] = {0, 0};
      for (int l = 0; l < 4; ++l, q8 += 8) {
        const int index = qs[l] | (((x[i].qh[ib] >> (2 * l)) & 3) << 8);
        sumi[l / 2] += SignedGroupDot(kIq2SGrid.v[index], signs[l], q8);
      }
      const int32_t ls1 = 1 + 2 * (x[i].scales[ib] & 0xf);
      const int32_t ls2 = 1 + 2 * (x[i].scales[ib] >> 4);
      bsum += ls1 * sumi[0] + ls2 * sumi[1];
    }
    sumf += d * static_cast<float>(bsum);
  }
  return 0.125f * sumf;
}

float DotIQ3_XXS(int64_t n, const void* vx, const void* vy) {
  const BlockIQ3_XXS* x = static_cast<const BlockIQ3_XXS*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = H2F(x[i].d) * y[i].d;
    const int8_t* q8 = y[i].qs;
    const uint8_t* q3 = x[i].qs;
    const uint8_t* gas = x[i].qs + kQK_K / 4;
    int32_t bsum = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib, q3 += 8) {
      const uint32_t aux = LoadU32(gas + 4 * ib);
      const int32_t ls = 2 * static_cast<int32_t>(aux >> 28) + 1;
      int32_t sumi = 0;
      for (int l = 0; l < 4; ++l, q8 += 8) {
        sumi += SignedGroupDot(Pair32(kIq3XxsGrid.v[q3[2 * l]], kIq3XxsGrid.v[q3[2 * l + 1]]),
                               kIqSigns.v[(aux >> (7 * l)) & 127], q8);
      }
      bsum += sumi * ls;
    }
    sumf += d * static_cast<float>(bsum);
  }
  return 0.25f * sumf;
}

float DotIQ3_S(int64_t n, const void* vx, const void* vy) {
  const BlockIQ3_S* x = static_cast<const BlockIQ3_S*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = H2F(x[i].d) * y[i].d;
    const int8_t* q8 = y[i].qs;
    const uint8_t* qs = x[i].qs;
    const uint8_t* signs = x[i].signs;
    int32_t bsum = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib, qs += 8, signs += 4) {
      const uint8_t qh = x[i].qh[ib];
      int32_t sumi = 0;
      for (int l = 0; l < 4; ++l, q8 += 8) {
        const uint32_t g1 = kIq3SGrid.v[qs[2 * l] | (((qh >> (2 * l)) & 1) << 8)];
        const uint32_t g2 = kIq3SGrid.v[qs[2 * l + 1] | (((qh >> (2 * l + 1)) & 1) << 8)];
        sumi += SignedGroupDot(Pair32(g1, g2), signs[l], q8);
      }
      const int32_t ls = 2 * ((x[i].scales[ib / 2] >> (4 * (ib % 2))) & 0xf) + 1;
      bsum += sumi * ls;
    }
    sumf += d * static_cast<float>(bsum);
  }
  return sumf;
}

// Σ_j grid[j] · q8[j] over one group of 8 (IQ1 grid values are int8).
inline int GroupDotS8(uint64_t grid, const int8_t* q8) {
  int sum = 0;
  for (int j = 0; j < 8; ++j) sum += static_cast<int8_t>(GridByte(grid, j)) * q8[j];
  return sum;
}

float DotIQ1_S(int64_t n, const void* vx, const void* vy) {
  const BlockIQ1_S* x = static_cast<const BlockIQ1_S*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const int8_t* q8 = y[i].qs;
    const uint8_t* qs = x[i].qs;
    int sumi = 0, sumi1 = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib, qs += 4) {
      const uint16_t qh = x[i].qh[ib];
      const int ls = 2 * ((qh >> 12) & 7) + 1;
      const int delta = qh & 0x8000 ? -1 : 1;
      int lsum = 0;
      for (int l = 0; l < 4; ++l, q8 += 8) {
        lsum += GroupDotS8(kIq1SGrid.v[qs[l] | (((qh >> (3 * l)) & 7) << 8)], q8);
      }
      sumi += ls * lsum;
      sumi1 += ls * delta * (y[i].bsums[2 * ib] + y[i].bsums[2 * ib + 1]);
    }
    sumf +=
        H2F(x[i].d) * y[i].d * (static_cast<float>(sumi) + kIq1Delta * static_cast<float>(sumi1));
  }
  return sumf;
}

float DotIQ1_M(int64_t n, const void* vx, const void* vy) {
  const BlockIQ1_M* x = static_cast<const BlockIQ1_M*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const int8_t* q8 = y[i].qs;
    const uint8_t* qs = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint16_t sc[4];
    std::memcpy(sc, x[i].scales, sizeof(sc));
    const uint16_t d16 = static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) |
                                               ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
    int sumi1 = 0, sumi2 = 0;
    for (int ib = 0; ib < kQK_K / 32; ++ib, qs += 4, qh += 2) {
      int sum1[2] = {0, 0}, sum2[2] = {0, 0};
      for (int l = 0; l < 4; ++l, q8 += 8) {
        const uint8_t h = qh[l / 2] >> (4 * (l % 2));
        const int delta = h & 0x08 ? -1 : 1;
        int lsum2 = 0;
        for (int j = 0; j < 8; ++j) lsum2 += q8[j];
        sum1[l / 2] += GroupDotS8(kIq1SGrid.v[qs[l] | ((h & 7) << 8)], q8);
        sum2[l / 2] += lsum2 * delta;
      }
      const int ls1 = 2 * ((sc[ib / 2] >> (6 * (ib % 2))) & 7) + 1;
      const int ls2 = 2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 7) + 1;
      sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
      sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
    }
    sumf += H2F(d16) * y[i].d * (static_cast<float>(sumi1) + kIq1Delta * static_cast<float>(sumi2));
  }
  return sumf;
}

float DotIQ4_NL(int64_t n, const void* vx, const void* vy) {
  const BlockIQ4_NL* x = static_cast<const BlockIQ4_NL*>(vx);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const float d = H2F(y[ib].d) * H2F(x[ib].d);
    int sumi1 = 0, sumi2 = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi1 += y[ib].qs[j] * kIq4nlValues[x[ib].qs[j] & 0xf];
      sumi2 += y[ib].qs[j + kQK / 2] * kIq4nlValues[x[ib].qs[j] >> 4];
    }
    sumf += d * static_cast<float>(sumi1 + sumi2);
  }
  return sumf;
}

float DotIQ4_XS(int64_t n, const void* vx, const void* vy) {
  const BlockIQ4_XS* x = static_cast<const BlockIQ4_XS*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d4d8 = H2F(x[i].d) * y[i].d;
    const uint8_t* qs = x[i].qs;
    const int8_t* q8 = y[i].qs;
    for (int ib = 0; ib < kQK_K / 32; ++ib, qs += 16, q8 += 32) {
      const int ls = ((x[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) |
                     (((x[i].scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d4d8 * static_cast<float>(ls - 32);
      int sumi1 = 0, sumi2 = 0;
      for (int j = 0; j < 16; ++j) {
        sumi1 += q8[j] * kIq4nlValues[qs[j] & 0xf];
        sumi2 += q8[j + 16] * kIq4nlValues[qs[j] >> 4];
      }
      sumf += dl * static_cast<float>(sumi1 + sumi2);
    }
  }
  return sumf;
}

}  // namespace

VecDotFn ScalarIqVecDot(GgmlType type) {
  switch (type) {
    case GgmlType::kIQ2_XXS:
      return DotIQ2_XXS;
    case GgmlType::kIQ2_XS:
      return DotIQ2_XS;
    case GgmlType::kIQ2_S:
      return DotIQ2_S;
    case GgmlType::kIQ3_XXS:
      return DotIQ3_XXS;
    case GgmlType::kIQ3_S:
      return DotIQ3_S;
    case GgmlType::kIQ1_S:
      return DotIQ1_S;
    case GgmlType::kIQ1_M:
      return DotIQ1_M;
    case GgmlType::kIQ4_NL:
      return DotIQ4_NL;
    case GgmlType::kIQ4_XS:
      return DotIQ4_XS;
    default:
      return nullptr;
  }
}

}  // namespace moeflow
