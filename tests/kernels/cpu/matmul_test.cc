// kernels/cpu/matmul: the scalar reference against dequantized weights and
// activations, every SIMD variant this CPU runs against the scalar reference
// (exactly on data whose float arithmetic is exact, within a few ulp of
// Σ|w·a| on realistic data), and independence from the thread count.
#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

const GgmlType kAllTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                              GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                              GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K,
                              GgmlType::kQ6_K};
const GgmlType kSimdTypes[] = {GgmlType::kF32, GgmlType::kQ8_0, GgmlType::kQ5_0, GgmlType::kQ4_K,
                               GgmlType::kQ6_K};

std::vector<CpuIsa> SimdIsas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512}) {
    if (CpuSupportsIsa(isa)) out.push_back(isa);
  }
  return out;
}

// Random non-zero floats: N(0, 1) with a few larger outliers, as activations are.
std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = dist(rng);
    if (x == 0.f) x = 0.5f;
  }
  for (int64_t i = 0; i < n; i += 37) v[i] *= 6.f;
  return v;
}

struct Quantized {
  MatmulWeight w;
  std::vector<uint8_t> bytes;
};

Quantized QuantizeMatrix(GgmlType type, const std::vector<float>& values, int64_t rows,
                         int64_t cols) {
  Quantized q;
  const int64_t row_bytes = RowBytes(type, cols).value();
  q.bytes.resize(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(
        Quantize(type, values.data() + r * cols, q.bytes.data() + r * row_bytes, cols).ok());
  }
  q.w = MatmulWeight{type, q.bytes.data(), cols, rows, row_bytes};
  return q;
}

// Σ dequant(w)·dequant(a) in double, and Σ |dequant(w)·dequant(a)|.
void DequantizedDot(GgmlType type, int64_t cols, const uint8_t* w_row, const uint8_t* a_row,
                    double* dot, double* abs_sum) {
  std::vector<float> w(static_cast<size_t>(cols)), a(static_cast<size_t>(cols));
  ASSERT_TRUE(Dequantize(type, w_row, w.data(), cols).ok());
  const GgmlType at = ActivationType(type);
  if (at == GgmlType::kQ8_1) {
    // Q8_1 has no dequantizer in quants.h: d * qs.
    for (int64_t b = 0; b < cols / 32; ++b) {
      const uint8_t* blk = a_row + b * 36;
      uint16_t d;
      std::memcpy(&d, blk, 2);
      for (int j = 0; j < 32; ++j) {
        a[b * 32 + j] = Fp16ToFp32(d) * static_cast<float>(static_cast<int8_t>(blk[4 + j]));
      }
    }
  } else {
    ASSERT_TRUE(Dequantize(at, a_row, a.data(), cols).ok());
  }
  *dot = 0;
  *abs_sum = 0;
  for (int64_t i = 0; i < cols; ++i) {
    const double p = static_cast<double>(w[i]) * a[i];
    *dot += p;
    *abs_sum += std::fabs(p);
  }
  if (at == GgmlType::kQ8_1) {
    // ggml's Q4_1 / Q5_1 dot takes the min term as m · s with s = fp16(d · Σq)
    // stored in the activation block, not m · Σ a: use that definition.
    const int64_t w_block = Traits(type).type_size;
    for (int64_t b = 0; b < cols / 32; ++b) {
      uint16_t m, s;
      std::memcpy(&m, w_row + b * w_block + 2, 2);
      std::memcpy(&s, a_row + b * 36 + 2, 2);
      double sum_a = 0;
      for (int j = 0; j < 32; ++j) sum_a += a[b * 32 + j];
      *dot += static_cast<double>(Fp16ToFp32(m)) * (Fp16ToFp32(s) - sum_a);
    }
  }
}

constexpr int64_t kCols = 512;  // two K-quant super-blocks, 16 legacy blocks
constexpr int64_t kRows = 13;
constexpr int64_t kTokens = 5;

