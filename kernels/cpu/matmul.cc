#include "kernels/cpu/matmul.h"

#include <cpuid.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/check.h"
#include "base/knobs.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

// ---------------------------------------------------------------------------
// CPU features.

uint64_t Xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

struct CpuFeatures {
  bool avx2 = false;
  bool avx512 = false;
  bool avx512_no_vnni = false;  // F, BW, VL, DQ (VNNI or not)
  bool avx512bf16 = false;
  bool amx = false;  // AMX-TILE + AMX-INT8, enabled in XCR0, permitted by the kernel
};

CpuFeatures DetectFeatures() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1;
  const bool f16c = (c >> 29) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = Xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;             // XMM and YMM state
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = (b >> 5) & 1;
  const bool avx512f = (b >> 16) & 1;
  const bool avx512dq = (b >> 17) & 1;
  const bool avx512bw = (b >> 30) & 1;
  const bool avx512vl = (b >> 31) & 1;
  const bool avx512vnni = (c >> 11) & 1;
  f.avx2 = os_avx && avx2 && fma && f16c;
  f.avx512_no_vnni = f.avx2 && os_avx512 && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512 = f.avx512_no_vnni && avx512vnni;
  const bool amx_tile = (d >> 24) & 1;
  const bool amx_int8 = (d >> 25) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512bf16 = f.avx512 && ((a >> 5) & 1);
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
  f.amx = f.avx512bf16 && amx_tile && amx_int8 && os_amx && AmxRequestPermission();
  return f;
}

const CpuFeatures& Features() {
  static const CpuFeatures features = DetectFeatures();
  return features;
}

CpuIsa BestIsa() {
  if (Features().amx) return CpuIsa::kAmx;
  if (Features().avx512bf16) return CpuIsa::kAvx512Bf16;
  if (Features().avx512) return CpuIsa::kAvx512;
  if (Features().avx512_no_vnni) return CpuIsa::kAvx512NoVnni;
  if (Features().avx2) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa IsaFromEnvironment() {
  CpuIsa isa = BestIsa();
  const std::string v = KnobString(Knob::kIsa);
  if (v.empty()) return isa;
  CpuIsa wanted = isa;
  if (v == "scalar") wanted = CpuIsa::kScalar;
  if (v == "avx2") wanted = CpuIsa::kAvx2;
  if (v == "avx512") wanted = CpuIsa::kAvx512;
  if (v == "avx512f") wanted = CpuIsa::kAvx512NoVnni;
  if (v == "avx512bf16") wanted = CpuIsa::kAvx512Bf16;
  if (v == "amx") wanted = CpuIsa::kAmx;
  // An ISA the CPU lacks falls back to the best it has.
  return CpuSupportsIsa(wanted) ? wanted : isa;
}

// The ISAs whose kernels include the AVX-512 VNNI tables.
bool IsAvx512Vnni(CpuIsa isa) {
  return isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16 || isa == CpuIsa::kAmx;
}

// The SIMD tables of `isa` (nullptr for kScalar): kAvx512Bf16 and kAmx
// run the AVX-512 VNNI ones for everything but their own special cases.
const SimdVecDots* SimdTable(CpuIsa isa) {
  if (isa == CpuIsa::kAvx2) return &Avx2VecDots();
  if (isa == CpuIsa::kAvx512NoVnni) return &Avx512NoVnniVecDots();
  if (IsAvx512Vnni(isa)) return &Avx512VecDots();
  return nullptr;
}

// kAmx's Q8_0 GEMM: AMX tiles from 16 tokens on (a 16-token tile column is
// the AMX unit of work), the AVX-512 VNNI tiles below that (decode).
constexpr int64_t kAmxMinTokens = 16;

void GemmQ8_0Amx(int64_t cols, const uint8_t* w, int64_t w_row_bytes, int64_t n_rows,
                 const uint8_t* act, int64_t act_row_bytes, int64_t n_tokens, float* y,
                 int64_t y_stride) {
  if (n_tokens < kAmxMinTokens) {
    Avx512VecDots().gemm_q8_0(cols, w, w_row_bytes, n_rows, act, act_row_bytes, n_tokens, y,
                              y_stride);
  } else {
    AmxGemmQ8_0(cols, w, w_row_bytes, n_rows, act, act_row_bytes, n_tokens, y, y_stride);
  }
}

// ---------------------------------------------------------------------------
// Activation quantization (ggml's from_float of each vec_dot_type).

float H2F(uint16_t h) { return Fp16ToFp32(h); }

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

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
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
      return nullptr;
  }
}

