// base/env_switch: EnvIntOr takes decimal integers in range and keeps the
// default (with one line on stderr) for anything else; EnvSwitchOnByDefault
// is on unless "0".
#include "base/env_switch.h"

#include <stdlib.h>

#include <string>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

constexpr char kName[] = "MOEFLOW_ENV_SWITCH_TEST_VALUE";

int Read(const char* value) {
  if (value == nullptr) {
    unsetenv(kName);
  } else {
    setenv(kName, value, 1);
  }
  return EnvIntOr(kName, 3000, 0, 100000, "the test's default");
}

TEST(EnvIntOrTest, TakesIntegersInRange) {
  EXPECT_EQ(Read(nullptr), 3000);
  EXPECT_EQ(Read("0"), 0);
  EXPECT_EQ(Read("250"), 250);
  EXPECT_EQ(Read("100000"), 100000);
}

TEST(EnvIntOrTest, KeepsTheDefaultForAnythingElse) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(Read(""), 3000);
  EXPECT_EQ(Read("-1"), 3000);
  EXPECT_EQ(Read("100001"), 3000);
  EXPECT_EQ(Read("12ms"), 3000);
  EXPECT_EQ(Read("1e3"), 3000);
  EXPECT_EQ(Read("99999999999999999999"), 3000);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("MOEFLOW_ENV_SWITCH_TEST_VALUE='12ms' is not an integer in [0, 100000]; "
                     "the test's default (the default)"),
            std::string::npos)
      << err;
}

TEST(EnvSwitchTest, OnUnlessZero) {
  unsetenv(kName);
  EXPECT_TRUE(EnvSwitchOnByDefault(kName, "on"));
  setenv(kName, "0", 1);
  EXPECT_FALSE(EnvSwitchOnByDefault(kName, "on"));
  setenv(kName, "1", 1);
  EXPECT_TRUE(EnvSwitchOnByDefault(kName, "on"));
  testing::internal::CaptureStderr();
  setenv(kName, "yes", 1);
  EXPECT_TRUE(EnvSwitchOnByDefault(kName, "on"));
  EXPECT_NE(testing::internal::GetCapturedStderr().find("is neither 0 nor 1"), std::string::npos);
}

}  // namespace
}  // namespace moeflow