TEST(MatmulTest, ScalarReferenceMatchesDequantizedDot) {
  for (GgmlType type : kAllTypes) {
    SCOPED_TRACE(Traits(type).name);
    ASSERT_TRUE(MatmulSupports(type));
    const Quantized q =
        QuantizeMatrix(type, RandomFloats(kRows * kCols, 1), kRows, kCols);
    const std::vector<float> x = RandomFloats(kTokens * kCols, 2);
    const int64_t act_bytes = ActivationRowBytes(type, kCols);
    std::vector<uint8_t> act(static_cast<size_t>(kTokens * act_bytes));
    std::vector<float> y(static_cast<size_t>(kTokens * kRows));
    Matmul(q.w, x.data(), kTokens, kCols, y.data(), kRows, act.data(), CpuIsa::kScalar, nullptr);
    for (int64_t t = 0; t < kTokens; ++t) {
      for (int64_t r = 0; r < kRows; ++r) {
        double dot, abs_sum;
        DequantizedDot(type, kCols, q.w.row(r), act.data() + t * act_bytes, &dot, &abs_sum);
        // The scalar kernels add kCols / block float terms in float: a few
        // ulp (2^-24) of Σ|terms| per addition at most.
        EXPECT_NEAR(y[t * kRows + r], dot, 64 * abs_sum * std::ldexp(1.0, -24) + 1e-30)
            << "t " << t << " r " << r;
      }
    }
  }
}

// Activation quantization: every value within half a step of x, and the scale
// from the block's absolute max as ggml computes it.
TEST(MatmulTest, ActivationQuantizationFollowsGgml) {
  const std::vector<float> x = RandomFloats(kCols, 3);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_K}) {
    const GgmlType at = ActivationType(type);
    std::vector<uint8_t> act(static_cast<size_t>(ActivationRowBytes(type, kCols)));
    QuantizeActivations(type, x.data(), 1, kCols, kCols, act.data());
    std::vector<float> back(static_cast<size_t>(kCols));
    ASSERT_TRUE(Dequantize(at, act.data(), back.data(), kCols).ok());
    const int block = at == GgmlType::kQ8_0 ? 32 : 256;
    for (int64_t b = 0; b < kCols / block; ++b) {
      float amax = 0;
      for (int j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[b * block + j]));
      float d;
      if (at == GgmlType::kQ8_0) {
        const auto* blk = reinterpret_cast<const BlockQ8_0*>(act.data()) + b;
        d = Fp16ToFp32(blk->d);
        EXPECT_EQ(blk->d, Fp32ToFp16(amax / 127.f));
      } else {
        const auto* blk = reinterpret_cast<const BlockQ8_K*>(act.data()) + b;
        d = blk->d;
        EXPECT_NEAR(std::fabs(d), amax / 127.f, amax * 1e-6f);
        for (int g = 0; g < 16; ++g) {
          int sum = 0;
          for (int l = 0; l < 16; ++l) sum += blk->qs[g * 16 + l];
          EXPECT_EQ(blk->bsums[g], sum);
        }
      }
      for (int j = 0; j < block; ++j) {
        EXPECT_NEAR(back[b * block + j], x[b * block + j], std::fabs(d) * 0.5f + amax * 2e-3f);
      }
    }
  }
}

