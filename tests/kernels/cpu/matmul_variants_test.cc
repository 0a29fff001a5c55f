// The AVX-512 BF16 and AMX variants of kernels/cpu/matmul against the scalar
// reference, on random non-zero inputs, with tolerances derived from the
// formats (see matmul.h):
//   BF16 weights (vdpbf16ps): products exact, fp32 sums:
//     |got - ref| ≤ (n / 16 + 16) · 2^-24 · Σ|w·a|
//   F16 via BF16: each F16 value rounded to BF16 (8 significant bits: ≤ 2^-8
//     relative), so each product is off by ≤ 2^-7 + 2^-16 relative, plus the
//     summation bound.
//   AMX Q8_0 (≥ 16 tokens): exact integer tiles, float terms in the scalar
//     order: bit-equal to the scalar reference.
// A variant this CPU lacks is skipped with the reason printed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

// N(0, 1) with every 37th value ×6 (activation-like outliers), never 0.
std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = dist(rng);
    if (x == 0.f) x = 0.25f;
  }
  for (int64_t i = 0; i < n; i += 37) v[static_cast<size_t>(i)] *= 6.f;
  return v;
}

struct Matrix {
  MatmulWeight w;
  std::vector<uint8_t> bytes;
};

Matrix QuantizeRows(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  const int64_t row_bytes = RowBytes(type, cols).value();
  m.bytes.resize(static_cast<size_t>(rows * row_bytes));
  const std::vector<float> v = RandomFloats(rows * cols, seed);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(Quantize(type, v.data() + r * cols, m.bytes.data() + r * row_bytes, cols).ok());
  }
  m.w = MatmulWeight{type, m.bytes.data(), cols, rows, row_bytes};
  return m;
}

std::vector<uint8_t> Activations(GgmlType weight_type, int64_t tokens, int64_t cols,
                                 uint32_t seed) {
  const std::vector<float> x = RandomFloats(tokens * cols, seed);
  std::vector<uint8_t> act(static_cast<size_t>(tokens * ActivationRowBytes(weight_type, cols)));
  QuantizeActivations(weight_type, x.data(), tokens, cols, cols, act.data());
  return act;
}

// Σ |w_i · a_i| of two rows of 16-bit floats (F16 or BF16).
double AbsDot16(GgmlType type, int64_t n, const uint8_t* w, const uint8_t* a) {
  const uint16_t* x = reinterpret_cast<const uint16_t*>(w);
  const uint16_t* y = reinterpret_cast<const uint16_t*>(a);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = type == GgmlType::kBF16
                         ? static_cast<double>(Bf16ToFp32(x[i])) * Bf16ToFp32(y[i])
                         : static_cast<double>(Fp16ToFp32(x[i])) * Fp16ToFp32(y[i]);
    s += std::fabs(p);
  }
  return s;
}

double SumBound(int64_t n) { return (static_cast<double>(n) / 16 + 16) * std::ldexp(1.0, -24); }

bool SkipUnless(CpuIsa isa) {
  if (CpuSupportsIsa(isa)) return false;
  std::printf("[  SKIP    ] %s: this CPU/OS does not support it (%s)\n", CpuIsaName(isa),
              isa == CpuIsa::kAmx
                  ? "needs CPUID AMX-TILE + AMX-INT8, XCR0 tile state and arch_prctl "
                    "XTILEDATA permission; the AMX kernel is compiled but cannot be validated here"
                  : "needs CPUID AVX512_BF16 and AVX-512 F/BW/VL/DQ/VNNI");
  return true;
}

TEST(MatmulVariantsTest, Bf16WeightsMatchScalarWithinSummationBound) {
  if (SkipUnless(CpuIsa::kAvx512Bf16)) GTEST_SKIP();
  const VecDotFn ref = GetVecDot(GgmlType::kBF16, CpuIsa::kScalar);
  for (CpuIsa isa : {CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (!CpuSupportsIsa(isa)) continue;
    const VecDotFn got = GetVecDot(GgmlType::kBF16, isa);
    ASSERT_NE(got, ref) << CpuIsaName(isa) << " does not use the vdpbf16ps dot";
    for (int64_t cols : {2048, 1408, 160, 37, 1}) {
      const Matrix m = QuantizeRows(GgmlType::kBF16, 8, cols, static_cast<uint32_t>(cols));
      const std::vector<uint8_t> act = Activations(GgmlType::kBF16, 3, cols, 7);
      const int64_t ab = ActivationRowBytes(GgmlType::kBF16, cols);
      for (int64_t r = 0; r < 8; ++r) {
        for (int64_t t = 0; t < 3; ++t) {
          const uint8_t* a = act.data() + t * ab;
          const double want = ref(cols, m.w.row(r), a);
          const double have = got(cols, m.w.row(r), a);
          const double tol = SumBound(cols) * AbsDot16(GgmlType::kBF16, cols, m.w.row(r), a);
          EXPECT_LE(std::fabs(have - want), tol)
              << CpuIsaName(isa) << " cols=" << cols << " r=" << r << " t=" << t;
        }
      }
    }
  }
}

TEST(MatmulVariantsTest, Bf16MatmulIsIndependentOfThreadCount) {
  if (SkipUnless(CpuIsa::kAvx512Bf16)) GTEST_SKIP();
  const int64_t rows = 203, cols = 1408, tokens = 5;
  const Matrix m = QuantizeRows(GgmlType::kBF16, rows, cols, 3);
  const std::vector<uint8_t> act = Activations(GgmlType::kBF16, tokens, cols, 4);
  std::vector<float> single(static_cast<size_t>(rows * tokens));
  MatmulQuantized(m.w, act.data(), tokens, single.data(), rows, CpuIsa::kAvx512Bf16, nullptr);
  const VecDotFn dot = GetVecDot(GgmlType::kBF16, CpuIsa::kAvx512Bf16);
  const int64_t ab = ActivationRowBytes(GgmlType::kBF16, cols);
  EXPECT_EQ(single[static_cast<size_t>(2 * rows + 17)], dot(cols, m.w.row(17), act.data() + 2 * ab));
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::vector<float> y(single.size(), -1.f);
    MatmulQuantized(m.w, act.data(), tokens, y.data(), rows, CpuIsa::kAvx512Bf16, &pool);
    EXPECT_EQ(y, single) << threads << " threads";
  }
}

