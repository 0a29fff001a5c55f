// The scalar reference of kernels/cpu/matmul: ggml's activation quantizers
// (from_float of each vec_dot_type) and generic vec_dot arithmetic, one
// function per weight type (declared in matmul_internal.h). Compiled with
// -ffp-contract=off so a*b+c stays two roundings, as in ggml's reference.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/check.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

float H2F(uint16_t h) { return Fp16ToFp32(h); }

}  // namespace

// ---------------------------------------------------------------------------
// Activation quantization (ggml's from_float of each vec_dot_type).

// ggml x86 quantize_row_q8_0: d = amax / 127, q = round_half_even(x * (127 / amax)).
void QuantizeRowQ8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    y[i].d = Fp32ToFp16(d);
    for (int j = 0; j < kQK; ++j) {
      const float v = std::nearbyint(x[j] * id);  // default mode: half to even
      y[i].qs[j] = static_cast<int8_t>(std::min(127.f, std::max(-128.f, v)));
    }
  }
}

// ggml x86 quantize_row_q8_1: as Q8_0, plus s = d * Σ q.
void QuantizeRowQ8_1(const float* x, BlockQ8_1* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    y[i].d = Fp32ToFp16(d);
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const float v = std::nearbyint(x[j] * id);
      y[i].qs[j] = static_cast<int8_t>(std::min(127.f, std::max(-128.f, v)));
      sum += y[i].qs[j];
    }
    y[i].s = Fp32ToFp16(d * static_cast<float>(sum));
  }
}

// ggml quantize_row_q8_K_ref: iscale = -127 / max (max the signed value of
// largest magnitude, first one on ties), d = 1 / iscale.
void QuantizeRowQ8_K(const float* x, BlockQ8_K* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    float max = 0.f, amax = 0.f;
    for (int j = 0; j < kQK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.f) {
      std::memset(&y[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < kQK_K; ++j) {
      const int v = static_cast<int>(std::nearbyint(iscale * x[j]));
      y[i].qs[j] = static_cast<int8_t>(std::min(127, v));
    }
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[i].qs[g * 16 + l];
      y[i].bsums[g] = static_cast<int16_t>(sum);
    }
    y[i].d = 1.f / iscale;
  }
}

namespace {

// ---------------------------------------------------------------------------
// Scalar reference vec_dots: ggml's generic ggml_vec_dot_*, same arithmetic.

float DotF32(int64_t n, const void* vx, const void* vy) {
  const float* x = static_cast<const float*>(vx);
  const float* y = static_cast<const float*>(vy);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * y[i]);
  return static_cast<float>(sum);
}

float DotF16(int64_t n, const void* vx, const void* vy) {
  const uint16_t* x = static_cast<const uint16_t*>(vx);
  const uint16_t* y = static_cast<const uint16_t*>(vy);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(H2F(x[i]) * H2F(y[i]));
  return static_cast<float>(sum);
}

float DotBf16(int64_t n, const void* vx, const void* vy) {
  const uint16_t* x = static_cast<const uint16_t*>(vx);
  const uint16_t* y = static_cast<const uint16_t*>(vy);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(Bf16ToFp32(x[i]) * Bf16ToFp32(y[i]));
  return static_cast<float>(sum);
}

float DotQ4_0(int64_t n, const void* vx, const void* vy) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(vx);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    int sumi0 = 0, sumi1 = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi0 += ((x[ib].qs[j] & 0x0F) - 8) * y[ib].qs[j];
      sumi1 += ((x[ib].qs[j] >> 4) - 8) * y[ib].qs[j + kQK / 2];
    }
    const int sumi = sumi0 + sumi1;
    sumf += static_cast<float>(sumi) * H2F(x[ib].d) * H2F(y[ib].d);
  }
  return sumf;
}

float DotQ4_1(int64_t n, const void* vx, const void* vy) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(vx);
  const BlockQ8_1* y = static_cast<const BlockQ8_1*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    int sumi0 = 0, sumi1 = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi0 += (x[ib].qs[j] & 0x0F) * y[ib].qs[j];
      sumi1 += (x[ib].qs[j] >> 4) * y[ib].qs[j + kQK / 2];
    }
    const int sumi = sumi0 + sumi1;
    sumf += (H2F(x[ib].d) * H2F(y[ib].d)) * static_cast<float>(sumi) + H2F(x[ib].m) * H2F(y[ib].s);
  }
  return sumf;
}

