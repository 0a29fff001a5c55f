// The AVX-512 VNNI tiles of WeightLayout::kPanel16 (panel_layout.h): Q8_0,
// Q5_0, Q4_K, Q5_K and Q6_K weights × ggml's Q8_0 / Q8_K activations. Compiled with
// -mavx512f/bw/vl/dq -mavx512vnni; called only on CPUs that have them
// (matmul.cc: SimdGemm).
//
// A tile is P panels (16 rows each) × N tokens. Each vpdpbusd multiplies one
// register of unsigned weights (16 rows × 4 quants) by one token's 4 signed
// activation bytes broadcast from memory, into an int32 accumulator whose 16
// lanes are the 16 rows: no horizontal sums, and each unpacked weight
// register serves all N tokens. Weights are unsigned (Q8_0 stored as q + 128,
// Q5_0 and the K-quants' q as they are); the zero point comes back through
// the activations' per-block sums: Q8_0 −128·Σa and Q5_0 −16·Σa (the
// trailing int16 sums of Q8_0 activation rows, matmul.h), Q6_K −32·bsum
// (Q8_K's bsums), Q4_K's and Q5_K's mins through bsums as in ggml.
//
// Integer sums per (sub-)block are exact. The float part of a (row, token)
// pair — per block or sub-block, in order: float(Σ) × scale added with one
// fma — is the same whatever P and N are, so a result never depends on the
// tile it falls in, the thread split or the number of tokens in the call
// (GEMV and GEMM agree bit for bit). Against the scalar reference it differs
// by float rounding only (the tests bound it by a few ulp of Σ|w·a|).
//
// Thread-safety: pure functions over per-thread scratch (thread_local,
// grown once). Failure: shapes are the caller's to check (matmul.cc).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/panel_layout.h"

namespace moeflow {
namespace {

constexpr int64_t kRows = kPanelRows;
// Tokens per pass over a panel's weights: their activations (and the
// per-token scratch below) stay in L2 while every panel of the call streams
// past them.
constexpr int64_t kTokenChunk = 64;

inline float H2F(uint16_t h) { return _cvtsh_ss(h); }

inline __m512i Bcast32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __mmask64 LoadMask(const uint8_t* p) {
  uint64_t m;
  std::memcpy(&m, p, 8);
  return _cvtu64_mask64(m);
}

inline __m512 LoadHalves(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <typename T>
T* Scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

void Prefetch(const uint8_t* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
  }
}

// ---------------------------------------------------------------------------
// Q8_0 and Q5_0 (Q8_0 activations: block d at 0, qs at 2, 34 bytes; row sums
// after the blocks).

// Per token and block: d_a as a float and the zero-point correction −z·Σa.
struct Q8Tokens {
  const float* da;      // [token][block]
  const int32_t* corr;  // [token][block]
  int64_t nb;
};

Q8Tokens PrepareQ8Tokens(const uint8_t* act, int64_t as, int64_t n_tok, int64_t nb, int32_t z) {
  thread_local std::vector<float> da_buf;
  thread_local std::vector<int32_t> corr_buf;
  float* da = Scratch(da_buf, n_tok * nb);
  int32_t* corr = Scratch(corr_buf, n_tok * nb + 16);
  const __m512i neg_z = _mm512_set1_epi32(-z);
  for (int64_t t = 0; t < n_tok; ++t) {
    const uint8_t* row = act + t * as;
    const uint8_t* sums = row + nb * static_cast<int64_t>(sizeof(BlockQ8_0));
    for (int64_t b = 0; b < nb; ++b) {
      uint16_t d;
      std::memcpy(&d, row + b * sizeof(BlockQ8_0), 2);
      da[t * nb + b] = H2F(d);
    }
    int64_t b = 0;
    for (; b + 16 <= nb; b += 16) {
      const __m512i s16 =
          _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + 2 * b)));
      _mm512_storeu_si512(corr + t * nb + b, _mm512_mullo_epi32(s16, neg_z));
    }
    for (; b < nb; ++b) {
      int16_t v;
      std::memcpy(&v, sums + 2 * b, 2);
      corr[t * nb + b] = -z * static_cast<int32_t>(v);
    }
  }
  return Q8Tokens{da, corr, nb};
}