// The SIMD activation quantizers write the scalar reference's bytes: random
// rows, an all-zero row, exact halves after scaling (round half to even:
// 0.5 -> 0, 1.5 -> 2, -1.5 -> -2), Q8_K's first-of-equal-magnitude rule
// (-3 before +3 picks a negative scale), and a row with huge and tiny values.
TEST(MatmulTest, SimdActivationQuantizersMatchScalarByteForByte) {
  constexpr int64_t kRows = 6;
  std::vector<float> x = RandomFloats(kRows * kCols, 11);
  float* zero = x.data() + 1 * kCols;
  std::fill(zero, zero + kCols, 0.f);
  float* halves = x.data() + 2 * kCols;
  for (int64_t j = 0; j < kCols; ++j) {
    // |max| = 127 in every 32-block: scale 1 (Q8_0, Q8_1) and -1 (Q8_K, max -127).
    halves[j] = j % 32 == 0 ? -127.f : static_cast<float>((j % 7) - 3) + 0.5f;
  }
  float* ties = x.data() + 3 * kCols;
  for (int64_t j = 0; j < kCols; ++j) ties[j] = static_cast<float>(j % 5) * 0.5f;  // max 2
  for (int64_t b = 0; b < kCols; b += 256) {
    ties[b + 7] = -3.f;
    ties[b + 9] = 3.f;
  }
  float* extremes = x.data() + 4 * kCols;
  for (int64_t j = 0; j < kCols; ++j) {
    extremes[j] = (j % 3 == 0 ? 1e30f : 1e-30f) * (j % 2 ? -1.f : 1.f);
  }
  float* one_value = x.data() + 5 * kCols;
  std::fill(one_value, one_value + kCols, 0.f);
  one_value[100] = -0.75f;  // one non-zero per row: other blocks all zero
  int checked = 0;
  for (CpuIsa isa : SimdIsas()) {
    // Weight types whose activations are Q8_0, Q8_1 and Q8_K.
    for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_1, GgmlType::kQ4_K}) {
      SCOPED_TRACE(std::string(CpuIsaName(isa)) + " " + std::string(Traits(type).name));
      const int64_t row_bytes = ActivationRowBytes(type, kCols);
      std::vector<uint8_t> want(static_cast<size_t>(kRows * row_bytes), 0xAA);
      std::vector<uint8_t> got(want.size(), 0x55);
      QuantizeActivations(type, x.data(), kRows, kCols, kCols, want.data(), CpuIsa::kScalar);
      QuantizeActivations(type, x.data(), kRows, kCols, kCols, got.data(), isa);
      for (int64_t r = 0; r < kRows; ++r) {
        EXPECT_EQ(std::memcmp(got.data() + r * row_bytes, want.data() + r * row_bytes,
                              static_cast<size_t>(row_bytes)),
                  0)
            << "row " << r;
      }
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD variant runs on this CPU";
  // The halves really are halves for the scalar reference: Q8_0's scale is 1.
  std::vector<uint8_t> act(static_cast<size_t>(ActivationRowBytes(GgmlType::kQ8_0, kCols)));
  QuantizeActivations(GgmlType::kQ8_0, halves, 1, kCols, kCols, act.data(), CpuIsa::kScalar);
  const auto* blk = reinterpret_cast<const BlockQ8_0*>(act.data());
  EXPECT_EQ(blk->qs[3], 0);   // 0.5 -> 0 (even)
  EXPECT_EQ(blk->qs[4], 2);   // 1.5 -> 2
  EXPECT_EQ(blk->qs[1], -2);  // -1.5 -> -2
}

// Realistic data (weights and activations from the quantizers): SIMD within
// a few ulp of Σ|w·a| of the scalar reference.
TEST(MatmulTest, SimdVariantsMatchScalarOnQuantizedData) {
  const std::vector<CpuIsa> isas = SimdIsas();
  std::printf("SIMD ISAs on this CPU:");
  for (CpuIsa isa : isas) std::printf(" %s", CpuIsaName(isa));
  std::printf(" (selected: %s)\n", CpuIsaName(SelectedIsa()));
  for (GgmlType type : kAllTypes) {
    SCOPED_TRACE(Traits(type).name);
    const int64_t cols = 1024;
    const Quantized q = QuantizeMatrix(type, RandomFloats(kRows * cols, 4), kRows, cols);
    const std::vector<float> x = RandomFloats(kTokens * cols, 5);
    const int64_t act_bytes = ActivationRowBytes(type, cols);
    std::vector<uint8_t> act(static_cast<size_t>(kTokens * act_bytes));
    QuantizeActivations(type, x.data(), kTokens, cols, cols, act.data());
    std::vector<float> ref(static_cast<size_t>(kTokens * kRows));
    MatmulQuantized(q.w, act.data(), kTokens, ref.data(), kRows, CpuIsa::kScalar, nullptr);
    for (CpuIsa isa : isas) {
      std::vector<float> y(ref.size());
      MatmulQuantized(q.w, act.data(), kTokens, y.data(), kRows, isa, nullptr);
      for (int64_t t = 0; t < kTokens; ++t) {
        for (int64_t r = 0; r < kRows; ++r) {
          double dot, abs_sum;
          DequantizedDot(type, cols, q.w.row(r), act.data() + t * act_bytes, &dot, &abs_sum);
          EXPECT_NEAR(y[t * kRows + r], ref[t * kRows + r],
                      64 * abs_sum * std::ldexp(1.0, -24) + 1e-30)
              << CpuIsaName(isa) << " t " << t << " r " << r;
        }
      }
    }
  }
}

