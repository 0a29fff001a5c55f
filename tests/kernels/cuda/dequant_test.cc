// GPU dequantization vs the CPU reference (kernels/cpu/quants.h), bit for bit.
// The random blocks and their CPU dequantization are made everywhere; the
// device part skips, printing why, without a CUDA device.
#include "kernels/cuda/dequant.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

// Random blocks whose fp16 scales are finite and non-zero, so every quant
// bit pattern is exercised with meaningful values.
std::vector<uint8_t> RandomBlocks(GgmlType type, int64_t n_blocks, uint32_t seed) {
  const GgmlTypeTraits& t = Traits(type);
  std::vector<uint8_t> bytes(t.type_size * n_blocks);
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = bytes.data() + b * t.type_size;
    auto put_half = [&](uint8_t* p) {
      const uint16_t h = Fp32ToFp16(scale(rng));
      std::memcpy(p, &h, 2);
    };
    switch (type) {
      case GgmlType::kQ8_0:
        put_half(block);
        break;
      case GgmlType::kQ4_K:
        put_half(block);
        put_half(block + 2);
        break;
      case GgmlType::kQ6_K:
        put_half(block + 208);
        break;
      default:
        break;
    }
  }
  return bytes;
}

TEST(CudaDequantTest, RejectsUnsupportedTypeAndPartialBlocks) {
  DequantizeArguments args;
  args.type = GgmlType::kQ5_1;
  args.n_elements = 32;
  EXPECT_EQ(CanImplementDequantize(args).code(), absl::StatusCode::kInvalidArgument);
  args.type = GgmlType::kQ4_K;
  args.n_elements = 100;
  absl::Status s = CanImplementDequantize(args);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("block size 256"), std::string::npos) << s;
}

class CudaDequantDeviceTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaDequantDeviceTest, MatchesCpuReferenceBitForBit) {
  const GgmlType type = GetParam();
  const int64_t n_blocks = 1024;
  const int64_t n = n_blocks * Traits(type).block_size;
  const std::vector<uint8_t> blocks = RandomBlocks(type, n_blocks, 7);
  std::vector<float> want(n);
  ASSERT_TRUE(Dequantize(type, blocks.data(), want.data(), n).ok());
  ASSERT_TRUE(std::any_of(want.begin(), want.end(), [](float v) { return v != 0.f; }));
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<uint8_t> d_blocks(blocks);
  DeviceBuffer<float> d_out(n);
  DequantizeArguments args{type, d_blocks.get(), d_out.get(), n, nullptr};
  ASSERT_TRUE(RunDequantize(args).ok());
  const std::vector<float> got = d_out.Download();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
        << Traits(type).name << " element " << i << ": gpu " << got[i] << " cpu " << want[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaDequantDeviceTest,
                         ::testing::Values(GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ6_K),
                         [](const auto& info) { return std::string(Traits(info.param).name); });

}  // namespace
}  // namespace moeflow::cuda