TEST(MatmulVariantsTest, F16ViaBf16WithinRoundingBound) {
  if (SkipUnless(CpuIsa::kAvx512Bf16)) GTEST_SKIP();
  const VecDotFn got = F16ViaBf16VecDot();
  ASSERT_NE(got, nullptr);
  const VecDotFn ref = GetVecDot(GgmlType::kF16, CpuIsa::kScalar);
  const double per_product = std::ldexp(1.0, -7) + std::ldexp(1.0, -16);
  double worst_fraction = 0;  // largest |error| / tolerance seen
  for (int64_t cols : {2048, 1408, 96, 45, 17}) {
    const Matrix m = QuantizeRows(GgmlType::kF16, 6, cols, static_cast<uint32_t>(cols + 1));
    const std::vector<uint8_t> act = Activations(GgmlType::kF16, 2, cols, 11);
    const int64_t ab = ActivationRowBytes(GgmlType::kF16, cols);
    for (int64_t r = 0; r < 6; ++r) {
      for (int64_t t = 0; t < 2; ++t) {
        const uint8_t* a = act.data() + t * ab;
        const double want = ref(cols, m.w.row(r), a);
        const double have = got(cols, m.w.row(r), a);
        const double tol =
            (per_product + SumBound(cols)) * AbsDot16(GgmlType::kF16, cols, m.w.row(r), a);
        EXPECT_LE(std::fabs(have - want), tol) << "cols=" << cols << " r=" << r << " t=" << t;
        worst_fraction = std::max(worst_fraction, std::fabs(have - want) / tol);
      }
    }
  }
  // The rounding to BF16 is real (the dot is not secretly the F16 one).
  EXPECT_GT(worst_fraction, 0.0);
  std::printf("F16 via BF16: worst error %.3f of the bound\n", worst_fraction);
}

TEST(MatmulVariantsTest, AmxQ8_0IsBitEqualToScalar) {
  if (SkipUnless(CpuIsa::kAmx)) GTEST_SKIP();
  const VecDotFn ref = GetVecDot(GgmlType::kQ8_0, CpuIsa::kScalar);
  // Rows: a full tile, tail tiles; tokens: the AMX minimum (16), ragged
  // token groups (37), and 64.
  for (int64_t rows : {16, 40, 203}) {
    for (int64_t tokens : {16, 37, 64}) {
      const int64_t cols = 1408;
      const Matrix m = QuantizeRows(GgmlType::kQ8_0, rows, cols, static_cast<uint32_t>(rows));
      const std::vector<uint8_t> act =
          Activations(GgmlType::kQ8_0, tokens, cols, static_cast<uint32_t>(tokens));
      const int64_t ab = ActivationRowBytes(GgmlType::kQ8_0, cols);
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        std::vector<float> y(static_cast<size_t>(rows * tokens), -1.f);
        MatmulQuantized(m.w, act.data(), tokens, y.data(), rows, CpuIsa::kAmx, &pool);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(y[static_cast<size_t>(t * rows + r)], ref(cols, m.w.row(r), act.data() + t * ab))
                << "rows=" << rows << " tokens=" << tokens << " r=" << r << " t=" << t;
          }
        }
      }
    }
  }
}

TEST(MatmulVariantsTest, AmxFewTokensUseTheAvx512Tiles) {
  if (SkipUnless(CpuIsa::kAmx)) GTEST_SKIP();
  const int64_t rows = 64, cols = 2048, tokens = 3;
  const Matrix m = QuantizeRows(GgmlType::kQ8_0, rows, cols, 5);
  const std::vector<uint8_t> act = Activations(GgmlType::kQ8_0, tokens, cols, 6);
  std::vector<float> amx(static_cast<size_t>(rows * tokens)), avx512(amx.size());
  MatmulQuantized(m.w, act.data(), tokens, amx.data(), rows, CpuIsa::kAmx, nullptr);
  MatmulQuantized(m.w, act.data(), tokens, avx512.data(), rows, CpuIsa::kAvx512, nullptr);
  EXPECT_EQ(amx, avx512);
}

TEST(MatmulVariantsTest, IsaNamesAndSupportAreConsistent) {
  // A variant implies the ones it extends.
  if (CpuSupportsIsa(CpuIsa::kAmx)) {
    EXPECT_TRUE(CpuSupportsIsa(CpuIsa::kAvx512Bf16));
  }
  if (CpuSupportsIsa(CpuIsa::kAvx512Bf16)) {
    EXPECT_TRUE(CpuSupportsIsa(CpuIsa::kAvx512));
  }
  EXPECT_STREQ(CpuIsaName(CpuIsa::kAvx512Bf16), "avx512bf16");
  EXPECT_STREQ(CpuIsaName(CpuIsa::kAmx), "amx");
  EXPECT_TRUE(CpuSupportsIsa(SelectedIsa()));
  std::printf("selected %s; avx512bf16 %s, amx %s\n", CpuIsaName(SelectedIsa()),
              CpuSupportsIsa(CpuIsa::kAvx512Bf16) ? "yes" : "no",
              CpuSupportsIsa(CpuIsa::kAmx) ? "yes" : "no");
}

}  // namespace
}  // namespace moeflow
