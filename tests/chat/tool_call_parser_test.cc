#include "chat/tool_call_parser.h"

#include <cstring>

#include "chat/chat_template.h"
#include "gtest/gtest.h"

namespace moeflow::chat {
namespace {

constexpr char kTwoCalls[] =
    "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
    "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function"
    "<｜tool▁sep｜>search\n```json\n{\"q\": \"a\\nb\"}\n```<｜tool▁call▁end｜>"
    "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";

TEST(ToolCallParserTest, ExtractsNameAndArgumentsOfEveryCall) {
  absl::StatusOr<ParsedToolCalls> parsed = ParseToolCalls(kTwoCalls);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->content, "Checking.");
  ASSERT_EQ(parsed->tool_calls.size(), 2u);
  EXPECT_EQ(parsed->tool_calls[0].name, "get_weather");
  EXPECT_EQ(parsed->tool_calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(parsed->tool_calls[1].name, "search");
  EXPECT_EQ(parsed->tool_calls[1].arguments, "{\"q\": \"a\\nb\"}");
}

TEST(ToolCallParserTest, ReturnsTextAsContentWhenThereAreNoCalls) {
  absl::StatusOr<ParsedToolCalls> parsed = ParseToolCalls("just text ```json\n{}\n```");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->content, "just text ```json\n{}\n```");
  EXPECT_TRUE(parsed->tool_calls.empty());
}

TEST(ToolCallParserTest, AcceptsMissingSectionEndWhenGenerationStoppedEarly) {
  absl::StatusOr<ParsedToolCalls> parsed = ParseToolCalls(
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```"
      "<｜tool▁call▁end｜>");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tool_calls.size(), 1u);
  EXPECT_EQ(parsed->tool_calls[0].arguments, "{}");
}

TEST(ToolCallParserTest, ReturnsInvalidArgumentForTruncatedCall) {
  absl::StatusOr<ParsedToolCalls> parsed = ParseToolCalls(
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\":");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("<｜tool▁call▁end｜>"), absl::string_view::npos);
}

TEST(ToolCallParserTest, SplitsReasoningWhenPromptOpenedThink) {
  SplitReasoningResult split = SplitReasoning("Let me think.\n</think>\n\nThe answer.", true);
  EXPECT_EQ(split.reasoning_content, "Let me think.");
  EXPECT_EQ(split.content, "The answer.");
}

TEST(ToolCallParserTest, SplitsReasoningWhenOutputOpensThinkItself) {
  SplitReasoningResult split = SplitReasoning("<think>\nhmm\n</think>\n\nHi", false);
  EXPECT_EQ(split.reasoning_content, "hmm");
  EXPECT_EQ(split.content, "Hi");
}

TEST(ToolCallParserTest, TreatsUnclosedReasoningAsReasoningOnlyWhenThinkWasOpen) {
  EXPECT_EQ(SplitReasoning("still thinking", true).reasoning_content, "still thinking");
  EXPECT_EQ(SplitReasoning("still thinking", true).content, "");
  EXPECT_EQ(SplitReasoning("plain answer", false).content, "plain answer");
  EXPECT_EQ(SplitReasoning("plain answer", false).reasoning_content, "");
}

TEST(ToolCallParserTest, ParsesR1OutputWithReasoningAndToolCalls) {
  absl::StatusOr<ChatMessage> message = ParseAssistantOutput(
      std::string("I should call it.\n</think>\n\n") +
          "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```"
          "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
      true);
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->reasoning_content, "I should call it.");
  EXPECT_FALSE(message->content.has_value());
  ASSERT_EQ(message->tool_calls.size(), 1u);
  EXPECT_EQ(message->tool_calls[0].name, "f");
}

TEST(ToolCallParserTest, RoundTripsCallsRenderedByTheV3Template) {
  // What RenderChat writes for an assistant's tool calls parses back.
  ChatMessage calls{ChatRole::kAssistant, std::nullopt};
  calls.tool_calls = {{"", "function", "a", "{\"k\": [1, 2]}"}, {"", "function", "b", "{}"}};
  ChatMessage user{ChatRole::kUser, std::string("u")};
  ChatTemplateOptions options;
  options.fallback_template = "deepseek-v3";
  absl::StatusOr<RenderedPrompt> rendered = RenderChat("", {user, calls}, options);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  const std::string generated =
      rendered->text.substr(rendered->text.find("<｜Assistant｜>") + strlen("<｜Assistant｜>"));
  absl::StatusOr<ParsedToolCalls> parsed = ParseToolCalls(generated);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tool_calls.size(), 2u);
  EXPECT_EQ(parsed->tool_calls[0].arguments, "{\"k\": [1, 2]}");
  EXPECT_EQ(parsed->tool_calls[1].name, "b");
}

}  // namespace
}  // namespace moeflow::chat