float DotQ5_0(int64_t n, const void* vx, const void* vy) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(vx);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const uint32_t qh = LoadU32(x[ib].qh);
    int sumi0 = 0, sumi1 = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = ((x[ib].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
      const int x1 = ((x[ib].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
      sumi0 += x0 * y[ib].qs[j];
      sumi1 += x1 * y[ib].qs[j + kQK / 2];
    }
    const int sumi = sumi0 + sumi1;
    sumf += (H2F(x[ib].d) * H2F(y[ib].d)) * static_cast<float>(sumi);
  }
  return sumf;
}

float DotQ5_1(int64_t n, const void* vx, const void* vy) {
  const BlockQ5_1* x = static_cast<const BlockQ5_1*>(vx);
  const BlockQ8_1* y = static_cast<const BlockQ8_1*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const uint32_t qh = LoadU32(x[ib].qh);
    int sumi0 = 0, sumi1 = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = (x[ib].qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
      const int x1 = (x[ib].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      sumi0 += x0 * y[ib].qs[j];
      sumi1 += x1 * y[ib].qs[j + kQK / 2];
    }
    const int sumi = sumi0 + sumi1;
    sumf += (H2F(x[ib].d) * H2F(y[ib].d)) * static_cast<float>(sumi) + H2F(x[ib].m) * H2F(y[ib].s);
  }
  return sumf;
}

float DotQ8_0(int64_t n, const void* vx, const void* vy) {
  const BlockQ8_0* x = static_cast<const BlockQ8_0*>(vx);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(vy);
  float sumf = 0.f;
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += x[ib].qs[j] * y[ib].qs[j];
    sumf += static_cast<float>(sumi) * (H2F(x[ib].d) * H2F(y[ib].d));
  }
  return sumf;
}