VecDotFn SimdVecDot(const SimdVecDots& t, GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return t.f32;
    case GgmlType::kF16:
      return t.f16;
    case GgmlType::kBF16:
      return t.bf16;
    case GgmlType::kQ8_0:
      return t.q8_0;
    case GgmlType::kQ5_0:
      return t.q5_0;
    case GgmlType::kQ4_K:
      return t.q4_k;
    case GgmlType::kQ6_K:
      return t.q6_k;
    default:
      return nullptr;
  }
}

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx512NoVnni:
      return "avx512f";
    case CpuIsa::kAvx512Bf16:
      return "avx512bf16";
    case CpuIsa::kAmx:
      return "amx";
  }
  return "?";
}

bool CpuSupportsIsa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
    case CpuIsa::kAvx2:
      return Features().avx2;
    case CpuIsa::kAvx512:
      return Features().avx512;
    case CpuIsa::kAvx512NoVnni:
      return Features().avx512_no_vnni;
    case CpuIsa::kAvx512Bf16:
      return Features().avx512bf16;
    case CpuIsa::kAmx:
      return Features().amx;
  }
  return false;
}

CpuIsa SelectedIsa() {
  static const CpuIsa isa = IsaFromEnvironment();
  return isa;
}

bool MatmulSupports(GgmlType weight_type) { return ScalarVecDot(weight_type) != nullptr; }

GgmlType ActivationType(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return weight_type;
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      return GgmlType::kQ8_0;
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
      return GgmlType::kQ8_1;
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return GgmlType::kQ8_K;
    default:
      MOEFLOW_CHECK(false && "type not supported by Matmul");
  }
  return GgmlType::kF32;
}

int64_t ActivationRowBytes(GgmlType weight_type, int64_t cols) {
  const GgmlTypeTraits& t = Traits(ActivationType(weight_type));
  MOEFLOW_CHECK(cols % t.block_size == 0);
  return cols / t.block_size * t.type_size;
}

void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out) {
  QuantizeActivations(weight_type, x, n_rows, cols, x_stride, out, SelectedIsa());
}

void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out, CpuIsa isa) {
  const GgmlType at = ActivationType(weight_type);
  const int64_t row_bytes = ActivationRowBytes(weight_type, cols);
  // The SIMD quantizer of `isa`, if it has one for this activation type.
  const SimdVecDots* simd = SimdTable(isa);
  QuantizeRowFn fast = nullptr;
  if (simd != nullptr) {
    fast = at == GgmlType::kQ8_0   ? simd->quantize_q8_0
           : at == GgmlType::kQ8_1 ? simd->quantize_q8_1
           : at == GgmlType::kQ8_K ? simd->quantize_q8_k
                                   : nullptr;
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * x_stride;
    uint8_t* o = out + r * row_bytes;
    if (fast != nullptr) {
      fast(xr, o, cols);
      continue;
    }
    switch (at) {
      case GgmlType::kF32:
        std::memcpy(o, xr, static_cast<size_t>(cols) * sizeof(float));
        break;
      case GgmlType::kF16: {
        uint16_t* h = reinterpret_cast<uint16_t*>(o);
        for (int64_t i = 0; i < cols; ++i) h[i] = Fp32ToFp16(xr[i]);
        break;
      }
      case GgmlType::kBF16: {
        uint16_t* h = reinterpret_cast<uint16_t*>(o);
        for (int64_t i = 0; i < cols; ++i) h[i] = Fp32ToBf16(xr[i]);
        break;
      }
      case GgmlType::kQ8_0:
        QuantizeRowQ8_0(xr, reinterpret_cast<BlockQ8_0*>(o), cols);
        break;
      case GgmlType::kQ8_1:
        QuantizeRowQ8_1(xr, reinterpret_cast<BlockQ8_1*>(o), cols);
        break;
      case GgmlType::kQ8_K:
        QuantizeRowQ8_K(xr, reinterpret_cast<BlockQ8_K*>(o), cols);
        break;
      default:
        MOEFLOW_CHECK(false);
    }
  }
}

