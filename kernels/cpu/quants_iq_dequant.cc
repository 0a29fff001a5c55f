// Dequantization of ggml's IQ formats (dequantize_row_iq*), bit for bit:
// each value is computed with ggml's operations in ggml's order (scale
// products such as d * (0.5 + ls) * 0.25 first, then times the grid value,
// then the sign), the BUILD file keeping a*b+c unfused (-ffp-contract=off).
#include <cstdint>
#include <cstring>

#include "formats/iq_grids.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

// Byte j of a grid entry.
inline int GridByte(uint64_t entry, int j) { return static_cast<int>((entry >> (8 * j)) & 0xff); }
inline int GridByte32(uint32_t entry, int j) { return static_cast<int>((entry >> (8 * j)) & 0xff); }

// value * sign, sign = -1 where bit j of `signs` is set (ggml multiplies by
// ±1.f: exact, the same bits as negating).
inline float Signed(float v, uint8_t signs, int j) { return v * ((signs >> j) & 1 ? -1.f : 1.f); }

void DequantizeIQ2_XXS(const BlockIQ2_XXS& b, float* y) {
  const float d = HalfToFloat(b.d);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    uint32_t aux[2];
    std::memcpy(aux, b.qs + 4 * ib, sizeof(aux));
    const float db = d * (0.5f + static_cast<float>(aux[1] >> 28)) * 0.25f;
    for (int l = 0; l < 4; ++l) {
      const uint64_t grid = kIq2XxsGrid.v[(aux[0] >> (8 * l)) & 0xff];
      const uint8_t signs = kIqSigns.v[(aux[1] >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j)
        y[j] = Signed(db * static_cast<float>(GridByte(grid, j)), signs, j);
      y += 8;
    }
  }
}

void DequantizeIQ2_XS(const BlockIQ2_XS& b, float* y) {
  const float d = HalfToFloat(b.d);
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float db[2] = {d * (0.5f + static_cast<float>(b.scales[ib] & 0xf)) * 0.25f,
                         d * (0.5f + static_cast<float>(b.scales[ib] >> 4)) * 0.25f};
    for (int l = 0; l < 4; ++l) {
      const uint16_t q = b.qs[4 * ib + l];
      const uint64_t grid = kIq2XsGrid.v[q & 511];
      const uint8_t signs = kIqSigns.v[q >> 9];
      for (int j = 0; j < 8; ++j) {
        y[j] = Signed(db[l / 2] * static_cast<float>(GridByte(grid, j)), signs, j);
      }
      y += 8;
    }
  }
}

void DequantizeIQ2_S(const BlockIQ2_S& b, float* y) {
  const float d = HalfToFloat(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* signs = b.qs + kQK_K / 8;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float db[2] = {d * (0.5f + static_cast<float>(b.scales[ib] & 0xf)) * 0.25f,
                         d * (0.5f + static_cast<float>(b.scales[ib] >> 4)) * 0.25f};
    for (int l = 0; l < 4; ++l) {
      const int index = qs[l] | (((b.qh[ib] >> (2 * l)) & 3) << 8);
      const uint64_t grid = kIq2SGrid.v[index];
      for (int j = 0; j < 8; ++j) {
        y[j] = Signed(db[l / 2] * static_cast<float>(GridByte(grid, j)), signs[l], j);
      }
      y += 8;
    }
    qs += 4;
    signs += 4;
  }
}

void DequantizeIQ3_XXS(const BlockIQ3_XXS& b, float* y) {
  const float d = HalfToFloat(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* scales_and_signs = b.qs + kQK_K / 4;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const uint32_t aux = LoadU32(scales_and_signs + 4 * ib);
    const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = kIqSigns.v[(aux >> (7 * l)) & 127];
      const uint32_t g1 = kIq3XxsGrid.v[qs[2 * l]];
      const uint32_t g2 = kIq3XxsGrid.v[qs[2 * l + 1]];
      for (int j = 0; j < 4; ++j) {
        y[j] = Signed(db * static_cast<float>(GridByte32(g1, j)), signs, j);
        y[j + 4] = Signed(db * static_cast<float>(GridByte32(g2, j)), signs, j + 4);
      }
      y += 8;
    }
    qs += 8;
  }
}

