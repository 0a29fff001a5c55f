// kernels/cpu/matmul's SIMD kernels against the scalar reference: the
// vec_dots' integer parts and the register-blocked GEMM tiles on raw blocks
// with power-of-two scales (exact float sums) bit for bit, for every tile
// shape and leftover; odd block counts; and a (row, token) result that does
// not depend on the tile it falls in.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "formats/ggml_types.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "tests/kernels/cpu/matmul_test_support.h"

namespace moeflow {
namespace {

using matmul_testing::FillRawActivations;
using matmul_testing::FillRawWeights;
using matmul_testing::Quantized;
using matmul_testing::QuantizeMatrix;
using matmul_testing::RandomFloats;
using matmul_testing::SimdIsas;

const GgmlType kSimdTypes[] = {GgmlType::kF32, GgmlType::kQ8_0, GgmlType::kQ5_0, GgmlType::kQ4_K,
                               GgmlType::kQ6_K};

TEST(MatmulTilesTest, SimdIntegerPartsAreExact) {
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
TEST(MatmulTilesTest, SimdGemmTilesAreExact) {
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
TEST(MatmulTilesTest, SimdGemmOddBlockCount) {
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

// A (row, token) result never depends on the tile it falls in: each token of
// a batch (R×T tiles, the t < T leftover tiles, one-row tiles for leftover
// rows) gives bit for bit what it gives alone (the 4-row GEMV tiles), for
// every SIMD variant and every batch size up to two token chunks.
TEST(MatmulTilesTest, BatchResultsEqualSingleTokenResults) {
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

}  // namespace
}  // namespace moeflow