// Random raw blocks (every bit pattern of the quants, including Q8_0's -128)
// with power-of-two scales: every partial sum is then exact in float, so the
// SIMD result must equal the scalar one bit for bit — a check of the integer
// parts.
void FillRawWeights(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng) {
  const int64_t bytes = RowBytes(type, cols).value();
  for (int64_t i = 0; i < bytes; ++i) row[i] = static_cast<uint8_t>(rng());
  const uint16_t two_m4 = Fp32ToFp16(0.0625f), two_m5 = Fp32ToFp16(0.03125f);
  switch (type) {
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < cols / 32; ++b) reinterpret_cast<BlockQ8_0*>(row)[b].d = two_m4;
      break;
    case GgmlType::kQ5_0:
      for (int64_t b = 0; b < cols / 32; ++b) reinterpret_cast<BlockQ5_0*>(row)[b].d = two_m4;
      break;
    case GgmlType::kQ4_K:
      for (int64_t b = 0; b < cols / 256; ++b) {
        reinterpret_cast<BlockQ4_K*>(row)[b].d = two_m4;
        reinterpret_cast<BlockQ4_K*>(row)[b].dmin = two_m5;
      }
      break;
    case GgmlType::kQ6_K:
      for (int64_t b = 0; b < cols / 256; ++b) reinterpret_cast<BlockQ6_K*>(row)[b].d = two_m4;
      break;
    default:
      FAIL();
  }
}

void FillRawActivations(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> q(-127, 127);
  if (ActivationType(type) == GgmlType::kQ8_0) {
    for (int64_t b = 0; b < cols / 32; ++b) {
      BlockQ8_0& blk = reinterpret_cast<BlockQ8_0*>(row)[b];
      blk.d = Fp32ToFp16(0.0078125f);
      for (int j = 0; j < 32; ++j) blk.qs[j] = static_cast<int8_t>(q(rng));
    }
  } else {
    for (int64_t b = 0; b < cols / 256; ++b) {
      BlockQ8_K& blk = reinterpret_cast<BlockQ8_K*>(row)[b];
      blk.d = 0.0078125f;
      for (int j = 0; j < 256; ++j) blk.qs[j] = static_cast<int8_t>(q(rng));
      for (int g = 0; g < 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += blk.qs[g * 16 + l];
        blk.bsums[g] = static_cast<int16_t>(sum);
      }
    }
  }
}

TEST(MatmulTest, SimdIntegerPartsAreExact) {
  const int64_t cols = 2048;
  std::mt19937 rng(7);
  for (GgmlType type : kSimdTypes) {
    if (type == GgmlType::kF32) continue;
    SCOPED_TRACE(Traits(type).name);
    const int64_t w_bytes = RowBytes(type, cols).value();
    const int64_t a_bytes = ActivationRowBytes(type, cols);
    std::vector<uint8_t> w(static_cast<size_t>(w_bytes)), a(static_cast<size_t>(a_bytes));
    for (int trial = 0; trial < 50; ++trial) {
      FillRawWeights(type, w.data(), cols, rng);
      FillRawActivations(type, a.data(), cols, rng);
      const float ref = GetVecDot(type, CpuIsa::kScalar)(cols, w.data(), a.data());
      for (CpuIsa isa : SimdIsas()) {
        EXPECT_EQ(GetVecDot(type, isa)(cols, w.data(), a.data()), ref)
            << CpuIsaName(isa) << " trial " << trial;
      }
    }
  }
}