void DequantizeIQ3_S(const BlockIQ3_S& b, float* y) {
  const float d = HalfToFloat(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* signs = b.signs;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const int ls = (b.scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
    const float db = d * static_cast<float>(1 + 2 * ls);
    const uint8_t qh = b.qh[ib];
    for (int l = 0; l < 4; ++l) {
      const uint32_t g1 = kIq3SGrid.v[qs[2 * l] | (((qh >> (2 * l)) & 1) << 8)];
      const uint32_t g2 = kIq3SGrid.v[qs[2 * l + 1] | (((qh >> (2 * l + 1)) & 1) << 8)];
      for (int j = 0; j < 4; ++j) {
        y[j] = Signed(db * static_cast<float>(GridByte32(g1, j)), signs[l], j);
        y[j + 4] = Signed(db * static_cast<float>(GridByte32(g2, j)), signs[l], j + 4);
      }
      y += 8;
    }
    qs += 8;
    signs += 4;
  }
}

void DequantizeIQ1_S(const BlockIQ1_S& b, float* y) {
  const float d = HalfToFloat(b.d);
  const uint8_t* qs = b.qs;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const uint16_t qh = b.qh[ib];
    const float dl = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
    const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
    for (int l = 0; l < 4; ++l) {
      const uint64_t grid = kIq1SGrid.v[qs[l] | (((qh >> (3 * l)) & 7) << 8)];
      for (int j = 0; j < 8; ++j) {
        const int8_t g = static_cast<int8_t>(GridByte(grid, j));
        y[j] = dl * (static_cast<float>(g) + delta);
      }
      y += 8;
    }
    qs += 4;
  }
}

void DequantizeIQ1_M(const BlockIQ1_M& b, float* y) {
  uint16_t sc[4];
  std::memcpy(sc, b.scales, sizeof(sc));
  const uint16_t d16 = static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) |
                                             ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
  const float d = HalfToFloat(d16);
  const uint8_t* qs = b.qs;
  const uint8_t* qh = b.qh;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    const float dl[2] = {d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2))) & 7) + 1),
                         d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 7) + 1)};
    for (int l = 0; l < 4; ++l) {
      const uint8_t h = qh[l / 2] >> (4 * (l % 2));
      const uint64_t grid = kIq1SGrid.v[qs[l] | ((h & 7) << 8)];
      const float delta = h & 0x08 ? -kIq1Delta : kIq1Delta;
      for (int j = 0; j < 8; ++j) {
        const int8_t g = static_cast<int8_t>(GridByte(grid, j));
        y[j] = dl[l / 2] * (static_cast<float>(g) + delta);
      }
      y += 8;
    }
    qs += 4;
    qh += 2;
  }
}

void DequantizeIQ4_NL(const BlockIQ4_NL& b, float* y) {
  const float d = HalfToFloat(b.d);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>(kIq4nlValues[b.qs[j] & 0x0f]);
    y[j + kQK / 2] = d * static_cast<float>(kIq4nlValues[b.qs[j] >> 4]);
  }
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
template <typename Block, void (*fn)(const Block&, float*), int kBlock>
void DequantizeBlocks(const void* src, float* dst, int64_t n) {
  const Block* blocks = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / kBlock; ++i) fn(blocks[i], dst + i * kBlock);
}

}  // namespace

#define MOEFLOW_IQ_DEQUANTIZE_ROW(T, BLOCK)                        \
  void DequantizeRow##T(const void* src, float* dst, int64_t n) {  \
    DequantizeBlocks<Block##T, Dequantize##T, BLOCK>(src, dst, n); \
  }
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ2_XXS, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ2_XS, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ2_S, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ3_XXS, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ3_S, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ1_S, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ1_M, kQK_K)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ4_NL, kQK)
MOEFLOW_IQ_DEQUANTIZE_ROW(IQ4_XS, kQK_K)
#undef MOEFLOW_IQ_DEQUANTIZE_ROW

}  // namespace quants_internal
}  // namespace moeflow