VecDotFn GetVecDot(GgmlType weight_type, CpuIsa isa) {
  VecDotFn fn = nullptr;
  if ((isa == CpuIsa::kAvx512Bf16 || isa == CpuIsa::kAmx) && weight_type == GgmlType::kBF16) {
    fn = Avx512Bf16VecDots().bf16;
  }
  const SimdVecDots* simd = SimdTable(isa);
  if (fn == nullptr && simd != nullptr) fn = SimdVecDot(*simd, weight_type);
  if (fn == nullptr) fn = ScalarVecDot(weight_type);
  MOEFLOW_CHECK(fn != nullptr);
  return fn;
}

MatmulWeight MatmulWeight::Slice(int64_t first, int64_t n) const {
  MOEFLOW_CHECK(first >= 0 && first + n <= rows);
  MatmulWeight s = *this;
  s.data = data + first * row_bytes;
  s.rows = n;
  return s;
}

VecDotFn F16ViaBf16VecDot() {
  return Features().avx512bf16 ? Avx512Bf16VecDots().f16_via_bf16 : nullptr;
}

GemmFn SimdGemm(const MatmulWeight& w, CpuIsa isa) {
  const GgmlType type = w.type;
  if (isa == CpuIsa::kAmx && type == GgmlType::kQ8_0 && w.layout == WeightLayout::kGgml) {
    return GemmQ8_0Amx;
  }
  const SimdVecDots* simd = SimdTable(isa);
  if (simd == nullptr) return nullptr;
  const SimdVecDots& t = *simd;
  if (w.layout == WeightLayout::kQ5_0Pairs) return t.gemm_q5_0_pairs;
  switch (type) {
    case GgmlType::kQ8_0:
      return t.gemm_q8_0;
    case GgmlType::kQ5_0:
      return t.gemm_q5_0;
    case GgmlType::kQ4_K:
      return t.gemm_q4_k;
    case GgmlType::kQ6_K:
      return t.gemm_q6_k;
    default:
      return nullptr;
  }
}

// ---------------------------------------------------------------------------
// Repacked layouts (matmul.h: WeightLayout).

namespace {

bool LayoutAllowed(GgmlType type, int64_t cols, WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kGgml:
      return true;
    case WeightLayout::kQ5_0Pairs:
      return type == GgmlType::kQ5_0 && cols > 0 && cols % (2 * kQK) == 0 &&
             cols <= kQ5_0PairsMaxCols;
  }
  return false;
}

// Blocks 2p, 2p + 1 of a Q5_0 row -> one kQ5_0Pairs pair (and back). `in`
// and `out` may be the same 44 bytes.
void PackQ5_0Pair(const uint8_t* in, uint8_t* out) {
  BlockQ5_0 b[2];
  std::memcpy(b, in, sizeof(b));
  uint8_t p[kQ5_0PairBytes];
  // Low 4 bits: qs byte j holds elements j (low nibble) and j + 16 (high).
  for (int j = 0; j < kQK / 2; ++j) {
    p[j] = static_cast<uint8_t>((b[0].qs[j] & 0x0F) | (b[1].qs[j] << 4));
    p[j + kQK / 2] = static_cast<uint8_t>((b[0].qs[j] >> 4) | (b[1].qs[j] & 0xF0));
  }
  // Fifth bits: bits k, 8 + k, 16 + k, 24 + k of a block's qh become bits
  // 0..3 of plane byte k (one multiply gathers them into bits 24..27; the
  // 16 partial products land on distinct bits, so nothing carries).
  const uint32_t qh0 = LoadU32(b[0].qh), qh1 = LoadU32(b[1].qh);
  for (int k = 0; k < 8; ++k) {
    const uint32_t g0 = (((qh0 >> k) & 0x01010101u) * 0x01020408u) >> 24;
    const uint32_t g1 = (((qh1 >> k) & 0x01010101u) * 0x01020408u) >> 24;
    p[32 + k] = static_cast<uint8_t>((g0 & 0x0F) | ((g1 & 0x0F) << 4));
  }
  std::memcpy(p + 40, &b[0].d, 2);
  std::memcpy(p + 42, &b[1].d, 2);
  std::memcpy(out, p, sizeof(p));
}

