// The importance-weighted K-quant quantizers (ggml's quantize_row_q2_K_impl
// ... q5_K_impl, what llama-quantize runs with --imatrix), byte for byte:
// per sub-block weights w_i = importance_i · sqrt(σ² + x_i²) (σ² from the
// super-block), make_qkx3_quants / make_qx_quants under those weights, and
// the sub-block scales themselves quantized by make_qp_quants / make_qx_quants
// weighted by each sub-block's total weight; then the shared requantize and
// packing tails of quants_k.cc. (Q6_K's weighted path is quants_k.cc's own.)
// Compiled with -ffp-contract=off, as ggml-base.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

float SumSquares(const float* x, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

void QuantizeQ2_KWeighted(const float* x, const float* qw, BlockQ2_K* b) {
  uint8_t L[kQK_K];
  uint8_t Laux[16];
  float mins[kQK_K / 16];
  float scales[kQK_K / 16];
  float sw[kQK_K / 16];
  float weight[16];
  uint8_t Ls[kQK_K / 16], Lm[kQK_K / 16];
  const float sigma2 = SumSquares(x, kQK_K) / static_cast<float>(kQK_K);
  for (int j = 0; j < kQK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l) {
      weight[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
    }
    sw[j] = 0.0f;
    for (int l = 0; l < 16; ++l) sw[j] += weight[l];
    scales[j] =
        MakeQkx3Quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
  }
  b->d = FloatToHalf(MakeQpQuants(kQK_K / 16, 15, scales, Ls, sw));
  b->dmin = FloatToHalf(MakeQpQuants(kQK_K / 16, 15, mins, Lm, sw));
  for (int j = 0; j < kQK_K / 16; ++j) b->scales[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
  FinishQ2_K(x, L, b);
}

void QuantizeQ3_KWeighted(const float* x, const float* qw, BlockQ3_K* b) {
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  float weight[16];
  float sw[kQK_K / 16];
  int8_t Ls[kQK_K / 16];
  const float sigma2 = 2.0f * SumSquares(x, kQK_K) / static_cast<float>(kQK_K);
  for (int j = 0; j < kQK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l) {
      weight[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
    }
    float sumw = 0.0f;
    for (int l = 0; l < 16; ++l) sumw += weight[l];
    sw[j] = sumw;
    scales[j] = MakeQxQuants(16, 4, x + 16 * j, L + 16 * j, weight);
  }
  std::memset(b->scales, 0, kKScaleSize);
  const float d_block = MakeQxQuants(kQK_K / 16, 32, scales, Ls, sw);
  for (int j = 0; j < kQK_K / 16; ++j) {
    int l = Ls[j];
    if (j < 8) {
      b->scales[j] = static_cast<uint8_t>(l & 0x0f);
    } else {
      b->scales[j - 8] |= static_cast<uint8_t>((l & 0x0f) << 4);
    }
    l >>= 4;
    b->scales[j % 4 + 8] |= static_cast<uint8_t>(l << (2 * (j / 4)));
  }
  b->d = FloatToHalf(d_block);
  FinishQ3_K(x, L, b);
}

// Q4_K and Q5_K: scales and mins per 32 from make_qkx3_quants, both sets
// quantized to 6 bits by make_qp_quants.
void QuantizeScalesK4Weighted(const float* x, const float* qw, int nmax, uint8_t* L,
                              uint8_t* packed, uint16_t* d_out, uint16_t* dmin_out) {
  uint8_t Laux[32];
  uint8_t Ls[kQK_K / 32], Lm[kQK_K / 32];
  float weights[32];
  float sw[kQK_K / 32];
  float mins[kQK_K / 32];
  float scales[kQK_K / 32];
  const float sigma2 = 2.0f * SumSquares(x, kQK_K) / static_cast<float>(kQK_K);
  for (int j = 0; j < kQK_K / 32; ++j) {
    for (int l = 0; l < 32; ++l) {
      weights[l] = qw[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
    }
    float sumw = 0.0f;
    for (int l = 0; l < 32; ++l) sumw += weights[l];
    sw[j] = sumw;
    scales[j] =
        MakeQkx3Quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
  }
  const float d_block = MakeQpQuants(kQK_K / 32, 63, scales, Ls, sw);
  const float m_block = MakeQpQuants(kQK_K / 32, 63, mins, Lm, sw);
  for (int j = 0; j < kQK_K / 32; ++j) {
    // Q5_K clamps to 6 bits; Q4_K's levels are ≤ 63 already (make_qp_quants).
    Ls[j] = std::min<uint8_t>(63, Ls[j]);
    Lm[j] = std::min<uint8_t>(63, Lm[j]);
  }
  PackScalesK4(Ls, Lm, packed);
  *d_out = FloatToHalf(d_block);
  *dmin_out = FloatToHalf(m_block);
  RequantizeK4(x, nmax, packed, *d_out, *dmin_out, L);
}

void QuantizeQ4_KWeighted(const float* x, const float* qw, BlockQ4_K* b) {
  uint8_t L[kQK_K];
  QuantizeScalesK4Weighted(x, qw, 15, L, b->scales, &b->d, &b->dmin);
  PackQ4_K(L, b);
}

void QuantizeQ5_KWeighted(const float* x, const float* qw, BlockQ5_K* b) {
  uint8_t L[kQK_K];
  QuantizeScalesK4Weighted(x, qw, 31, L, b->scales, &b->d, &b->dmin);
  PackQ5_K(L, b);
}

template <typename Block, void (*fn)(const float*, const float*, Block*)>
void QuantizeRowWeighted(const float* src, void* dst, int64_t n, const float* importance) {
  Block* blocks = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    fn(src + i * kQK_K, importance + i * kQK_K, &blocks[i]);
  }
}

}  // namespace

void QuantizeRowQ2_KWeighted(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeRowWeighted<BlockQ2_K, QuantizeQ2_KWeighted>(src, dst, n, importance);
}
void QuantizeRowQ3_KWeighted(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeRowWeighted<BlockQ3_K, QuantizeQ3_KWeighted>(src, dst, n, importance);
}
void QuantizeRowQ4_KWeighted(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeRowWeighted<BlockQ4_K, QuantizeQ4_KWeighted>(src, dst, n, importance);
}
void QuantizeRowQ5_KWeighted(const float* src, void* dst, int64_t n, const float* importance) {
  QuantizeRowWeighted<BlockQ5_K, QuantizeQ5_KWeighted>(src, dst, n, importance);
}

}  // namespace quants_internal
}  // namespace moeflow
