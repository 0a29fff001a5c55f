// The cuBLAS BF16 GEMM wrapper (kernels/cuda/cublas_gemm.h) against a
// double-accumulated product of the same bf16 values, with the f32
// summation bound as tolerance, and the f32 product (cublasSgemm) the router
// uses. The reference is computed everywhere; the device part skips, printing
// why, without a CUDA device.
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

// The expected product (double) and its f32 summation bound, row-major
// y[m × ldy] = x[m × ldx] · w[n × k]ᵀ + beta · y0.
struct Expected {
  std::vector<double> y, tol;
};

template <typename X>
Expected Reference(const std::vector<X>& x, const std::vector<X>& w, const std::vector<float>& y0,
                   int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy, float beta,
                   float (*value)(X)) {
  Expected e;
  e.y.resize(m * n);
  e.tol.resize(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = beta * y0[i * ldy + j], abs_sum = std::fabs(acc);
      for (int64_t c = 0; c < k; ++c) {
        const double p = static_cast<double>(value(x[i * ldx + c])) * value(w[j * k + c]);
        acc += p;
        abs_sum += std::fabs(p);
      }
      e.y[i * n + j] = acc;
      e.tol[i * n + j] = F32DotTolerance(k + 1, abs_sum);
    }
  }
  return e;
}

float Bf16Value(uint16_t v) { return Bf16ToFp32(v); }
float F32Value(float v) { return v; }

TEST(CublasGemmTest, MatchesDoubleReferenceAndAccumulatesWithBeta) {
  const int64_t n = 96, k = 320, ldx = 328, ldy = 100;
  for (int64_t m : {1, 17}) {
    const std::vector<uint16_t> x = RandomBf16(m * ldx, 1), w = RandomBf16(n * k, 2);
    const std::vector<float> y0 = RandomFloats(m * ldy, 3);
    for (float beta : {0.0f, 1.0f}) {
      const Expected want = Reference(x, w, y0, m, n, k, ldx, ldy, beta, Bf16Value);
      MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
      auto gemm = CublasBf16Gemm::Create();
      ASSERT_TRUE(gemm.ok()) << gemm.status();
      DeviceBuffer<uint16_t> dx(x), dw(w);
      DeviceBuffer<float> out(y0);
      Bf16GemmArguments a{m, n, k, dx.get(), ldx, dw.get(), k, out.get(), ldy, beta, nullptr};
      ASSERT_TRUE((*gemm)->Run(a).ok());
      const std::vector<float> got = out.Download();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_NEAR(got[i * ldy + j], want.y[i * n + j], want.tol[i * n + j])
              << "m " << m << " beta " << beta << " (" << i << ", " << j << ")";
        }
      }
    }
  }
}

// The f32 product the router's gate logits use (cublasSgemm: no TF32 in
// cuBLAS's default math mode, so the f32 summation bound holds).
TEST(CublasGemmTest, F32GemmMatchesDoubleReference) {
  const int64_t n = 256, k = 7168, ldx = 7168, ldy = 260;  // DeepSeek-V3's router
  for (int64_t m : {1, 13}) {
    const std::vector<float> x = RandomFloats(m * ldx, 4, -2, 2), w = RandomFloats(n * k, 5);
    const std::vector<float> y0 = RandomFloats(m * ldy, 6);
    const Expected want = Reference(x, w, y0, m, n, k, ldx, ldy, 0.0f, F32Value);
    MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
    auto gemm = CublasBf16Gemm::Create();
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    DeviceBuffer<float> dx(x), dw(w), out(y0);
    F32GemmArguments a{m, n, k, dx.get(), ldx, dw.get(), k, out.get(), ldy, 0.0f, nullptr};
    ASSERT_TRUE((*gemm)->RunF32(a).ok());
    const std::vector<float> got = out.Download();
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        ASSERT_NEAR(got[i * ldy + j], want.y[i * n + j], want.tol[i * n + j])
            << "m " << m << " (" << i << ", " << j << ")";
      }
      // Columns past n are left as they were.
      for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(got[i * ldy + j], y0[i * ldy + j]);
    }
  }
}

}  // namespace
}  // namespace moeflow::cuda