void UnpackQ5_0Pair(const uint8_t* in, uint8_t* out) {
  uint8_t p[kQ5_0PairBytes];
  std::memcpy(p, in, sizeof(p));
  BlockQ5_0 b[2] = {};
  for (int blk = 0; blk < 2; ++blk) {
    uint8_t q[kQK];
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) {
      const int k = j % 8, lane = j / 8;
      const int hi = (p[32 + k] >> (4 * blk + lane)) & 1;
      q[j] = static_cast<uint8_t>(((p[j] >> (4 * blk)) & 0x0F) | (hi << 4));
      qh |= static_cast<uint32_t>(hi) << j;
    }
    for (int j = 0; j < kQK / 2; ++j) {
      b[blk].qs[j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + kQK / 2] & 0x0F) << 4));
    }
    std::memcpy(b[blk].qh, &qh, 4);
    std::memcpy(&b[blk].d, p + 40 + 2 * blk, 2);
  }
  std::memcpy(out, b, sizeof(b));
}

}  // namespace

const char* WeightLayoutName(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kGgml:
      return "ggml";
    case WeightLayout::kQ5_0Pairs:
      return "q5_0_pairs";
  }
  return "?";
}

WeightLayout PreferredLayout(GgmlType type, int64_t cols, CpuIsa isa) {
  static const bool repack = KnobBool(Knob::kRepack);
  if (repack && isa == CpuIsa::kAvx2 && LayoutAllowed(type, cols, WeightLayout::kQ5_0Pairs)) {
    return WeightLayout::kQ5_0Pairs;
  }
  return WeightLayout::kGgml;
}

namespace {

// `convert` on every 44-byte pair of `rows` rows of `w` (kQ5_0Pairs shape).
void ForEachQ5_0Pair(const MatmulWeight& w, const uint8_t* src, uint8_t* dst, int64_t rows,
                     void (*convert)(const uint8_t*, uint8_t*)) {
  const int64_t pairs = w.cols / (2 * kQK);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t off = r * w.row_bytes + i * kQ5_0PairBytes;
      convert(src + off, dst + off);
    }
  }
}

}  // namespace

void RepackRows(const MatmulWeight& w, WeightLayout to, const uint8_t* src, uint8_t* dst,
                int64_t rows) {
  MOEFLOW_CHECK(w.layout == WeightLayout::kGgml);
  MOEFLOW_CHECK(LayoutAllowed(w.type, w.cols, to));
  if (to == WeightLayout::kGgml) {
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(rows * w.row_bytes));
    return;
  }
  ForEachQ5_0Pair(w, src, dst, rows, PackQ5_0Pair);
}

void UnpackRowsToGgml(const MatmulWeight& w, const uint8_t* src, uint8_t* dst, int64_t rows) {
  if (w.layout == WeightLayout::kGgml) {
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(rows * w.row_bytes));
    return;
  }
  MOEFLOW_CHECK(w.layout == WeightLayout::kQ5_0Pairs && LayoutAllowed(w.type, w.cols, w.layout));
  ForEachQ5_0Pair(w, src, dst, rows, UnpackQ5_0Pair);
}

