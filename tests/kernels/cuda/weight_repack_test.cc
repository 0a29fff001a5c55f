// The GPU weight layouts (kernels/cuda/weight_repack.h) against the CPU
// dequantization (kernels/cpu/quants.h): Q8_0 and Q4_K repack bit for bit,
// other types requantize within half an int8 step, and the sizes are the
// ones model/memory_plan.h plans with. Host code only: runs without a GPU.
#include "kernels/cuda/weight_repack.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "model/memory_plan.h"

namespace moeflow::cuda {
namespace {

// Random blocks of `type` with finite, non-zero f16 scales.
std::vector<uint8_t> RandomBlocks(GgmlType type, int64_t n_values, uint32_t seed) {
  const GgmlTypeTraits& t = Traits(type);
  const int64_t n_blocks = n_values / t.block_size;
  std::vector<uint8_t> bytes(static_cast<size_t>(t.type_size * n_blocks));
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = bytes.data() + b * t.type_size;
    auto put_half = [&](uint8_t* p) {
      const uint16_t h = Fp32ToFp16(scale(rng));
      std::memcpy(p, &h, 2);
    };
    if (type == GgmlType::kQ8_0) put_half(block);
    if (type == GgmlType::kQ4_K) {
      put_half(block);
      put_half(block + 2);
    }
    if (type == GgmlType::kQ6_K) put_half(block + 208);
  }
  return bytes;
}

class ExactRepackTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(ExactRepackTest, ValuesMatchDequantizeBitForBit) {
  const GgmlType type = GetParam();
  const int64_t rows = 5, cols = 768;
  const std::vector<uint8_t> blocks = RandomBlocks(type, rows * cols, 11);
  std::vector<float> want(static_cast<size_t>(rows * cols));
  ASSERT_TRUE(Dequantize(type, blocks.data(), want.data(), rows * cols).ok());
  auto m = RepackForGpu(type, blocks.data(), rows, cols);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->exact);
  EXPECT_EQ(m->kind, type == GgmlType::kQ4_K ? RepackedKind::kInt4 : RepackedKind::kInt8);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float got = RepackedValue(*m, r, c);
      ASSERT_EQ(std::memcmp(&got, &want[r * cols + c], 4), 0)
          << Traits(type).name << " (" << r << ", " << c << "): " << got << " vs "
          << want[r * cols + c];
    }
  }
  // The bytes the memory plan counts for this tensor on the GPU.
  EXPECT_EQ(m->bytes(), GpuResidentBytes("blk.0.attn_q_b.weight", type, {cols, rows}));
}

INSTANTIATE_TEST_SUITE_P(Types, ExactRepackTest,
                         ::testing::Values(GgmlType::kQ8_0, GgmlType::kQ4_K),
                         [](const auto& info) { return std::string(Traits(info.param).name); });

TEST(WeightRepackTest, Q6_KRequantizesToInt8WithinHalfAStep) {
  const int64_t rows = 3, cols = 512;
  const std::vector<uint8_t> blocks = RandomBlocks(GgmlType::kQ6_K, rows * cols, 5);
  std::vector<float> want(static_cast<size_t>(rows * cols));
  ASSERT_TRUE(Dequantize(GgmlType::kQ6_K, blocks.data(), want.data(), rows * cols).ok());
  auto m = RepackForGpu(GgmlType::kQ6_K, blocks.data(), rows, cols);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(m->exact);
  EXPECT_EQ(m->kind, RepackedKind::kInt8);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols / 32; ++g) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(want[r * cols + g * 32 + i]));
      const float step = amax / 127;
      for (int i = 0; i < 32; ++i) {
        const int64_t c = g * 32 + i;
        // Half a step, plus the f16 rounding of the block scale (2^-11 relative).
        EXPECT_NEAR(RepackedValue(*m, r, c), want[r * cols + c], 0.5f * step + amax / 1024)
            << "(" << r << ", " << c << ")";
      }
    }
  }
  EXPECT_EQ(m->bytes(), GpuResidentBytes("output.weight", GgmlType::kQ6_K, {cols, rows}));
}

TEST(WeightRepackTest, MatVecReferenceIsTheDequantizedProduct) {
  const int64_t rows = 7, cols = 256;
  const std::vector<uint8_t> blocks = RandomBlocks(GgmlType::kQ4_K, rows * cols, 3);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  ASSERT_TRUE(Dequantize(GgmlType::kQ4_K, blocks.data(), w.data(), rows * cols).ok());
  auto m = RepackForGpu(GgmlType::kQ4_K, blocks.data(), rows, cols);
  ASSERT_TRUE(m.ok()) << m.status();
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(static_cast<size_t>(cols));
  for (float& v : x) v = dist(rng);
  std::vector<float> y(static_cast<size_t>(rows));
  RepackedMatVecReference(*m, x.data(), y.data());
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(w[r * cols + c]) * x[c];
    EXPECT_EQ(y[r], static_cast<float>(acc)) << "row " << r;
  }
}

TEST(WeightRepackTest, RejectsFloatTypesAndPartialBlocks) {
  std::vector<uint8_t> bytes(4096);
  auto f32 = RepackForGpu(GgmlType::kF32, bytes.data(), 2, 64);
  EXPECT_EQ(f32.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f32.status().message().find("kept as BF16"), std::string::npos) << f32.status();
  auto partial = RepackForGpu(GgmlType::kQ4_K, bytes.data(), 2, 300);
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(partial.status().message().find("not whole blocks of 256"), std::string::npos)
      << partial.status();
}

}  // namespace
}  // namespace moeflow::cuda
