// Weight-only int8 / int4 GEMV and GEMM (kernels/cuda/weight_only_gemm.h)
// against RepackedMatVecReference (itself checked against kernels/cpu
// Dequantize in weight_repack_test) on random weights and activations, with
// the f32 summation bound as tolerance. Token counts cover the GEMV (<= 8)
// and the tiled GEMM (> 8, partial tiles), and the head-batched form the MLA
// absorption uses. Each test quantizes, repacks and computes the reference
// first (that part runs everywhere), then skips, printing why, without a
// CUDA device.
#include "kernels/cuda/weight_only_gemm.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

RepackedMatrix RandomMatrix(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  // Quantize random floats: realistic blocks with non-zero scales.
  const std::vector<float> w = RandomFloats(rows * cols, seed, -0.5f, 0.5f);
  std::vector<uint8_t> blocks(static_cast<size_t>(rows * *RowBytes(type, cols)));
  EXPECT_TRUE(Quantize(type, w.data(), blocks.data(), rows * cols).ok());
  auto m = RepackForGpu(type, blocks.data(), rows, cols);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

TEST(WeightOnlyGemmTest, ArgumentChecksNameTheProblem) {
  WeightOnlyGemmArguments a;
  a.device.w.kind = 1;
  a.device.w.rows = 64;
  a.device.w.cols = 320;
  a.device.n_out = 64;
  a.device.n_tokens = 1;
  absl::Status s = CanImplementWeightOnlyGemm(a);
  EXPECT_NE(s.message().find("K = 320 is not a positive multiple of 256 (int4)"), std::string::npos)
      << s;
  a.device.w.cols = 512;
  a.device.n_batch = 3;
  s = CanImplementWeightOnlyGemm(a);
  EXPECT_NE(s.message().find("n_batch × n_out = 192 but the matrix has 64 rows"), std::string::npos)
      << s;
  a.device.n_batch = 1;
  a.device.x_stride = 6;
  s = CanImplementWeightOnlyGemm(a);
  EXPECT_NE(s.message().find("16-byte aligned"), std::string::npos) << s;
}

struct Case {
  GgmlType type;
  int64_t n_tokens;
};

class WeightOnlyGemmDeviceTest : public ::testing::TestWithParam<Case> {};

TEST_P(WeightOnlyGemmDeviceTest, MatchesReference) {
  const Case c = GetParam();
  const int64_t rows = 100, cols = 768, stride = cols + 4;
  const RepackedMatrix m = RandomMatrix(c.type, rows, cols, 1);
  const std::vector<float> x = RandomFloats(c.n_tokens * stride, 2, -2, 2);
  std::vector<float> want(c.n_tokens * rows), tol(c.n_tokens * rows);
  for (int64_t t = 0; t < c.n_tokens; ++t) {
    RepackedMatVecReference(m, x.data() + t * stride, want.data() + t * rows);
    for (int64_t r = 0; r < rows; ++r) {
      double abs_sum = 0;
      for (int64_t k = 0; k < cols; ++k) {
        abs_sum += std::fabs(static_cast<double>(RepackedValue(m, r, k)) * x[t * stride + k]);
      }
      tol[t * rows + r] = static_cast<float>(F32DotTolerance(cols, abs_sum));
    }
  }
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  auto dm = DeviceRepackedMatrix::Upload(m);
  ASSERT_TRUE(dm.ok()) << dm.status();
  DeviceBuffer<float> dx(x), dy(c.n_tokens * (rows + 3));
  WeightOnlyGemmArguments a;
  a.device.w = dm->view();
  a.device.n_out = rows;
  a.device.n_tokens = c.n_tokens;
  a.device.x = dx.get();
  a.device.x_stride = stride;
  a.device.y = dy.get();
  a.device.y_stride = rows + 3;
  ASSERT_TRUE(RunWeightOnlyGemm(a).ok());
  const std::vector<float> y = dy.Download();
  for (int64_t t = 0; t < c.n_tokens; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_NEAR(y[t * (rows + 3) + r], want[t * rows + r], tol[t * rows + r])
          << Traits(c.type).name << " tokens " << c.n_tokens << " token " << t << " row " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, WeightOnlyGemmDeviceTest,
                         ::testing::Values(Case{GgmlType::kQ8_0, 1}, Case{GgmlType::kQ8_0, 8},
                                           Case{GgmlType::kQ8_0, 45}, Case{GgmlType::kQ4_K, 1},
                                           Case{GgmlType::kQ4_K, 5}, Case{GgmlType::kQ4_K, 70},
                                           // Q6_K (the output head) requantized to int8.
                                           Case{GgmlType::kQ6_K, 1}, Case{GgmlType::kQ6_K, 20}),
                         [](const auto& info) {
                           return std::string(Traits(info.param.type).name) + "_tokens" +
                                  std::to_string(info.param.n_tokens);
                         });

// The MLA absorption: per head h, q_abs[t][h][0..kv_lora) = k_b[h] · q_nope[t][h]
// with q_nope at offset h · head_dim of each token's query row.
TEST(WeightOnlyGemmTest, HeadBatchedAbsorptionMatchesReference) {
  const int64_t n_heads = 4, nope = 32, rope = 32, head = nope + rope, kv_lora = 128;
  const int64_t row_dim = kv_lora + rope;
  for (int64_t n_tokens : {1, 3, 20}) {
    const RepackedMatrix kb = RandomMatrix(GgmlType::kQ8_0, n_heads * kv_lora, nope, 5);
    const std::vector<float> q = RandomFloats(n_tokens * n_heads * head, 6);
    std::vector<double> want(n_tokens * n_heads * kv_lora), tol(want.size());
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        for (int64_t c = 0; c < kv_lora; ++c) {
          double acc = 0, abs_sum = 0;
          for (int64_t d = 0; d < nope; ++d) {
            const double p = static_cast<double>(RepackedValue(kb, h * kv_lora + c, d)) *
                             q[(t * n_heads + h) * head + d];
            acc += p;
            abs_sum += std::fabs(p);
          }
          want[(t * n_heads + h) * kv_lora + c] = acc;
          tol[(t * n_heads + h) * kv_lora + c] = F32DotTolerance(nope, abs_sum);
        }
      }
    }
    MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
    auto dkb = DeviceRepackedMatrix::Upload(kb);
    ASSERT_TRUE(dkb.ok()) << dkb.status();
    DeviceBuffer<float> dq(q), dqa(n_tokens * n_heads * row_dim);
    WeightOnlyGemmArguments a;
    a.device.w = dkb->view();
    a.device.n_out = kv_lora;
    a.device.n_tokens = n_tokens;
    a.device.n_batch = n_heads;
    a.device.x = dq.get();
    a.device.x_stride = n_heads * head;
    a.device.x_batch = head;
    a.device.y = dqa.get();
    a.device.y_stride = n_heads * row_dim;
    a.device.y_batch = row_dim;
    ASSERT_TRUE(RunWeightOnlyGemm(a).ok());
    const std::vector<float> got = dqa.Download();
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        for (int64_t c = 0; c < kv_lora; ++c) {
          const int64_t i = (t * n_heads + h) * kv_lora + c;
          ASSERT_NEAR(got[(t * n_heads + h) * row_dim + c], want[i], tol[i])
              << "tokens " << n_tokens << " t " << t << " h " << h << " c " << c;
        }
      }
    }
  }
}

}  // namespace
}  // namespace moeflow::cuda