float DotQ2_K(int64_t n, const void* vx, const void* vy) {
  const BlockQ2_K* x = static_cast<const BlockQ2_K*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sumf = 0.f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const uint8_t* q2 = x[i].qs;
    const int8_t* q8 = y[i].qs;
    const uint8_t* sc = x[i].scales;
    int summs = 0;
    for (int j = 0; j < 16; ++j) summs += y[i].bsums[j] * (sc[j] >> 4);
    const float dall = y[i].d * H2F(x[i].d);
    const float dmin = y[i].d * H2F(x[i].dmin);
    int isum = 0, is = 0;
    for (int k = 0; k < kQK_K / 128; ++k) {
      int shift = 0;
      for (int j = 0; j < 4; ++j) {
        int d = sc[is++] & 0xF;
        int isuml = 0;
        for (int l = 0; l < 16; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
        isum += d * isuml;
        d = sc[is++] & 0xF;
        isuml = 0;
        for (int l = 16; l < 32; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
        isum += d * isuml;
        shift += 2;
        q8 += 32;
      }
      q2 += 32;
    }
    sumf += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return sumf;
}

// The 16 signed 6-bit scales of a Q3_K block, minus 32.
void Q3KScales(const uint8_t* packed, int8_t* out) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (packed[j] & 0xF) : (packed[j - 8] >> 4);
    const int high = (packed[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    out[j] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
}

// Sums of the K-quant generic kernels: 8 integer lanes per block, each lane
// turned into float with the block scale and kept in its own float sum.
float DotQ3_K(int64_t n, const void* vx, const void* vy) {
  const BlockQ3_K* x = static_cast<const BlockQ3_K*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sums[8] = {0};
  int8_t a[kQK_K];
  int8_t scales[16];
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const uint8_t* q3 = x[i].qs;
    const uint8_t* hm = x[i].hmask;
    int8_t* p = a;
    uint8_t m = 1;
    for (int j = 0; j < kQK_K; j += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int l = 0; l < 32; ++l) {
          p[l] = static_cast<int8_t>(((q3[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
        }
        p += 32;
        m <<= 1;
      }
      q3 += 32;
    }
    Q3KScales(x[i].scales, scales);
    int32_t aux32[8] = {0};
    const int8_t* q8 = y[i].qs;
    p = a;
    for (int j = 0; j < kQK_K / 16; ++j) {
      for (int half = 0; half < 2; ++half) {
        for (int l = 0; l < 8; ++l) {
          const int16_t prod = static_cast<int16_t>(q8[l] * p[l]);
          aux32[l] += scales[j] * prod;
        }
        q8 += 8;
        p += 8;
      }
    }
    const float d = H2F(x[i].d) * y[i].d;
    for (int l = 0; l < 8; ++l) sums[l] += d * static_cast<float>(aux32[l]);
  }
  float sumf = 0.f;
  for (int l = 0; l < 8; ++l) sumf += sums[l];
  return sumf;
}

// get_scale_min_k4 for all 8 sub-blocks.
void Q4KScalesMins(const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = q[j] & 63;
      mn[j] = q[j + 4] & 63;
    } else {
      sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
      mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
  }
}

// Q4_K and Q5_K share everything but the unpacking of q.
template <bool kFiveBit>
float DotQ45_K(int64_t n, const void* vx, const void* vy) {
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sums[8] = {0};
  float sumf = 0.f;
  int8_t a[kQK_K];
  uint8_t sc[8], mn[8];
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const uint8_t* q4;
    const uint8_t* hm = nullptr;
    const uint8_t* scales;
    uint16_t xd, xdmin;
    if (kFiveBit) {
      const BlockQ5_K& b = static_cast<const BlockQ5_K*>(vx)[i];
      q4 = b.qs;
      hm = b.qh;
      scales = b.scales;
      xd = b.d;
      xdmin = b.dmin;
    } else {
      const BlockQ4_K& b = static_cast<const BlockQ4_K*>(vx)[i];
      q4 = b.qs;
      scales = b.scales;
      xd = b.d;
      xdmin = b.dmin;
    }
    int8_t* p = a;
    uint8_t m = 1;
    for (int j = 0; j < kQK_K / 64; ++j) {
      for (int l = 0; l < 32; ++l) p[l] = static_cast<int8_t>(q4[l] & 0xF);
      if (kFiveBit) {
        for (int l = 0; l < 32; ++l) p[l] += (hm[l] & m) ? 16 : 0;
      }
      p += 32;
      m <<= 1;
      for (int l = 0; l < 32; ++l) p[l] = static_cast<int8_t>(q4[l] >> 4);
      if (kFiveBit) {
        for (int l = 0; l < 32; ++l) p[l] += (hm[l] & m) ? 16 : 0;
      }
      p += 32;
      m <<= 1;
      q4 += 32;
    }
    Q4KScalesMins(scales, sc, mn);
    int sumi = 0;
    for (int j = 0; j < kQK_K / 16; ++j) sumi += y[i].bsums[j] * mn[j / 2];
    int32_t aux32[8] = {0};
    const int8_t* q8 = y[i].qs;
    p = a;
    for (int j = 0; j < kQK_K / 32; ++j) {
      const int32_t scale = sc[j];
      for (int quarter = 0; quarter < 4; ++quarter) {
        for (int l = 0; l < 8; ++l) aux32[l] += scale * static_cast<int16_t>(q8[l] * p[l]);
        q8 += 8;
        p += 8;
      }
    }
    const float d = H2F(xd) * y[i].d;
    for (int l = 0; l < 8; ++l) sums[l] += d * static_cast<float>(aux32[l]);
    const float dmin = H2F(xdmin) * y[i].d;
    sumf -= dmin * static_cast<float>(sumi);
  }
  for (int l = 0; l < 8; ++l) sumf += sums[l];
  return sumf;
}

float DotQ6_K(int64_t n, const void* vx, const void* vy) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(vx);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(vy);
  float sums[8] = {0};
  int8_t a[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    int8_t* p = a;
    for (int j = 0; j < kQK_K; j += 128) {
      for (int l = 0; l < 32; ++l) {
        p[l + 0] = static_cast<int8_t>(((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        p[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        p[l + 64] = static_cast<int8_t>(((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        p[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
      p += 128;
      ql += 64;
      qh += 32;
    }
    int32_t aux32[8] = {0};
    const int8_t* q8 = y[i].qs;
    p = a;
    for (int j = 0; j < kQK_K / 16; ++j) {
      const int scale = x[i].scales[j];
      for (int half = 0; half < 2; ++half) {
        for (int l = 0; l < 8; ++l) aux32[l] += scale * static_cast<int16_t>(q8[l] * p[l]);
        q8 += 8;
        p += 8;
      }
    }
    const float d = H2F(x[i].d) * y[i].d;
    for (int l = 0; l < 8; ++l) sums[l] += d * static_cast<float>(aux32[l]);
  }
  float sumf = 0.f;
  for (int l = 0; l < 8; ++l) sumf += sums[l];
  return sumf;
}

}  // namespace

VecDotFn ScalarVecDot(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return DotF32;
    case GgmlType::kF16:
      return DotF16;
    case GgmlType::kBF16:
      return DotBf16;
    case GgmlType::kQ4_0:
      return DotQ4_0;
    case GgmlType::kQ4_1:
      return DotQ4_1;
    case GgmlType::kQ5_0:
      return DotQ5_0;
    case GgmlType::kQ5_1:
      return DotQ5_1;
    case GgmlType::kQ8_0:
      return DotQ8_0;
    case GgmlType::kQ2_K:
      return DotQ2_K;
    case GgmlType::kQ3_K:
      return DotQ3_K;
    case GgmlType::kQ4_K:
      return DotQ45_K<false>;
    case GgmlType::kQ5_K:
      return DotQ45_K<true>;
    case GgmlType::kQ6_K:
      return DotQ6_K;
    default:
      return ScalarIqVecDot(type);
  }
}

}  // namespace moeflow
