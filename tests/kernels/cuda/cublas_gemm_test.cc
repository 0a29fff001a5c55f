// The cuBLAS BF16 GEMM wrapper (kernels/cuda/cublas_gemm.h) against a
// double-accumulated product of the same bf16 values, with the f32
// summation bound as tolerance. Needs a CUDA device (skips, printing why);
// the argument checks always run.
#include "kernels/cuda/cublas_gemm.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed) {
  std::vector<uint16_t> out;
  for (float v : RandomFloats(n, seed)) out.push_back(Fp32ToBf16(v));
  return out;
}

TEST(CublasGemmTest, ArgumentChecksNameTheProblem) {
  Bf16GemmArguments a;
  a.m = 2;
  a.n = 64;
  a.k = 128;
  a.ldx = 100;
  a.ldw = 128;
  a.ldy = 64;
  absl::Status s = CublasBf16Gemm::CanImplement(a);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("leading dimensions x 100, w 128, y 64 must be >= k, k, n"),
            std::string::npos)
      << s;
}

// libcublas is loaded at run time: without a device Create must fail in
// cuBLAS itself (the library was found), naming the cuBLAS status.
TEST(CublasGemmTest, CreateLoadsTheLibraryAndReportsCublasErrors) {
  auto gemm = CublasBf16Gemm::Create();
  if (gemm.ok()) GTEST_SKIP() << "a CUDA device is present: covered by the product test";
  EXPECT_EQ(gemm.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(gemm.status().message().find("cannot load libcublas"), std::string::npos)
      << gemm.status();
  EXPECT_NE(gemm.status().message().find("cublasCreate failed: CUBLAS_STATUS_"), std::string::npos)
      << gemm.status();
}

TEST(CublasGemmTest, MatchesDoubleReferenceAndAccumulatesWithBeta) {
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  auto gemm = CublasBf16Gemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  const int64_t n = 96, k = 320, ldx = 328, ldy = 100;
  for (int64_t m : {1, 17}) {
    const std::vector<uint16_t> x = RandomBf16(m * ldx, 1), w = RandomBf16(n * k, 2);
    const std::vector<float> y0 = RandomFloats(m * ldy, 3);
    DeviceBuffer<uint16_t> dx(x), dw(w);
    DeviceBuffer<float> dy(y0);
    for (float beta : {0.0f, 1.0f}) {
      DeviceBuffer<float> out(y0);
      Bf16GemmArguments a{m, n, k, dx.get(), ldx, dw.get(), k, out.get(), ldy, beta, nullptr};
      ASSERT_TRUE((*gemm)->Run(a).ok());
      const std::vector<float> got = out.Download();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double acc = beta * y0[i * ldy + j], abs_sum = std::fabs(acc);
          for (int64_t c = 0; c < k; ++c) {
            const double p =
                static_cast<double>(Bf16ToFp32(x[i * ldx + c])) * Bf16ToFp32(w[j * k + c]);
            acc += p;
            abs_sum += std::fabs(p);
          }
          ASSERT_NEAR(got[i * ldy + j], acc, F32DotTolerance(k + 1, abs_sum))
              << "m " << m << " beta " << beta << " (" << i << ", " << j << ")";
        }
      }
    }
  }
}

}  // namespace
}  // namespace moeflow::cuda