void MatmulQuantized(const MatmulWeight& w, const uint8_t* act, int64_t n_act_rows, float* y,
                     int64_t y_stride, CpuIsa isa, ThreadPool* pool) {
  if (const GemmFn gemm = SimdGemm(w, isa)) {
    const int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
    // Rows in multiples of 8 per thread (the decode tile height).
    const int64_t units = (w.rows + 7) / 8;
    auto job = [&](int64_t u0, int64_t u1, int /*thread*/) {
      const int64_t r0 = u0 * 8, r1 = std::min(w.rows, u1 * 8);
      gemm(w.cols, w.row(r0), w.row_bytes, r1 - r0, act, act_bytes, n_act_rows, y + r0, y_stride);
    };
    if (pool == nullptr) {
      job(0, units, 0);
    } else {
      pool->ParallelFor(units, job);
    }
    return;
  }
  // Every SIMD ISA has a GEMM for the repacked layouts, so a repacked weight
  // gets here on the scalar path only: its rows are read back into GGUF
  // blocks (a per-thread row buffer) for the scalar reference's vec_dot.
  const bool repacked = w.layout != WeightLayout::kGgml;
  const VecDotFn dot = repacked ? ScalarVecDot(w.type) : GetVecDot(w.type, isa);
  MOEFLOW_CHECK(dot != nullptr);
  const int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
  const int64_t cols = w.cols;
  // Activation rows in tiles, so that a tile stays in L2 while every weight
  // row of the thread's range streams past it once.
  constexpr int64_t kTokenTile = 32;
  auto rows_job = [&](int64_t r0, int64_t r1, int /*thread*/) {
    thread_local std::vector<uint8_t> unpacked;
    if (repacked && static_cast<int64_t>(unpacked.size()) < w.row_bytes) {
      unpacked.resize(static_cast<size_t>(w.row_bytes));
    }
    for (int64_t t0 = 0; t0 < n_act_rows; t0 += kTokenTile) {
      const int64_t t1 = std::min(n_act_rows, t0 + kTokenTile);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* wr = w.row(r);
        if (repacked) {
          UnpackRowsToGgml(w, wr, unpacked.data(), 1);
          wr = unpacked.data();
        }
        for (int64_t t = t0; t < t1; ++t) y[t * y_stride + r] = dot(cols, wr, act + t * act_bytes);
      }
    }
  };
  if (pool == nullptr) {
    rows_job(0, w.rows, 0);
  } else {
    pool->ParallelFor(w.rows, rows_job);
  }
}

void MatmulQuantizedBatch(const MatmulJob* jobs, int64_t n_jobs, CpuIsa isa, ThreadPool* pool) {
  bool all_simd = true;
  for (int64_t j = 0; j < n_jobs; ++j) all_simd = all_simd && SimdGemm(jobs[j].w, isa) != nullptr;
  constexpr int64_t kMaxJobs = 128;
  if (!all_simd || pool == nullptr || pool->size() == 1 || n_jobs > kMaxJobs) {
    for (int64_t j = 0; j < n_jobs; ++j) {
      const MatmulJob& b = jobs[j];
      MatmulQuantized(b.w, b.act, b.n_act_rows, b.y, b.y_stride, isa, pool);
    }
    return;
  }
  // Units of 8 rows (the decode tile height), numbered across all jobs.
  int64_t first_unit[kMaxJobs + 1];
  first_unit[0] = 0;
  for (int64_t j = 0; j < n_jobs; ++j) first_unit[j + 1] = first_unit[j] + (jobs[j].w.rows + 7) / 8;
  auto job = [&](int64_t u0, int64_t u1, int /*thread*/) {
    int64_t j = 0;
    while (first_unit[j + 1] <= u0) ++j;
    for (; j < n_jobs && first_unit[j] < u1; ++j) {
      const MatmulJob& b = jobs[j];
      const int64_t a0 = std::max(u0, first_unit[j]) - first_unit[j];
      const int64_t a1 = std::min(u1, first_unit[j + 1]) - first_unit[j];
      const int64_t r0 = a0 * 8, r1 = std::min(b.w.rows, a1 * 8);
      if (r0 >= r1) continue;
      SimdGemm(b.w, isa)(b.w.cols, b.w.row(r0), b.w.row_bytes, r1 - r0, b.act,
                         ActivationRowBytes(b.w.type, b.w.cols), b.n_act_rows, b.y + r0,
                         b.y_stride);
    }
  };
  pool->ParallelFor(first_unit[n_jobs], job);
}

void Matmul(const MatmulWeight& w, const float* x, int64_t n_rows, int64_t x_stride, float* y,
            int64_t y_stride, uint8_t* act_scratch, CpuIsa isa, ThreadPool* pool) {
  QuantizeActivations(w.type, x, n_rows, w.cols, x_stride, act_scratch);
  MatmulQuantized(w, act_scratch, n_rows, y, y_stride, isa, pool);
}

}  // namespace moeflow