// P panels × N tokens of Q8_0 (kQ5 false) or Q5_0 (kQ5 true) weights.
template <bool kQ5, int P, int N, bool kPrefetch>
void TileQ8Family(const uint8_t* const* panel, int64_t bs, const uint8_t* act, int64_t as,
                  const Q8Tokens& tok, float* y, int64_t ys) {
  const int64_t nb = tok.nb;
  const int64_t pb = kRows * bs;  // bytes of one block of a panel
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  __m512 facc[P][N];
  for (int p = 0; p < P; ++p)
    for (int t = 0; t < N; ++t) facc[p][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (kPrefetch) {
      for (int p = 0; p < P; ++p) Prefetch(panel[p] + (b + 4) * pb, pb);
    }
    __m512i acc[P][N];
    for (int t = 0; t < N; ++t) {
      const __m512i c = _mm512_set1_epi32(tok.corr[t * nb + b]);
      for (int p = 0; p < P; ++p) acc[p][t] = c;
    }
    const uint8_t* ab[N];
    for (int t = 0; t < N; ++t) ab[t] = act + t * as + b * sizeof(BlockQ8_0) + 2;
    if (kQ5) {
      for (int i = 0; i < 4; ++i) {
        __m512i lo[P], hi[P];
        for (int p = 0; p < P; ++p) {
          const uint8_t* blk = panel[p] + b * pb;
          const __m512i x = _mm512_loadu_si512(blk + 64 * i);
          const __mmask64 m_lo = LoadMask(blk + 256 + 8 * i);
          const __mmask64 m_hi = LoadMask(blk + 256 + 8 * (i + 4));
          lo[p] = _mm512_and_si512(x, low4);
          hi[p] = _mm512_and_si512(_mm512_srli_epi16(x, 4), low4);
          lo[p] = _mm512_mask_add_epi8(lo[p], m_lo, lo[p], bit4);
          hi[p] = _mm512_mask_add_epi8(hi[p], m_hi, hi[p], bit4);
        }
        for (int t = 0; t < N; ++t) {
          const __m512i a_lo = Bcast32(ab[t] + 4 * i);
          const __m512i a_hi = Bcast32(ab[t] + 16 + 4 * i);
          for (int p = 0; p < P; ++p) {
            acc[p][t] = _mm512_dpbusd_epi32(acc[p][t], lo[p], a_lo);
            acc[p][t] = _mm512_dpbusd_epi32(acc[p][t], hi[p], a_hi);
          }
        }
      }
    } else {
      for (int g = 0; g < 8; ++g) {
        __m512i wv[P];
        for (int p = 0; p < P; ++p) wv[p] = _mm512_loadu_si512(panel[p] + b * pb + 64 * g);
        for (int t = 0; t < N; ++t) {
          const __m512i av = Bcast32(ab[t] + 4 * g);
          for (int p = 0; p < P; ++p) acc[p][t] = _mm512_dpbusd_epi32(acc[p][t], wv[p], av);
        }
      }
    }
    const int64_t d_off = kQ5 ? 16 * 20 : 16 * 32;
    for (int p = 0; p < P; ++p) {
      const __m512 dw = LoadHalves(panel[p] + b * pb + d_off);
      for (int t = 0; t < N; ++t) {
        const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(tok.da[t * nb + b]));
        facc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][t]), s, facc[p][t]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int t = 0; t < N; ++t) _mm512_storeu_ps(y + t * ys + kRows * p, facc[p][t]);
}

// ---------------------------------------------------------------------------
// Q4_K, Q5_K and Q6_K (Q8_K activations: d float at 0, qs[256] at 4, bsums[16] at
// 260; 292 bytes).

constexpr int64_t kQ8KBytes = sizeof(BlockQ8_K);

// Q4_K / Q5_K per token and super-block: d_a, and the 8 sub-block sums Σa
// (bsums in pairs) as floats for the mins.
struct Q4KTokens {
  const float* da;  // [token][sb]
  const float* bs;  // [token][sb][8]
  int64_t nsb;
};

