// MOEFLOW_REPACK (the BUILD targets set it; PreferredLayout reads it once
// per process): 0 keeps the GGUF blocks on every ISA, 1 is the default, and
// any other value is reported on stderr and keeps the default.
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"

namespace moeflow {
namespace {

TEST(RepackEnvTest, SwitchIsObeyedAndBadValuesAreReported) {
  const char* env = std::getenv("MOEFLOW_REPACK");
  ASSERT_NE(env, nullptr) << "the test target sets MOEFLOW_REPACK";
  const std::string v = env;
  testing::internal::CaptureStderr();
  const WeightLayout layout = PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx2);
  const std::string err = testing::internal::GetCapturedStderr();
  if (v == "0") {
    EXPECT_EQ(layout, WeightLayout::kGgml);
    EXPECT_EQ(err, "");
  } else if (v == "1") {
    EXPECT_EQ(layout, WeightLayout::kQ5_0Pairs);
    EXPECT_EQ(err, "");
  } else {
    EXPECT_EQ(layout, WeightLayout::kQ5_0Pairs);
    EXPECT_NE(err.find("MOEFLOW_REPACK='" + v + "' is neither 0 nor 1"), std::string::npos)
        << err;
  }
  // Read once: a second call says nothing more.
  testing::internal::CaptureStderr();
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx2), layout);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace moeflow
