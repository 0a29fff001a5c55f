#include "sampling/stop_condition.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow::sampling {
namespace {

StopCondition MakeStop(const StopOptions& options) {
  absl::StatusOr<StopCondition> stop = StopCondition::Create(options);
  EXPECT_TRUE(stop.ok()) << stop.status();
  return *std::move(stop);
}

// Feeds pieces (token id = index + 100) and returns everything streamed, the
// per-step texts and the final step.
struct FedText {
  std::string streamed;
  std::vector<std::string> steps;
  StopStep last;
};
FedText Feed(StopCondition& stop, const std::vector<std::string>& pieces) {
  FedText run;
  for (size_t i = 0; i < pieces.size() && !stop.finished(); ++i) {
    run.last = stop.Append(static_cast<int32_t>(100 + i), pieces[i]);
    run.streamed += run.last.text;
    run.steps.push_back(run.last.text);
  }
  return run;
}

TEST(StopConditionTest, StopsOnStopStringSplitAcrossTokens) {
  StopCondition stop = MakeStop({.stop_strings = {"</answer>"}});
  FedText run = Feed(stop, {"The result", " is 4</an", "swer> trailing"});
  EXPECT_EQ(run.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(run.last.matched_stop_string, "</answer>");
  EXPECT_EQ(run.streamed, "The result is 4");
  EXPECT_EQ(FinishReasonName(run.last.finish_reason), "stop");
}

TEST(StopConditionTest, HoldsBackPossibleStopPrefixUntilItCannotMatch) {
  StopCondition stop = MakeStop({.stop_strings = {"STOP"}});
  FedText run = Feed(stop, {"abc S", "T", "x", "yz"});
  ASSERT_EQ(run.steps.size(), 4u);
  EXPECT_EQ(run.steps[0], "abc ");  // "S" could begin "STOP"
  EXPECT_EQ(run.steps[1], "");      // "ST" too
  EXPECT_EQ(run.steps[2], "STx");   // "STx" cannot
  EXPECT_EQ(run.steps[3], "yz");
  EXPECT_FALSE(run.last.finished());
}

TEST(StopConditionTest, NeverStreamsPartOfStopStringWhenOneCharPerToken) {
  const std::string text = "hello <|end|> world";
  StopCondition stop = MakeStop({.stop_strings = {"<|end|>"}});
  std::vector<std::string> pieces;
  for (char c : text) pieces.emplace_back(1, c);
  FedText run = Feed(stop, pieces);
  EXPECT_EQ(run.streamed, "hello ");
  for (const std::string& s : run.steps) EXPECT_EQ(s.find('<'), std::string::npos);
  EXPECT_EQ(run.last.finish_reason, FinishReason::kStop);
}

TEST(StopConditionTest, PicksLeftmostStopStringWhenSeveralMatch) {
  StopCondition stop = MakeStop({.stop_strings = {"world", "lo w"}});
  FedText run = Feed(stop, {"hello world"});
  EXPECT_EQ(run.last.matched_stop_string, "lo w");
  EXPECT_EQ(run.streamed, "hel");
}

TEST(StopConditionTest, StopsOnStopTokenWithoutEmittingItsText) {
  StopCondition stop = MakeStop({.stop_strings = {"##"}, .stop_tokens = {1}});
  StopStep a = stop.Append(5, "text #");
  EXPECT_EQ(a.text, "text ");
  StopStep b = stop.Append(1, "<｜end▁of▁sentence｜>");
  EXPECT_EQ(b.finish_reason, FinishReason::kStop);
  EXPECT_EQ(b.matched_stop_token, 1);
  EXPECT_EQ(b.text, "#");  // the held-back '#' was real text
}

TEST(StopConditionTest, FinishesWithLengthAndFlushesHeldTextAtMaxTokens) {
  StopCondition stop = MakeStop({.stop_strings = {"STOP"}, .max_tokens = 3});
  FedText run = Feed(stop, {"a", "b", "ST", "OP"});
  EXPECT_EQ(run.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(FinishReasonName(run.last.finish_reason), "length");
  EXPECT_EQ(run.streamed, "abST");
  EXPECT_EQ(stop.tokens_seen(), 3);
}

TEST(StopConditionTest, PrefersStopWhenLastAllowedTokenCompletesStopString) {
  StopCondition stop = MakeStop({.stop_strings = {"END"}, .max_tokens = 2});
  FedText run = Feed(stop, {"xE", "ND"});
  EXPECT_EQ(run.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(run.streamed, "x");
}

TEST(StopConditionTest, HoldsBackIncompleteUtf8Sequence) {
  StopCondition stop = MakeStop({});
  const std::string euro = "\xE2\x82\xAC";  // U+20AC in three bytes
  StopStep a = stop.Append(1, "a" + euro.substr(0, 2));
  EXPECT_EQ(a.text, "a");
  StopStep b = stop.Append(2, euro.substr(2) + "b");
  EXPECT_EQ(b.text, euro + "b");
}

TEST(StopConditionTest, FlushReturnsHeldTextWhenLoopEndsEarly) {
  StopCondition stop = MakeStop({.stop_strings = {"<tool>"}});
  StopStep a = stop.Append(1, "call <to");
  EXPECT_EQ(a.text, "call ");
  EXPECT_EQ(stop.Flush(), "<to");
  EXPECT_EQ(stop.Flush(), "");
}

TEST(StopConditionTest, ReturnsInvalidArgumentForEmptyStopStringOrNegativeMaxTokens) {
  absl::StatusOr<StopCondition> empty = StopCondition::Create({.stop_strings = {"a", ""}});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message().find("stop[1]"), 0u);
  absl::StatusOr<StopCondition> negative = StopCondition::Create({.max_tokens = -1});
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.status().message().find("max_tokens"), 0u);
}

}  // namespace
}  // namespace moeflow::sampling