Q4KTokens PrepareQ4KTokens(const uint8_t* act, int64_t as, int64_t n_tok, int64_t nsb) {
  thread_local std::vector<float> da_buf, bs_buf;
  float* da = Scratch(da_buf, n_tok * nsb);
  float* bs = Scratch(bs_buf, n_tok * nsb * 8);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t i = 0; i < nsb; ++i) {
      const BlockQ8_K* blk = reinterpret_cast<const BlockQ8_K*>(act + t * as) + i;
      da[t * nsb + i] = blk->d;
      // bsums in pairs: the 8 sums of 32.
      const __m256i b16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->bsums));
      _mm256_storeu_ps(bs + (t * nsb + i) * 8, _mm256_cvtepi32_ps(_mm256_madd_epi16(b16, ones)));
    }
  }
  return Q4KTokens{da, bs, nsb};
}

// Q4_K's and Q5_K's panel blocks (panel_layout.h): the byte offsets of the
// scales, d and dmin (Q5_K: and of qh, after the 32 qs groups), and the
// block size.
template <bool kFive>
struct KPanel {
  static constexpr int64_t kQh = 16 * 128;
  static constexpr int64_t kScales = kFive ? 16 * 160 : 16 * 128;
  static constexpr int64_t kD = kFive ? 16 * 172 : 16 * 140;
  static constexpr int64_t kDmin = kD + 32;
  static constexpr int64_t kBlock = kRows * (kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K));
};

// One super-block of a panel: d·sc of the 8 sub-blocks (Q4_K: the odd ones
// / 16, their high nibbles being multiplied unshifted, as 16·q), then
// dmin·m, 16 rows each (16 × 16 floats at `out`).
template <bool kFive>
void DecodeKScales(const uint8_t* blk, float* out) {
  const __m512i m63 = _mm512_set1_epi32(63), m15 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3),
                mff = _mm512_set1_epi32(0xFF);
  using L = KPanel<kFive>;
  const __m512i z0 = _mm512_loadu_si512(blk + L::kScales);
  const __m512i z1 = _mm512_loadu_si512(blk + L::kScales + 64);
  const __m512i z2 = _mm512_loadu_si512(blk + L::kScales + 128);
  const __m512 d = LoadHalves(blk + L::kD);
  const __m512 dmin = LoadHalves(blk + L::kDmin);
  for (int j = 0; j < 8; ++j) {
    __m512i sc, mn;
    if (j < 4) {
      sc = _mm512_and_si512(_mm512_srli_epi32(z0, 8 * j), m63);
      mn = _mm512_and_si512(_mm512_srli_epi32(z1, 8 * j), m63);
    } else {
      const int k = j - 4;
      const __m512i q8 = _mm512_and_si512(_mm512_srli_epi32(z2, 8 * k), mff);
      const __m512i q0 = _mm512_and_si512(_mm512_srli_epi32(z0, 8 * k + 6), m3);
      const __m512i q4 = _mm512_and_si512(_mm512_srli_epi32(z1, 8 * k + 6), m3);
      sc = _mm512_or_si512(_mm512_and_si512(q8, m15), _mm512_slli_epi32(q0, 4));
      mn = _mm512_or_si512(_mm512_srli_epi32(q8, 4), _mm512_slli_epi32(q4, 4));
    }
    __m512 s = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
    if (!kFive && j % 2 == 1) s = _mm512_mul_ps(s, _mm512_set1_ps(1.0f / 16));
    _mm512_storeu_ps(out + j * kRows, s);
    _mm512_storeu_ps(out + (8 + j) * kRows, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn)));
  }
}

// Every super-block of a panel ([sb][16][16] floats), once per call for all
// its tokens.
template <bool kFive>
const float* PrepareKPanel(const uint8_t* panel, int64_t nsb, std::vector<float>& buf) {
  float* out = Scratch(buf, nsb * 16 * kRows);
  for (int64_t i = 0; i < nsb; ++i) {
    DecodeKScales<kFive>(panel + i * KPanel<kFive>::kBlock, out + i * 16 * kRows);
  }
  return out;
}

