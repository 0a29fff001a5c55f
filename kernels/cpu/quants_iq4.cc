// Quantization to ggml's IQ4_NL and IQ4_XS (quantize_row_iq4_nl_impl, as
// quantize_iq4_nl / quantize_iq4_xs call it with 7 tries), byte for byte with
// the same input and importance: per 32 values the scale that maps the
// extreme value to the outer level, then 15 candidate scales around it, each
// value at its nearest of the 16 non-uniform levels (kIq4nlValues), keeping
// the best weighted least-squares fit; IQ4_XS then quantizes the eight
// sub-block scales to 6 bits against one fp16 d. Weights: importance_i ·
// sqrt(σ² + x_i²), or x_i² without an importance matrix. Compiled with
// -ffp-contract=off, as ggml-base.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "formats/iq_grids.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

constexpr int kTries = 7;

// The fitted scale of one sub-block of 32 values (0 when all are ~0); its
// levels into L.
float FitSubBlock(const float* xb, const float* weight, uint8_t* L) {
  const int8_t* values = kIq4nlValues;
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    const float ax = std::fabs(xb[j]);
    if (ax > amax) {
      amax = ax;
      max = xb[j];
    }
  }
  if (amax < kGroupMaxEps) return 0.0f;
  float d = -max / static_cast<float>(values[0]);
  float id = 1.0f / d;
  float sumqx = 0.0f, sumq2 = 0.0f;
  for (int j = 0; j < 32; ++j) {
    const int l = BestIndexInt8(16, values, id * xb[j]);
    L[j] = static_cast<uint8_t>(l);
    const float q = static_cast<float>(values[l]);
    sumqx += weight[j] * q * xb[j];
    sumq2 += weight[j] * q * q;
  }
  d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
  float best = d * sumqx;
  for (int itry = -kTries; itry <= kTries; ++itry) {
    id = static_cast<float>(itry + values[0]) / max;
    sumqx = sumq2 = 0.0f;
    for (int j = 0; j < 32; ++j) {
      const int l = BestIndexInt8(16, values, id * xb[j]);
      const float q = static_cast<float>(values[l]);
      sumqx += weight[j] * q * xb[j];
      sumq2 += weight[j] * q * q;
    }
    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// σ² of ggml's IQ4 weights: twice the mean square of the super-block.
float Sigma2(const float* x, int n) {
  float s = 0.0f;
  for (int j = 0; j < n; ++j) s += x[j] * x[j];
  return s * (2.0f / static_cast<float>(n));
}

void Weights(const float* xb, const float* qw, float sigma2, float* weight) {
  if (qw != nullptr) {
    for (int j = 0; j < 32; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
  } else {
    for (int j = 0; j < 32; ++j) weight[j] = xb[j] * xb[j];
  }
}

// Low nibbles: values 0..15 of each 32, high nibbles 16..31.
void PackNibbles(const uint8_t* L, int n, uint8_t* q4) {
  for (int i = 0; i < n / 32; ++i) {
    for (int j = 0; j < 16; ++j) {
      q4[16 * i + j] = static_cast<uint8_t>(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }
  }
}

void QuantizeIQ4_NL(const float* x, const float* qw, BlockIQ4_NL* y) {
  float weight[32];
  uint8_t L[32];
  Weights(x, qw, Sigma2(x, 32), weight);
  const float scale = FitSubBlock(x, weight, L);
  y->d = FloatToHalf(scale);
  const float id = scale != 0.0f ? 1.0f / scale : 0.0f;
  for (int j = 0; j < 32; ++j)
    L[j] = static_cast<uint8_t>(BestIndexInt8(16, kIq4nlValues, id * x[j]));
  PackNibbles(L, 32, y->qs);
}

void QuantizeIQ4_XS(const float* x, const float* qw, BlockIQ4_XS* y) {
  float weight[32];
  float scales[kQK_K / 32];
  uint8_t L[kQK_K];
  const float sigma2 = Sigma2(x, kQK_K);
  float max_scale = 0.0f, amax_scale = 0.0f;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    Weights(x + 32 * ib, qw != nullptr ? qw + 32 * ib : nullptr, sigma2, weight);
    scales[ib] = FitSubBlock(x + 32 * ib, weight, L + 32 * ib);
    const float abs_d = std::fabs(scales[ib]);
    if (abs_d > amax_scale) {
      amax_scale = abs_d;
      max_scale = scales[ib];
    }
  }
  const float d = -max_scale / 32.0f;
  y->d = FloatToHalf(d);
  y->scales_h = 0;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int ib = 0; ib < kQK_K / 32; ++ib) {
    int l = std::max(-32, std::min(31, NearestInt(id * scales[ib])));
    const float dl = d * static_cast<float>(l);
    const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
    for (int j = 0; j < 32; ++j) {
      L[32 * ib + j] = static_cast<uint8_t>(BestIndexInt8(16, kIq4nlValues, idl * x[32 * ib + j]));
    }
    l += 32;
    const uint8_t l_l = static_cast<uint8_t>(l & 0xf);
    const uint8_t l_h = static_cast<uint8_t>(l >> 4);
    y->scales_l[ib / 2] =
        static_cast<uint8_t>(ib % 2 == 0 ? l_l : y->scales_l[ib / 2] | (l_l << 4));
    y->scales_h = static_cast<uint16_t>(y->scales_h | (l_h << (2 * ib)));
  }
  PackNibbles(L, kQK_K, y->qs);
}

}  // namespace

void QuantizeRowIQ4_NL(const float* src, void* dst, int64_t n, const float* importance) {
  BlockIQ4_NL* blocks = static_cast<BlockIQ4_NL*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i) {
    QuantizeIQ4_NL(src + i * kQK, importance != nullptr ? importance + i * kQK : nullptr,
                   &blocks[i]);
  }
}

void QuantizeRowIQ4_XS(const float* src, void* dst, int64_t n, const float* importance) {
  BlockIQ4_XS* blocks = static_cast<BlockIQ4_XS*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    QuantizeIQ4_XS(src + i * kQK_K, importance != nullptr ? importance + i * kQK_K : nullptr,
                   &blocks[i]);
  }
}

}  // namespace quants_internal
}  // namespace moeflow
