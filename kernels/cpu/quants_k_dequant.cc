// Dequantization of ggml's K-quants Q2_K ... Q6_K and Q8_K
// (dequantize_row_*), bit for bit.
#include <cstdint>

#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

// ggml computes each value in the order kept below (e.g. `d * sc * q` left
// to right); the BUILD file compiles this file with -ffp-contract=off.

namespace moeflow {
namespace quants_internal {
namespace {

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

// `fn` is a template argument so that the per-block kernel inlines.
template <typename Block, void (*fn)(const Block&, float*)>
void DequantizeBlocks(const void* src, float* dst, int64_t n) {
  const Block* blocks = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) fn(blocks[i], dst + i * kQK_K);
}

}  // namespace

void DequantizeRowQ2_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ2_K, DequantizeQ2_K>(src, dst, n);
}

void DequantizeRowQ3_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ3_K, DequantizeQ3_K>(src, dst, n);
}

void DequantizeRowQ4_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ4_K, DequantizeQ4_K>(src, dst, n);
}

void DequantizeRowQ5_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ5_K, DequantizeQ5_K>(src, dst, n);
}

void DequantizeRowQ6_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ6_K, DequantizeQ6_K>(src, dst, n);
}

void DequantizeRowQ8_K(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ8_K, DequantizeQ8_K>(src, dst, n);
}

}  // namespace quants_internal
}  // namespace moeflow