// Q4_K, or Q5_K (kFive): its fifth bits (qh dword group g, bit 2q / 2q + 1
// for the low / high nibbles of chunk q) become bit 4 of the unsigned
// weights, and the high nibbles are shifted down (16·q + 256 would not fit
// a byte).
template <int N, bool kPrefetch, bool kFive>
void TileQ4_K(const uint8_t* panel, const float* psc, const uint8_t* act, int64_t as,
              const Q4KTokens& tok, float* y, int64_t ys) {
  const int64_t nsb = tok.nsb;
  const int64_t pb = KPanel<kFive>::kBlock;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  __m512 facc[N];
  for (int t = 0; t < N; ++t) facc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nsb; ++i) {
    const uint8_t* blk = panel + i * pb;
    if (kPrefetch) Prefetch(blk + 2 * pb, pb);
    // Decode (no psc): this super-block's scales now, from the caches the
    // prefetch filled, instead of a pass over the whole panel first.
    alignas(64) float inline_sc[16 * kRows];
    const float* sc = psc != nullptr ? psc + i * 16 * kRows : inline_sc;
    if (psc == nullptr) DecodeKScales<kFive>(blk, inline_sc);
    const uint8_t* ab[N];
    for (int t = 0; t < N; ++t) ab[t] = act + t * as + i * kQ8KBytes + 4;
    __m512 fsb[N];
    __m512i qh[kFive ? 8 : 1];
    if constexpr (kFive) {
      for (int g = 0; g < 8; ++g) qh[g] = _mm512_loadu_si512(blk + KPanel<kFive>::kQh + 64 * g);
    }
    for (int q = 0; q < 4; ++q) {
      __m512i acc_lo[N], acc_hi[N];
      for (int t = 0; t < N; ++t) acc_lo[t] = acc_hi[t] = _mm512_setzero_si512();
      for (int g = 0; g < 8; ++g) {
        const __m512i x = _mm512_loadu_si512(blk + 64 * (8 * q + g));
        __m512i lo = _mm512_and_si512(x, low4);
        __m512i hi;
        if constexpr (kFive) {
          // Bits 2q, 2q + 1 of each qh byte to bit 0, 1, then to bit 4.
          const __m512i h = _mm512_srli_epi16(qh[g], 2 * q);
          lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(h, 4), bit4));
          hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x, 4), low4),
                               _mm512_and_si512(_mm512_slli_epi16(h, 3), bit4));
        } else {
          hi = _mm512_andnot_si512(low4, x);  // 16 · high nibble
        }
        for (int t = 0; t < N; ++t) {
          acc_lo[t] = _mm512_dpbusd_epi32(acc_lo[t], lo, Bcast32(ab[t] + 64 * q + 4 * g));
          acc_hi[t] = _mm512_dpbusd_epi32(acc_hi[t], hi, Bcast32(ab[t] + 64 * q + 32 + 4 * g));
        }
      }
      const __m512 s_lo = _mm512_loadu_ps(sc + (2 * q) * kRows);
      const __m512 s_hi = _mm512_loadu_ps(sc + (2 * q + 1) * kRows);
      for (int t = 0; t < N; ++t) {
        fsb[t] = q == 0 ? _mm512_mul_ps(_mm512_cvtepi32_ps(acc_lo[t]), s_lo)
                        : _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc_lo[t]), s_lo, fsb[t]);
        fsb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc_hi[t]), s_hi, fsb[t]);
      }
    }
    // − dmin·m · Σa per sub-block, then × d_a.
    for (int sb = 0; sb < 8; ++sb) {
      const __m512 mn = _mm512_loadu_ps(sc + (8 + sb) * kRows);
      for (int t = 0; t < N; ++t) {
        fsb[t] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(tok.bs[(t * nsb + i) * 8 + sb]), fsb[t]);
      }
    }
    for (int t = 0; t < N; ++t) {
      facc[t] = _mm512_fmadd_ps(fsb[t], _mm512_set1_ps(tok.da[t * nsb + i]), facc[t]);
    }
  }
  for (int t = 0; t < N; ++t) _mm512_storeu_ps(y + t * ys, facc[t]);
}