// The register-blocked GEMM tiles (many rows × many tokens at once) on raw
// blocks with power-of-two scales: bit-equal to the scalar reference for
// every tile shape and leftover (rows not a multiple of the tile height,
// token counts 1..9); Q6_K within a few ulp.
TEST(MatmulTest, SimdGemmTilesAreExact) {
  const int64_t cols = 1536, rows = 19;
  std::mt19937 rng(11);
  for (GgmlType type : kSimdTypes) {
    if (type == GgmlType::kF32) continue;
    SCOPED_TRACE(Traits(type).name);
    const int64_t w_bytes = RowBytes(type, cols).value();
    const int64_t a_bytes = ActivationRowBytes(type, cols);
    std::vector<uint8_t> w(static_cast<size_t>(rows * w_bytes));
    for (int64_t r = 0; r < rows; ++r) FillRawWeights(type, w.data() + r * w_bytes, cols, rng);
    const MatmulWeight mw{type, w.data(), cols, rows, w_bytes};
    for (int64_t tokens : {1, 2, 3, 4, 5, 9}) {
      std::vector<uint8_t> a(static_cast<size_t>(tokens * a_bytes));
      for (int64_t t = 0; t < tokens; ++t) FillRawActivations(type, a.data() + t * a_bytes, cols, rng);
      std::vector<float> ref(static_cast<size_t>(tokens * rows));
      MatmulQuantized(mw, a.data(), tokens, ref.data(), rows, CpuIsa::kScalar, nullptr);
      for (CpuIsa isa : SimdIsas()) {
        std::vector<float> y(ref.size(), -1.f);
        MatmulQuantized(mw, a.data(), tokens, y.data(), rows, isa, nullptr);
        // Q6_K's signed 8-bit sub-block scales let partial sums pass 2^24
        // units of the last place, so its float sums may round (a few ulp).
        const double tol = type == GgmlType::kQ6_K ? std::ldexp(1.0, -9) : 0.0;
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_NEAR(y[i], ref[i], tol) << CpuIsaName(isa) << " tokens " << tokens << " index " << i;
        }
      }
    }
  }
}

// Odd block counts (Q8_0 / Q5_0 tiles take two blocks per step).
TEST(MatmulTest, SimdGemmOddBlockCount) {
  const int64_t cols = 96, rows = 11, tokens = 6;
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ5_0}) {
    SCOPED_TRACE(Traits(type).name);
    const Quantized q = QuantizeMatrix(type, RandomFloats(rows * cols, 21), rows, cols);
    const std::vector<float> x = RandomFloats(tokens * cols, 22);
    const int64_t act_bytes = ActivationRowBytes(type, cols);
    std::vector<uint8_t> act(static_cast<size_t>(tokens * act_bytes));
    QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
    std::vector<float> ref(static_cast<size_t>(tokens * rows));
    MatmulQuantized(q.w, act.data(), tokens, ref.data(), rows, CpuIsa::kScalar, nullptr);
    for (CpuIsa isa : SimdIsas()) {
      std::vector<float> y(ref.size());
      MatmulQuantized(q.w, act.data(), tokens, y.data(), rows, isa, nullptr);
      for (size_t i = 0; i < y.size(); ++i) {
        EXPECT_NEAR(y[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << CpuIsaName(isa) << " " << i;
      }
    }
  }
}

// WeightLayout::kQ5_0Pairs (load-time repacking): the bytes go there and
// back unchanged, in place or not.
TEST(MatmulTest, Q5_0PairsRepackRoundTrips) {
  const int64_t cols = 1408, rows = 7;
  const int64_t row_bytes = RowBytes(GgmlType::kQ5_0, cols).value();
  std::mt19937 rng(41);
  std::vector<uint8_t> ggml(static_cast<size_t>(rows * row_bytes));
  for (uint8_t& b : ggml) b = static_cast<uint8_t>(rng());
  const MatmulWeight w{GgmlType::kQ5_0, ggml.data(), cols, rows, row_bytes};
  std::vector<uint8_t> packed(ggml.size()), in_place = ggml, back(ggml.size());
  RepackRows(w, WeightLayout::kQ5_0Pairs, ggml.data(), packed.data(), rows);
  RepackRows(w, WeightLayout::kQ5_0Pairs, in_place.data(), in_place.data(), rows);
  EXPECT_EQ(packed, in_place);
  EXPECT_NE(packed, ggml);
  MatmulWeight pw = w;
  pw.data = packed.data();
  pw.layout = WeightLayout::kQ5_0Pairs;
  UnpackRowsToGgml(pw, packed.data(), back.data(), rows);
  EXPECT_EQ(back, ggml);
  // Spot check of the documented layout: element j of the pair's blocks.
  const BlockQ5_0* blk = reinterpret_cast<const BlockQ5_0*>(ggml.data());
  for (int b = 0; b < 2; ++b) {
    uint32_t qh;
    std::memcpy(&qh, blk[b].qh, 4);
    for (int j = 0; j < 32; ++j) {
      const int nib = j < 16 ? blk[b].qs[j] & 0x0F : blk[b].qs[j - 16] >> 4;
      const int hi = (qh >> j) & 1;
      EXPECT_EQ((packed[j] >> (4 * b)) & 0x0F, nib) << "block " << b << " element " << j;
      EXPECT_EQ((packed[32 + j % 8] >> (4 * b + j / 8)) & 1, hi) << "block " << b << " j " << j;
    }
    uint16_t d;
    std::memcpy(&d, packed.data() + 40 + 2 * b, 2);
    EXPECT_EQ(d, blk[b].d);
  }
}

TEST(MatmulTest, PreferredLayoutRepacksQ5_0ForAvx2Only) {
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx2), WeightLayout::kQ5_0Pairs);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 704, CpuIsa::kAvx2), WeightLayout::kQ5_0Pairs);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 96, CpuIsa::kAvx2), WeightLayout::kGgml);  // 3 blocks
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 28096, CpuIsa::kAvx2), WeightLayout::kGgml);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ8_0, 1408, CpuIsa::kAvx2), WeightLayout::kGgml);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kScalar), WeightLayout::kGgml);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx512), WeightLayout::kPanel16);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx512NoVnni), WeightLayout::kGgml);
}

