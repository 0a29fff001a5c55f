#include "chat/chat_message.h"

#include "gtest/gtest.h"

namespace moeflow::chat {
namespace {

TEST(ChatMessageTest, ParsesOpenAiMessagesWithToolCalls) {
  absl::StatusOr<std::vector<ChatMessage>> messages = ParseMessagesJson(R"([
    {"role": "system", "content": "S"},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
      {"function": {"name": "g", "arguments": {"y": 2}}}]},
    {"role": "tool", "content": "r", "tool_call_id": "c1"},
    {"role": "assistant", "content": "done", "reasoning_content": "why", "tool_calls": []}
  ])");
  ASSERT_TRUE(messages.ok()) << messages.status();
  ASSERT_EQ(messages->size(), 5u);
  EXPECT_EQ((*messages)[1].content, "ab");
  const ChatMessage& calls = (*messages)[2];
  EXPECT_FALSE(calls.content.has_value());
  ASSERT_EQ(calls.tool_calls.size(), 2u);
  EXPECT_EQ(calls.tool_calls[0].id, "c1");
  EXPECT_EQ(calls.tool_calls[0].arguments, "{\"x\":1}");
  EXPECT_EQ(calls.tool_calls[1].type, "function");
  EXPECT_EQ(calls.tool_calls[1].arguments, "{\"y\":2}");
  EXPECT_EQ((*messages)[3].tool_call_id, "c1");
  EXPECT_EQ((*messages)[4].reasoning_content, "why");
  EXPECT_TRUE((*messages)[4].tool_calls.empty());
}

TEST(ChatMessageTest, ReturnsInvalidArgumentNamingTheBadField) {
  struct Case {
    const char* json;
    const char* message_prefix;
  };
  const Case cases[] = {
      {R"([{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"bot","content":"c"}])",
       "messages[2].role: expected one of system, developer, user, assistant, tool, got \"bot\""},
      {R"([{"content":"a"}])", "messages[0].role: expected one of"},
      {R"([{"role":"user","content":5}])", "messages[0].content: expected a string"},
      {R"([{"role":"user"}])", "messages[0].content: expected a string for role user"},
      {R"([{"role":"assistant","content":null}])", "messages[0].content: null content needs"},
      {R"([{"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":"{}"}}]}])",
       "messages[0].tool_calls[0].function.name"},
      {R"([{"role":"assistant","content":null,"tool_calls":[{"type":"code","function":{"name":"f"}}]}])",
       "messages[0].tool_calls[0].type"},
      {R"({"role":"user"})", "messages: expected an array"},
      {R"([{"role":"user","content":"x"})", "messages: not valid JSON"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<ChatMessage>> messages = ParseMessagesJson(c.json);
    ASSERT_FALSE(messages.ok()) << c.json;
    EXPECT_EQ(messages.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(messages.status().message().find(c.message_prefix), 0u) << messages.status();
  }
}

TEST(ChatMessageTest, ParsesToolDefinitions) {
  auto tools = ParseToolsJson(nlohmann::json::parse(R"([
    {"type": "function", "function": {"name": "f", "description": "d",
                                      "parameters": {"type": "object"}}}])"));
  ASSERT_TRUE(tools.ok()) << tools.status();
  ASSERT_EQ(tools->size(), 1u);
  EXPECT_EQ((*tools)[0].name, "f");
  EXPECT_EQ((*tools)[0].parameters_json, "{\"type\":\"object\"}");
  auto bad = ParseToolsJson(nlohmann::json::parse(R"([{"type": "function", "function": {}}])"));
  EXPECT_EQ(bad.status().message().find("tools[0].function.name"), 0u) << bad.status();
}

TEST(ChatMessageTest, DeveloperRoleIsASystemMessage) {
  absl::StatusOr<std::vector<ChatMessage>> m =
      ParseMessagesJson(R"([{"role": "developer", "content": "Be brief."},
                            {"role": "user", "content": "Hi"}])");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)[0].role, ChatRole::kSystem);
  EXPECT_EQ((*m)[0].content, "Be brief.");
}

}  // namespace
}  // namespace moeflow::chat