// Q6_K per token and super-block: d_a and the 16 corrections −32·bsum.
struct Q6KTokens {
  const float* da;      // [token][sb]
  const int32_t* corr;  // [token][sb][16]
  int64_t nsb;
};

Q6KTokens PrepareQ6KTokens(const uint8_t* act, int64_t as, int64_t n_tok, int64_t nsb) {
  thread_local std::vector<float> da_buf;
  thread_local std::vector<int32_t> corr_buf;
  float* da = Scratch(da_buf, n_tok * nsb);
  int32_t* corr = Scratch(corr_buf, n_tok * nsb * 16);
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t i = 0; i < nsb; ++i) {
      const BlockQ8_K* blk = reinterpret_cast<const BlockQ8_K*>(act + t * as) + i;
      da[t * nsb + i] = blk->d;
      const __m512i b16 =
          _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->bsums)));
      _mm512_storeu_si512(corr + (t * nsb + i) * 16,
                          _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(b16, 5)));
    }
  }
  return Q6KTokens{da, corr, nsb};
}

// Per panel and super-block: d·sc of the 16 sub-blocks, 16 rows each.
const float* PrepareQ6KPanel(const uint8_t* panel, int64_t nsb, std::vector<float>& buf) {
  float* out = Scratch(buf, nsb * 16 * kRows);
  for (int64_t i = 0; i < nsb; ++i) {
    const uint8_t* blk = panel + i * kRows * sizeof(BlockQ6_K);
    const __m512 d = LoadHalves(blk + 16 * 208);
    for (int k = 0; k < 4; ++k) {
      const __m512i z = _mm512_loadu_si512(blk + 16 * 192 + 64 * k);
      for (int j = 0; j < 4; ++j) {
        const __m512i sc = _mm512_srai_epi32(_mm512_slli_epi32(z, 24 - 8 * j), 24);
        _mm512_storeu_ps(out + (i * 16 + 4 * k + j) * kRows,
                         _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));
      }
    }
  }
  return out;
}

template <int N, bool kPrefetch>
void TileQ6_K(const uint8_t* panel, const float* psc, const uint8_t* act, int64_t as,
              const Q6KTokens& tok, float* y, int64_t ys) {
  const int64_t nsb = tok.nsb;
  const int64_t pb = kRows * sizeof(BlockQ6_K);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i hb = _mm512_set1_epi8(0x30);
  __m512 facc[N];
  for (int t = 0; t < N; ++t) facc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nsb; ++i) {
    const uint8_t* blk = panel + i * pb;
    if (kPrefetch) Prefetch(blk + 2 * pb, pb);
    const float* sc = psc + i * 16 * kRows;
    const uint8_t* ab[N];
    for (int t = 0; t < N; ++t) ab[t] = act + t * as + i * kQ8KBytes + 4;
    const int32_t* corr = tok.corr + i * 16;
    __m512 fsb[N];
    bool first = true;
    for (int h = 0; h < 2; ++h) {
      for (int u = 0; u < 2; ++u) {
        // Sub-blocks 8h + u + {0, 2, 4, 6}: elements 128h + 32c + 16u + (0..15).
        __m512i acc[4][N];
        for (int c = 0; c < 4; ++c) {
          for (int t = 0; t < N; ++t) {
            acc[c][t] = _mm512_set1_epi32(corr[t * nsb * 16 + 8 * h + u + 2 * c]);
          }
        }
        for (int g = 4 * u; g < 4 * u + 4; ++g) {
          const __m512i x0 = _mm512_loadu_si512(blk + 64 * (16 * h + g));
          const __m512i x1 = _mm512_loadu_si512(blk + 64 * (16 * h + 8 + g));
          const __m512i xh = _mm512_loadu_si512(blk + 2048 + 64 * (8 * h + g));
          __m512i v[4];
          v[0] = _mm512_or_si512(_mm512_and_si512(x0, low4),
                                 _mm512_and_si512(_mm512_slli_epi16(xh, 4), hb));
          v[1] = _mm512_or_si512(_mm512_and_si512(x1, low4),
                                 _mm512_and_si512(_mm512_slli_epi16(xh, 2), hb));
          v[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x0, 4), low4),
                                 _mm512_and_si512(xh, hb));
          v[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x1, 4), low4),
                                 _mm512_and_si512(_mm512_srli_epi16(xh, 2), hb));
          for (int t = 0; t < N; ++t) {
            for (int c = 0; c < 4; ++c) {
              acc[c][t] =
                  _mm512_dpbusd_epi32(acc[c][t], v[c], Bcast32(ab[t] + 128 * h + 32 * c + 4 * g));
            }
          }
        }
        for (int c = 0; c < 4; ++c) {
          const __m512 s = _mm512_loadu_ps(sc + (8 * h + u + 2 * c) * kRows);
          for (int t = 0; t < N; ++t) {
            fsb[t] = first ? _mm512_mul_ps(_mm512_cvtepi32_ps(acc[c][t]), s)
                           : _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c][t]), s, fsb[t]);
          }
          first = false;
        }
      }
    }
    for (int t = 0; t < N; ++t) {
      facc[t] = _mm512_fmadd_ps(fsb[t], _mm512_set1_ps(tok.da[t * nsb + i]), facc[t]);
    }
  }
  for (int t = 0; t < N; ++t) _mm512_storeu_ps(y + t * ys, facc[t]);
}