// Repacked Q5_0 on raw blocks with power-of-two scales (exact float sums):
// every SIMD variant, and the scalar path reading the pairs back, equal the
// scalar reference on the GGUF bytes bit for bit, for GEMV and GEMM tile
// shapes, leftover rows and token counts across the kernel's activation
// chunks (1536 columns: 16 tokens per chunk).
TEST(MatmulTest, Q5_0PairsMatchScalarReferenceExactly) {
  const GgmlType type = GgmlType::kQ5_0;
  const int64_t cols = 1536, rows = 19;
  std::mt19937 rng(43);
  const int64_t w_bytes = RowBytes(type, cols).value();
  const int64_t a_bytes = ActivationRowBytes(type, cols);
  std::vector<uint8_t> w(static_cast<size_t>(rows * w_bytes)), packed(w.size());
  for (int64_t r = 0; r < rows; ++r) FillRawWeights(type, w.data() + r * w_bytes, cols, rng);
  const MatmulWeight gw{type, w.data(), cols, rows, w_bytes};
  RepackRows(gw, WeightLayout::kQ5_0Pairs, w.data(), packed.data(), rows);
  MatmulWeight pw = gw;
  pw.data = packed.data();
  pw.layout = WeightLayout::kQ5_0Pairs;
  for (int64_t tokens : {1, 2, 3, 4, 5, 9, 40}) {
    std::vector<uint8_t> a(static_cast<size_t>(tokens * a_bytes));
    for (int64_t t = 0; t < tokens; ++t)
      FillRawActivations(type, a.data() + t * a_bytes, cols, rng);
    std::vector<float> ref(static_cast<size_t>(tokens * rows));
    MatmulQuantized(gw, a.data(), tokens, ref.data(), rows, CpuIsa::kScalar, nullptr);
    std::vector<CpuIsa> isas = SimdIsas();
    isas.push_back(CpuIsa::kScalar);
    for (CpuIsa isa : isas) {
      std::vector<float> y(ref.size(), -1.f);
      MatmulQuantized(pw, a.data(), tokens, y.data(), rows, isa, nullptr);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_EQ(y[i], ref[i]) << CpuIsaName(isa) << " tokens " << tokens << " index " << i;
      }
    }
  }
}

