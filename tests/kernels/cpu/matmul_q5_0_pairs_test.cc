// WeightLayout::kQ5_0Pairs (Q5_0 repacked in pairs of blocks at load time
// for the AVX2 kernels): the repacking round-trips every byte,
// PreferredLayout picks it on AVX2 only, and the pairs' results equal the
// scalar reference on the GGUF bytes (bit for bit on exact data, within a few
// ulp on realistic data) whatever the batch or the thread pool.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "formats/ggml_types.h"
#include "formats/quant_blocks.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/cpu/matmul_test_support.h"

namespace moeflow {
namespace {

using matmul_testing::DequantizedDot;
using matmul_testing::FillRawActivations;
using matmul_testing::FillRawWeights;
using matmul_testing::Quantized;
using matmul_testing::QuantizeMatrix;
using matmul_testing::RandomFloats;
using matmul_testing::SimdIsas;

// WeightLayout::kQ5_0Pairs (load-time repacking): the bytes go there and
// back unchanged, in place or not.
TEST(MatmulQ5_0PairsTest, Q5_0PairsRepackRoundTrips) {
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

TEST(MatmulQ5_0PairsTest, PreferredLayoutRepacksQ5_0ForAvx2Only) {
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
TEST(MatmulQ5_0PairsTest, Q5_0PairsMatchScalarReferenceExactly) {
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
TEST(MatmulQ5_0PairsTest, Q5_0PairsRealisticData) {
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

}  // namespace
}  // namespace moeflow