// ---------------------------------------------------------------------------
// Drivers: token chunks × panels × token groups. Decode (≤ 2 tokens) streams
// the weights with software prefetch; prefill reuses each panel over its
// chunk's tokens from the caches.

// tile(t, std::integral_constant<int, n>) over [0, n_tok): groups of N
// tokens, then one group of the remainder (< N ≤ 7).
template <int N, typename Fn>
void TokenGroups(int64_t n_tok, const Fn& tile) {
  int64_t t = 0;
  for (; t + N <= n_tok; t += N) tile(t, std::integral_constant<int, N>());
  switch (n_tok - t) {
    case 1:
      tile(t, std::integral_constant<int, 1>());
      break;
    case 2:
      tile(t, std::integral_constant<int, 2>());
      break;
    case 3:
      tile(t, std::integral_constant<int, 3>());
      break;
    case 4:
      tile(t, std::integral_constant<int, 4>());
      break;
    case 5:
      tile(t, std::integral_constant<int, 5>());
      break;
    case 6:
      tile(t, std::integral_constant<int, 6>());
      break;
    default:
      break;
  }
}

template <bool kQ5>
void GemmQ8Family(int64_t cols, const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a,
                  int64_t as, int64_t n_tok, float* y, int64_t ys) {
  const int64_t bs = kQ5 ? sizeof(BlockQ5_0) : sizeof(BlockQ8_0);
  const int64_t nb = cols / kQK;
  const int64_t n_panels = n_rows / kRows;
  const int64_t panel_bytes = kRows * ws;
  for (int64_t c0 = 0; c0 < n_tok; c0 += kTokenChunk) {
    const int64_t nt = n_tok - c0 < kTokenChunk ? n_tok - c0 : kTokenChunk;
    const uint8_t* act = a + c0 * as;
    const Q8Tokens tok = PrepareQ8Tokens(act, as, nt, nb, kQ5 ? 16 : 128);
    float* yc = y + c0 * ys;
    int64_t p = 0;
    for (; p + 2 <= n_panels; p += 2) {
      const uint8_t* pan[2] = {w + p * panel_bytes, w + (p + 1) * panel_bytes};
      auto tile = [&](int64_t t, auto n) {
        constexpr int kN = decltype(n)::value;
        const Q8Tokens tt{tok.da + t * nb, tok.corr + t * nb, nb};
        if (nt <= 2) {
          TileQ8Family<kQ5, 2, kN, true>(pan, bs, act + t * as, as, tt, yc + t * ys + p * kRows,
                                         ys);
        } else {
          TileQ8Family<kQ5, 2, kN, false>(pan, bs, act + t * as, as, tt, yc + t * ys + p * kRows,
                                          ys);
        }
      };
      TokenGroups<6>(nt, tile);
    }
    for (; p < n_panels; ++p) {
      const uint8_t* pan[1] = {w + p * panel_bytes};
      auto tile = [&](int64_t t, auto n) {
        constexpr int kN = decltype(n)::value;
        const Q8Tokens tt{tok.da + t * nb, tok.corr + t * nb, nb};
        if (nt <= 2) {
          TileQ8Family<kQ5, 1, kN, true>(pan, bs, act + t * as, as, tt, yc + t * ys + p * kRows,
                                         ys);
        } else {
          TileQ8Family<kQ5, 1, kN, false>(pan, bs, act + t * as, as, tt, yc + t * ys + p * kRows,
                                          ys);
        }
      };
      TokenGroups<6>(nt, tile);
    }
  }
}