// On realistic data: within the SIMD tolerance of the scalar reference, a
// token's result is the same alone or in any batch, and MatmulQuantizedBatch
// over a pool gives what MatmulQuantized gives.
TEST(MatmulTest, Q5_0PairsRealisticData) {
  const GgmlType type = GgmlType::kQ5_0;
  const int64_t rows = 23, cols = 1408;
  const Quantized q = QuantizeMatrix(type, RandomFloats(rows * cols, 44), rows, cols);
  std::vector<uint8_t> packed(q.bytes.size());
  RepackRows(q.w, WeightLayout::kQ5_0Pairs, q.bytes.data(), packed.data(), rows);
  MatmulWeight pw = q.w;
  pw.data = packed.data();
  pw.layout = WeightLayout::kQ5_0Pairs;
  const int64_t act_bytes = ActivationRowBytes(type, cols);
  ThreadPool pool(3);
  for (int64_t tokens : {3, 7, 13, 70, 131}) {
    const std::vector<float> x = RandomFloats(tokens * cols, 45 + static_cast<uint32_t>(tokens));
    std::vector<uint8_t> act(static_cast<size_t>(tokens * act_bytes));
    QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
    std::vector<float> ref(static_cast<size_t>(tokens * rows));
    MatmulQuantized(q.w, act.data(), tokens, ref.data(), rows, CpuIsa::kScalar, nullptr);
    for (CpuIsa isa : SimdIsas()) {
      std::vector<float> batch(ref.size(), -1.f), pooled(ref.size(), -2.f);
      MatmulQuantized(pw, act.data(), tokens, batch.data(), rows, isa, nullptr);
      const MatmulJob job{pw, act.data(), tokens, pooled.data(), rows};
      MatmulQuantizedBatch(&job, 1, isa, &pool);
      std::vector<float> one(static_cast<size_t>(rows));
      for (int64_t t = 0; t < tokens; ++t) {
        MatmulQuantized(pw, act.data() + t * act_bytes, 1, one.data(), rows, isa, nullptr);
        for (int64_t r = 0; r < rows; ++r) {
          const size_t i = static_cast<size_t>(t * rows + r);
          ASSERT_EQ(batch[i], one[static_cast<size_t>(r)]) << CpuIsaName(isa) << " t " << t;
          ASSERT_EQ(pooled[i], batch[i]) << CpuIsaName(isa) << " t " << t;
          double dot, abs_sum;
          DequantizedDot(type, cols, q.w.row(r), act.data() + t * act_bytes, &dot, &abs_sum);
          EXPECT_NEAR(batch[i], ref[i], 64 * abs_sum * std::ldexp(1.0, -24) + 1e-30)
              << CpuIsaName(isa) << " t " << t << " r " << r;
        }
      }
    }
  }
}

// A (row, token) result never depends on the tile it falls in: each token of
// a batch (R×T tiles, the t < T leftover tiles, one-row tiles for leftover
// rows) gives bit for bit what it gives alone (the 4-row GEMV tiles), for
// every SIMD variant and every batch size up to two token chunks.
TEST(MatmulTest, BatchResultsEqualSingleTokenResults) {
  const int64_t rows = 23, cols = 512;
  for (GgmlType type : kSimdTypes) {
    SCOPED_TRACE(Traits(type).name);
    const Quantized q = QuantizeMatrix(type, RandomFloats(rows * cols, 30), rows, cols);
    const int64_t act_bytes = ActivationRowBytes(type, cols);
    for (int64_t tokens : {3, 7, 13, 70, 131}) {
      const std::vector<float> x = RandomFloats(tokens * cols, 31 + static_cast<uint32_t>(tokens));
      std::vector<uint8_t> act(static_cast<size_t>(tokens * act_bytes));
      QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
      for (CpuIsa isa : SimdIsas()) {
        std::vector<float> batch(static_cast<size_t>(tokens * rows), -1.f);
        MatmulQuantized(q.w, act.data(), tokens, batch.data(), rows, isa, nullptr);
        std::vector<float> one(static_cast<size_t>(rows));
        for (int64_t t = 0; t < tokens; ++t) {
          MatmulQuantized(q.w, act.data() + t * act_bytes, 1, one.data(), rows, isa, nullptr);
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(batch[t * rows + r], one[r])
                << CpuIsaName(isa) << " tokens " << tokens << " t " << t << " r " << r;
          }
        }
      }
    }
  }
}

