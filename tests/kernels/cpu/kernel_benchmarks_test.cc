// kernels/cpu/kernel_benchmarks on a tiny budget: one row per (type, valid
// shape, variant with its own kernel), positive throughputs, K-quants
// skipping the 1408-column shape, and only the requested variants.
#include "kernels/cpu/kernel_benchmarks.h"

#include <set>
#include <utility>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

KernelBenchOptions Tiny() {
  KernelBenchOptions o;
  o.gemv_bytes = 1 << 20;
  o.gemm_tokens = {4, 16};
  o.repetitions = 1;
  o.max_seconds = 0.01;
  o.measure_machine = false;
  return o;
}

TEST(KernelBenchmarksTest, RowsForEveryValidShapeAndVariant) {
  KernelBenchOptions o = Tiny();
  o.isas = {CpuIsa::kScalar, SelectedIsa()};
  o.types = {GgmlType::kQ4_K, GgmlType::kQ8_0};
  ThreadPool pool(2);
  const KernelBenchReport r = RunKernelBenchmarks(o, &pool);
  EXPECT_EQ(r.threads, 2);
  std::set<std::pair<int, int>> seen;  // (type, rows)
  for (const KernelBenchRow& row : r.rows) {
    EXPECT_TRUE(row.isa == CpuIsa::kScalar || row.isa == SelectedIsa());
    EXPECT_GT(row.gemv_gb_per_s, 0);
    EXPECT_GT(row.gemv_cached_gb_per_s, 0);
    ASSERT_EQ(row.gemm_gops.size(), 2u);
    EXPECT_GT(row.gemm_gops[0], 0);
    EXPECT_GT(row.gemm_gops[1], 0);
    // Q4_K needs cols % 256 == 0: only the 1408 × 2048 shape.
    if (row.type == GgmlType::kQ4_K) EXPECT_EQ(row.cols, 2048);
    seen.insert({static_cast<int>(row.type), static_cast<int>(row.rows)});
  }
  EXPECT_EQ(seen.count({static_cast<int>(GgmlType::kQ4_K), 1408}), 1u);
  EXPECT_EQ(seen.count({static_cast<int>(GgmlType::kQ4_K), 2048}), 0u);
  EXPECT_EQ(seen.count({static_cast<int>(GgmlType::kQ8_0), 1408}), 1u);
  EXPECT_EQ(seen.count({static_cast<int>(GgmlType::kQ8_0), 2048}), 1u);
}

// Q5_0 rows are timed in the layout the engine repacks them into on each ISA
// (kQ5_0Pairs on AVX2, the GGUF blocks on the scalar path).
TEST(KernelBenchmarksTest, RowsTimeTheLayoutTheEngineUses) {
  KernelBenchOptions o = Tiny();
  o.isas = {CpuIsa::kScalar};
  if (CpuSupportsIsa(CpuIsa::kAvx2)) o.isas.push_back(CpuIsa::kAvx2);
  o.types = {GgmlType::kQ5_0};
  ThreadPool pool(2);
  const KernelBenchReport r = RunKernelBenchmarks(o, &pool);
  ASSERT_EQ(r.rows.size(), 2 * o.isas.size());
  for (const KernelBenchRow& row : r.rows) {
    EXPECT_EQ(row.layout, PreferredLayout(GgmlType::kQ5_0, row.cols, row.isa))
        << CpuIsaName(row.isa) << " " << row.rows << "x" << row.cols;
    if (row.isa == CpuIsa::kAvx2) EXPECT_EQ(row.layout, WeightLayout::kQ5_0Pairs);
    if (row.isa == CpuIsa::kScalar) EXPECT_EQ(row.layout, WeightLayout::kGgml);
    EXPECT_GT(row.gemv_gb_per_s, 0);
    EXPECT_GT(row.gemm_gops[0], 0);
  }
}

// (type, isa) -> rows of a report.
std::multiset<std::pair<int, int>> RowsByTypeAndIsa(const KernelBenchReport& r) {
  std::multiset<std::pair<int, int>> seen;
  for (const KernelBenchRow& row : r.rows) {
    seen.insert({static_cast<int>(row.type), static_cast<int>(row.isa)});
  }
  return seen;
}

// On AVX-512 BF16 hosts (Zen 4, Sapphire Rapids): avx512bf16 runs avx512's
// kernels for every type but BF16, so it is timed on BF16 only; avx512 has a
// BF16 kernel of its own (BF16 widened to F32 and FMA'd, matmul_simd_vec_dots.inc), so
// it is timed on both types. Two shapes per (type, variant).
TEST(KernelBenchmarksTest, VariantsThatRepeatAnotherKernelAreSkipped) {
  if (!CpuSupportsIsa(CpuIsa::kAvx512Bf16)) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  KernelBenchOptions o = Tiny();
  o.isas = {CpuIsa::kScalar, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16};
  o.types = {GgmlType::kQ8_0, GgmlType::kBF16};
  const KernelBenchReport r = RunKernelBenchmarks(o, nullptr);
  const auto seen = RowsByTypeAndIsa(r);
  auto count = [&](GgmlType t, CpuIsa i) {
    return seen.count({static_cast<int>(t), static_cast<int>(i)});
  };
  EXPECT_EQ(count(GgmlType::kQ8_0, CpuIsa::kScalar), 2u);
  EXPECT_EQ(count(GgmlType::kQ8_0, CpuIsa::kAvx512), 2u);
  EXPECT_EQ(count(GgmlType::kQ8_0, CpuIsa::kAvx512Bf16), 0u);
  EXPECT_EQ(count(GgmlType::kBF16, CpuIsa::kScalar), 2u);
  EXPECT_EQ(count(GgmlType::kBF16, CpuIsa::kAvx512), 2u);
  EXPECT_EQ(count(GgmlType::kBF16, CpuIsa::kAvx512Bf16), 2u);
  EXPECT_EQ(r.rows.size(), 10u);
}

// The same rule on every x86-64 host this project runs on (AVX2 at least): a
// variant listed twice is timed once, and every SIMD variant has a kernel of
// its own for Q8_0 and BF16, so it is timed next to the scalar reference.
TEST(KernelBenchmarksTest, AVariantListedTwiceIsTimedOnce) {
  if (!CpuSupportsIsa(CpuIsa::kAvx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  KernelBenchOptions o = Tiny();
  o.isas = {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx2};
  o.types = {GgmlType::kQ8_0, GgmlType::kBF16};
  const KernelBenchReport r = RunKernelBenchmarks(o, nullptr);
  const auto seen = RowsByTypeAndIsa(r);
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kBF16}) {
    EXPECT_EQ(seen.count({static_cast<int>(t), static_cast<int>(CpuIsa::kScalar)}), 2u);
    EXPECT_EQ(seen.count({static_cast<int>(t), static_cast<int>(CpuIsa::kAvx2)}), 2u);
  }
  EXPECT_EQ(r.rows.size(), 8u);
}

}  // namespace
}  // namespace moeflow
