// kernels/cpu/matmul: the scalar reference against dequantized weights and
// activations, the SIMD activation quantizers byte for byte against the
// scalar ones, every SIMD variant this CPU runs within a few ulp of Σ|w·a| of
// the scalar reference on realistic data, and independence from the thread
// count and from batching matrices (MatmulQuantizedBatch). The kernels on
// exact data (matmul_tiles_test.cc) and the kQ5_0Pairs layout
// (matmul_q5_0_pairs_test.cc) have their own tests.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "formats/ggml_types.h"
#include "formats/quant_blocks.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/cpu/matmul_test_support.h"

namespace moeflow {
namespace {

using matmul_testing::DequantizedDot;
using matmul_testing::Quantized;
using matmul_testing::QuantizeMatrix;
using matmul_testing::RandomFloats;
using matmul_testing::SimdIsas;

const GgmlType kAllTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                              GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                              GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K,
                              GgmlType::kQ6_K};

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