TEST(MatmulTest, ThreadCountDoesNotChangeResults) {
  const int64_t rows = 67, cols = 512, tokens = 9;
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ8_0, GgmlType::kF32}) {
    const Quantized q = QuantizeMatrix(type, RandomFloats(rows * cols, 8), rows, cols);
    const std::vector<float> x = RandomFloats(tokens * cols, 9);
    std::vector<uint8_t> act(static_cast<size_t>(tokens * ActivationRowBytes(type, cols)));
    std::vector<float> single(static_cast<size_t>(tokens * rows));
    Matmul(q.w, x.data(), tokens, cols, single.data(), rows, act.data(), SelectedIsa(), nullptr);
    for (int threads = 1; threads <= 3; ++threads) {
      ThreadPool pool(threads);
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<float> y(single.size(), -1.f);
        Matmul(q.w, x.data(), tokens, cols, y.data(), rows, act.data(), SelectedIsa(), &pool);
        EXPECT_EQ(y, single) << threads << " threads";
      }
    }
  }
}

// MatmulQuantizedBatch: one parallel loop over the rows of several matrices
// (of several types and token counts) gives exactly the per-matrix results.
TEST(MatmulTest, BatchMatchesSeparateMatmuls) {
  const int64_t cols = 512;
  struct Spec {
    GgmlType type;
    int64_t rows, tokens;
  };
  const Spec specs[] = {{GgmlType::kQ4_K, 67, 1}, {GgmlType::kQ6_K, 16, 2},
                        {GgmlType::kQ8_0, 33, 1}, {GgmlType::kQ5_0, 8, 3},
                        {GgmlType::kQ4_K, 5, 1},  {GgmlType::kF32, 9, 2}};
  std::vector<Quantized> qs;
  std::vector<std::vector<uint8_t>> acts;
  std::vector<std::vector<float>> expected;
  int seed = 20;
  for (const Spec& sp : specs) {
    qs.push_back(QuantizeMatrix(sp.type, RandomFloats(sp.rows * cols, seed++), sp.rows, cols));
    const std::vector<float> x = RandomFloats(sp.tokens * cols, seed++);
    acts.emplace_back(static_cast<size_t>(sp.tokens * ActivationRowBytes(sp.type, cols)));
    QuantizeActivations(sp.type, x.data(), sp.tokens, cols, cols, acts.back().data());
    expected.emplace_back(static_cast<size_t>(sp.tokens * sp.rows));
    MatmulQuantized(qs.back().w, acts.back().data(), sp.tokens, expected.back().data(), sp.rows,
                    SelectedIsa(), nullptr);
  }
  for (size_t n_jobs : {size_t{4}, size_t{6}}) {  // all SIMD tiles; with an F32 matrix
    for (int threads = 1; threads <= 3; ++threads) {
      ThreadPool pool(threads);
      std::vector<std::vector<float>> ys;
      std::vector<MatmulJob> jobs;
      for (size_t j = 0; j < n_jobs; ++j) ys.emplace_back(expected[j].size(), -1.f);
      for (size_t j = 0; j < n_jobs; ++j) {
        jobs.push_back(MatmulJob{qs[j].w, acts[j].data(), specs[j].tokens, ys[j].data(),
                                 specs[j].rows});
      }
      MatmulQuantizedBatch(jobs.data(), static_cast<int64_t>(jobs.size()), SelectedIsa(), &pool);
      for (size_t j = 0; j < n_jobs; ++j) EXPECT_EQ(ys[j], expected[j]) << j << " " << threads;
    }
  }
}

TEST(MatmulTest, ThreadPoolCoversEveryIndexOnce) {
  for (int threads = 1; threads <= 3; ++threads) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 3, 7, 100}) {
      std::vector<int> hits(static_cast<size_t>(n), 0);
      pool.ParallelFor(n, [&](int64_t b, int64_t e, int thread) {
        EXPECT_LT(thread, threads);
        for (int64_t i = b; i < e; ++i) ++hits[i];
      });
      for (int h : hits) EXPECT_EQ(h, 1);
    }
  }
}

}  // namespace
}  // namespace moeflow
