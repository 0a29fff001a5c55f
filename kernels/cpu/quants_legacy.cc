// ggml's legacy 32-element formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: dequantize
// (dequantize_row_*) and quantize (quantize_row_*_ref), bit for bit.
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

// ---------------------------------------------------------------------------
// Quantization of the legacy 32-element formats (ggml's quantize_row_*_ref).

}  // namespace

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

namespace {

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
  b->d = FloatToHalf(d);
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
  b->d = FloatToHalf(d);
  b->m = FloatToHalf(min);
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
  b->d = FloatToHalf(d);
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
  b->d = FloatToHalf(d);
  b->m = FloatToHalf(min);
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
  b->d = FloatToHalf(d);
  // roundf: halves away from zero (not nearest-even as the K-quants).
  for (int j = 0; j < kQK; ++j) b->qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
}

// `fn` is a template argument so that the per-block kernel inlines.
template <typename Block, void (*fn)(const Block&, float*), int kBlock>
void DequantizeBlocks(const void* src, float* dst, int64_t n) {
  const Block* blocks = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / kBlock; ++i) fn(blocks[i], dst + i * kBlock);
}

template <typename Block, void (*fn)(const float*, Block*), int kBlock>
void QuantizeBlocks(const float* src, void* dst, int64_t n) {
  Block* blocks = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kBlock; ++i) fn(src + i * kBlock, &blocks[i]);
}

// --- importance-weighted (ggml's quantize_row_q{4,5}_{0,1}_impl) ----------
// Weights w_i = importance_i · sqrt(σ² + x_i²), σ² the mean square of the
// whole row; Q4_0 / Q5_0 search a symmetric scale (make_qx_quants), Q4_1 /
// Q5_1 a scale and a min (make_qkx3_quants).

float RowSigma2(const float* x, int64_t n) {
  float sum_x2 = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  return sum_x2 / static_cast<float>(n);
}

void BlockWeights(const float* xb, const float* qw, float sigma2, float* weight) {
  for (int j = 0; j < kQK; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
}

// Low 4 bits of L[j] / L[j + 16] into qs, the fifth bits into qh (Q5 types).
void PackNibbles(const uint8_t* L, uint8_t* qs, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = static_cast<uint8_t>((L[j] & 0x0f) | ((L[j + kQK / 2] & 0x0f) << 4));
    h |= static_cast<uint32_t>((L[j] & 0x10u) >> 4) << j;
    h |= static_cast<uint32_t>((L[j + kQK / 2] & 0x10u) >> 4) << (j + kQK / 2);
  }
  if (qh != nullptr) std::memcpy(qh, &h, sizeof(h));
}

template <int kNmax>
void QuantizeSymmetricWeighted(const float* x, void* dst, int64_t n, const float* importance) {
  const float sigma2 = RowSigma2(x, n);
  float weight[kQK];
  int8_t L[kQK];
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const float* xb = x + kQK * ib;
    BlockWeights(xb, importance + kQK * ib, sigma2, weight);
    const uint16_t d = FloatToHalf(MakeQxQuants(kQK, kNmax, xb, L, weight));
    if (kNmax == 8) {
      BlockQ4_0& b = static_cast<BlockQ4_0*>(dst)[ib];
      b.d = d;
      PackNibbles(reinterpret_cast<const uint8_t*>(L), b.qs, nullptr);
    } else {
      BlockQ5_0& b = static_cast<BlockQ5_0*>(dst)[ib];
      b.d = d;
      PackNibbles(reinterpret_cast<const uint8_t*>(L), b.qs, b.qh);
    }
  }
}

template <int kNmax>
void QuantizeMinWeighted(const float* x, void* dst, int64_t n, const float* importance) {
  const float sigma2 = RowSigma2(x, n);
  float weight[kQK];
  uint8_t L[kQK], Laux[kQK];
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const float* xb = x + kQK * ib;
    BlockWeights(xb, importance + kQK * ib, sigma2, weight);
    float min;
    const uint16_t d =
        FloatToHalf(MakeQkx3Quants(kQK, kNmax, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36));
    if (kNmax == 15) {
      BlockQ4_1& b = static_cast<BlockQ4_1*>(dst)[ib];
      b.d = d;
      b.m = FloatToHalf(-min);
      PackNibbles(L, b.qs, nullptr);
    } else {
      BlockQ5_1& b = static_cast<BlockQ5_1*>(dst)[ib];
      b.d = d;
      b.m = FloatToHalf(-min);
      PackNibbles(L, b.qs, b.qh);
    }
  }
}

}  // namespace

void DequantizeRowQ4_0(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ4_0, DequantizeQ4_0, kQK>(src, dst, n);
}
void QuantizeRowQ4_0(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeSymmetricWeighted<8>(src, dst, n, importance);
  QuantizeBlocks<BlockQ4_0, QuantizeQ4_0, kQK>(src, dst, n);
}

void DequantizeRowQ4_1(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ4_1, DequantizeQ4_1, kQK>(src, dst, n);
}
void QuantizeRowQ4_1(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeMinWeighted<15>(src, dst, n, importance);
  QuantizeBlocks<BlockQ4_1, QuantizeQ4_1, kQK>(src, dst, n);
}

void DequantizeRowQ5_0(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ5_0, DequantizeQ5_0, kQK>(src, dst, n);
}
void QuantizeRowQ5_0(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeSymmetricWeighted<16>(src, dst, n, importance);
  QuantizeBlocks<BlockQ5_0, QuantizeQ5_0, kQK>(src, dst, n);
}

void DequantizeRowQ5_1(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ5_1, DequantizeQ5_1, kQK>(src, dst, n);
}
void QuantizeRowQ5_1(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance != nullptr) return QuantizeMinWeighted<31>(src, dst, n, importance);
  QuantizeBlocks<BlockQ5_1, QuantizeQ5_1, kQK>(src, dst, n);
}

void DequantizeRowQ8_0(const void* src, float* dst, int64_t n) {
  DequantizeBlocks<BlockQ8_0, DequantizeQ8_0, kQK>(src, dst, n);
}
void QuantizeRowQ8_0(const float* src, void* dst, int64_t n, const float* importance) {
  (void)importance;
  QuantizeBlocks<BlockQ8_0, QuantizeQ8_0, kQK>(src, dst, n);
}

}  // namespace quants_internal
}  // namespace moeflow