template <bool kFive>
void GemmQ4Family(int64_t cols, const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a,
                  int64_t as, int64_t n_tok, float* y, int64_t ys) {
  const int64_t nsb = cols / kQK_K;
  const int64_t panel_bytes = kRows * ws;
  thread_local std::vector<float> panel_scales;
  for (int64_t c0 = 0; c0 < n_tok; c0 += kTokenChunk) {
    const int64_t nt = n_tok - c0 < kTokenChunk ? n_tok - c0 : kTokenChunk;
    const uint8_t* act = a + c0 * as;
    const Q4KTokens tok = PrepareQ4KTokens(act, as, nt, nsb);
    for (int64_t p = 0; p < n_rows / kRows; ++p) {
      const uint8_t* pan = w + p * panel_bytes;
      const float* psc = nt <= 2 ? nullptr : PrepareKPanel<kFive>(pan, nsb, panel_scales);
      auto tile = [&](int64_t t, auto n) {
        constexpr int kN = decltype(n)::value;
        const Q4KTokens tt{tok.da + t * nsb, tok.bs + t * nsb * 8, nsb};
        float* yt = y + (c0 + t) * ys + p * kRows;
        if (nt <= 2) {
          TileQ4_K<kN, true, kFive>(pan, psc, act + t * as, as, tt, yt, ys);
        } else {
          TileQ4_K<kN, false, kFive>(pan, psc, act + t * as, as, tt, yt, ys);
        }
      };
      TokenGroups<6>(nt, tile);
    }
  }
}

void GemmQ6_K(int64_t cols, const uint8_t* w, int64_t ws, int64_t n_rows, const uint8_t* a,
              int64_t as, int64_t n_tok, float* y, int64_t ys) {
  const int64_t nsb = cols / kQK_K;
  const int64_t panel_bytes = kRows * ws;
  thread_local std::vector<float> panel_scales;
  for (int64_t c0 = 0; c0 < n_tok; c0 += kTokenChunk) {
    const int64_t nt = n_tok - c0 < kTokenChunk ? n_tok - c0 : kTokenChunk;
    const uint8_t* act = a + c0 * as;
    const Q6KTokens tok = PrepareQ6KTokens(act, as, nt, nsb);
    for (int64_t p = 0; p < n_rows / kRows; ++p) {
      const uint8_t* pan = w + p * panel_bytes;
      const float* psc = PrepareQ6KPanel(pan, nsb, panel_scales);
      auto tile = [&](int64_t t, auto n) {
        constexpr int kN = decltype(n)::value;
        const Q6KTokens tt{tok.da + t * nsb, tok.corr + t * nsb * 16, nsb};
        float* yt = y + (c0 + t) * ys + p * kRows;
        if (nt <= 2) {
          TileQ6_K<kN, true>(pan, psc, act + t * as, as, tt, yt, ys);
        } else {
          TileQ6_K<kN, false>(pan, psc, act + t * as, as, tt, yt, ys);
        }
      };
      TokenGroups<4>(nt, tile);
    }
  }
}

}  // namespace

const PanelGemms& Avx512PanelGemms() {
  static const PanelGemms table = {GemmQ8Family<false>, GemmQ8Family<true>, GemmQ4Family<false>,
                                   GemmQ4Family<true>, GemmQ6_K};
  return table;
}

}  // namespace moeflow
