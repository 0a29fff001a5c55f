// base/knobs: values from SetKnobs, then the environment (the BUILD target
// sets MOEFLOW_YIELD_US to a bad value and MOEFLOW_PIN=0), then the default;
// a value read once stays in effect and SetKnobs refuses to change it.
#include "base/knobs.h"

#include <string>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

TEST(KnobsTest, EveryKnobHasANameAVariableADefaultAndHelp) {
  const std::string help = KnobsHelp();
  for (const KnobSpec& s : AllKnobs()) {
    EXPECT_EQ(&KnobInfo(s.knob), &s);
    EXPECT_NE(help.find(KnobEnvName(s.name)), std::string::npos) << s.name;
    EXPECT_NE(help.find(s.help), std::string::npos) << s.name;
  }
  EXPECT_EQ(KnobEnvName("yield_us"), "MOEFLOW_YIELD_US");
}

TEST(KnobsTest, EnvironmentValuesAreTakenAndBadOnesReportedOnceKeepingTheDefault) {
  testing::internal::CaptureStderr();
  const std::map<std::string, std::string> values = KnobValues();
  EXPECT_EQ(values.at("pin"), "0");
  EXPECT_EQ(values.at("yield_us"), "3000");
  EXPECT_EQ(values.at("repack"), "1");
  EXPECT_EQ(values.at("isa"), "");
  EXPECT_EQ(KnobInt(Knob::kYieldUs), 3000);
  EXPECT_FALSE(KnobBool(Knob::kPin));
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("MOEFLOW_YIELD_US='12ms' is not an integer in [0, 1000000]; keeping the "
                     "default (3000)"),
            std::string::npos)
      << err;
  // Reported once, however often it is read.
  EXPECT_EQ(err.find("MOEFLOW_YIELD_US", err.find("MOEFLOW_YIELD_US") + 1), std::string::npos)
      << err;
}

TEST(KnobsTest, SetKnobsValidatesEverythingBeforeChangingAnything) {
  absl::Status s = SetKnobs({{"hugepages", "0"}, {"isa", "avx1024"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("knob isa: 'avx1024' is not one of \"\", scalar, avx2"),
            std::string::npos)
      << s;
  EXPECT_EQ(KnobValues().at("hugepages"), "1");  // unchanged
  s = SetKnobs({{"no_such_knob", "1"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown (knobs: isa, repack"), std::string::npos) << s;
  EXPECT_EQ(SetKnobFromFlag("repack").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetKnobs({{"repack", "2"}}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KnobsTest, SetValuesWinOverTheEnvironmentUntilAKnobIsInEffect) {
  ASSERT_TRUE(SetKnobs({{"hugepages", "false"}, {"profile", "1"}}).ok());
  EXPECT_EQ(KnobValues().at("hugepages"), "0");
  EXPECT_FALSE(KnobBool(Knob::kHugePages));  // now in effect
  EXPECT_TRUE(KnobBool(Knob::kProfile));
  // The same value again is fine; another one is refused, naming both.
  EXPECT_TRUE(SetKnobs({{"hugepages", "0"}}).ok());
  const absl::Status s = SetKnobFromFlag("hugepages=1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("already computes with hugepages='0', not '1'"), std::string::npos)
      << s;
  // A knob read from the environment is in effect the same way.
  EXPECT_FALSE(KnobBool(Knob::kPin));
  EXPECT_EQ(SetKnobs({{"pin", "1"}}).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moeflow
