// MOEFLOW_ISA forces a kernel variant (the BUILD target sets it): the
// selected ISA is the forced one when this CPU supports it, else the best it
// has. Each forced name runs as its own test target (SelectedIsa is read
// once per process).
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"

namespace moeflow {
namespace {

TEST(IsaOverrideTest, ForcedIsaIsSelectedWhenSupported) {
  const char* env = std::getenv("MOEFLOW_ISA");
  ASSERT_NE(env, nullptr) << "the test target sets MOEFLOW_ISA";
  const std::string wanted = env;
  CpuIsa forced = CpuIsa::kScalar;
  bool known = false;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512,
                     CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (wanted == CpuIsaName(isa)) {
      forced = isa;
      known = true;
    }
  }
  ASSERT_TRUE(known) << wanted;
  if (CpuSupportsIsa(forced)) {
    EXPECT_EQ(SelectedIsa(), forced) << CpuIsaName(SelectedIsa());
  } else {
    // Falls back to the best this CPU has, which is not the forced one.
    EXPECT_NE(SelectedIsa(), forced);
    EXPECT_TRUE(CpuSupportsIsa(SelectedIsa()));
  }
}

}  // namespace
}  // namespace moeflow
