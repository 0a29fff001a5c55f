#include "chat/chat_template.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow::chat {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Template(const std::string& name) {
  return ReadFile("tests/chat/templates/" + name + ".jinja");
}

ChatMessage User(std::string content) { return {ChatRole::kUser, std::move(content)}; }
ChatMessage System(std::string content) { return {ChatRole::kSystem, std::move(content)}; }
ChatMessage Assistant(std::string content) { return {ChatRole::kAssistant, std::move(content)}; }
ChatMessage Tool(std::string content) { return {ChatRole::kTool, std::move(content)}; }
ChatMessage Calls(std::vector<ToolCall> calls) {
  ChatMessage m{ChatRole::kAssistant, std::nullopt};
  m.tool_calls = std::move(calls);
  return m;
}

RenderedPrompt RenderOk(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                        const ChatTemplateOptions& options) {
  absl::StatusOr<RenderedPrompt> rendered = RenderChat(tmpl, messages, options);
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return rendered.ok() ? *rendered : RenderedPrompt();
}

TEST(ChatTemplateTest, RecognizesEveryCommittedTemplateFile) {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"deepseek-v3", "deepseek-v3"},
      {"deepseek-r1", "deepseek-r1"},
      {"deepseek-r1-2501", "deepseek-r1-2501"},
      {"deepseek-v2-gguf", "deepseek-v2"},
  };
  for (const auto& [file, name] : files) {
    absl::StatusOr<std::string> identified = IdentifyChatTemplate(Template(file));
    ASSERT_TRUE(identified.ok()) << file << ": " << identified.status();
    EXPECT_EQ(*identified, name);
  }
}

TEST(ChatTemplateTest, RecognizesTemplateWhenOnlyWhitespaceAndQuotingDiffer) {
  std::string tmpl = Template("deepseek-v3");
  // Pretty-printing with whitespace control, spaces inside tags, escaped
  // newlines and double quotes in literals keep the rendered output, so they
  // keep the fingerprint.
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = tmpl.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    tmpl.replace(at, from.size(), to);
  };
  replace("{{bos_token}}", "{{ bos_token }}");
  replace("'\n\n'", "\"\\n\\n\"");
  replace("{%- for message in messages %}{%- if message['role'] == 'user' %}",
          "\n{%- for message in messages %}\n    {%- if message['role'] == 'user' %}");
  EXPECT_EQ(ChatTemplateFingerprint(tmpl), ChatTemplateFingerprint(Template("deepseek-v3")));
  // A change of output is a different template.
  replace("'<｜User｜>'", "'<｜User｜> '");
  EXPECT_FALSE(IdentifyChatTemplate(tmpl).ok());
}

TEST(ChatTemplateTest, RendersSystemUserAndGenerationPromptWithBos) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  RenderedPrompt p =
      RenderOk(Template("deepseek-v3"), {System("S1"), User("Hi"), System("S2")}, options);
  EXPECT_EQ(p.text, "<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>Hi<｜Assistant｜>");
  EXPECT_TRUE(p.starts_with_bos);
  EXPECT_FALSE(p.opens_think);
  EXPECT_EQ(p.template_name, "deepseek-v3");
  EXPECT_EQ(p.fallback_used, "");
}

TEST(ChatTemplateTest, R1StripsReasoningOfEarlierTurnsAndOpensThink) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  const std::vector<ChatMessage> messages = {User("Q"), Assistant("<think>r</think>\n\nA"),
                                             User("Q2")};
  RenderedPrompt r1 = RenderOk(Template("deepseek-r1"), messages, options);
  EXPECT_EQ(r1.text,
            "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜>\n\nA<｜end▁of▁sentence｜>"
            "<｜User｜>Q2<｜Assistant｜><think>\n");
  EXPECT_TRUE(r1.opens_think);
  RenderedPrompt v3 = RenderOk(Template("deepseek-v3"), messages, options);
  EXPECT_NE(v3.text.find("<think>r</think>"), std::string::npos);
}

TEST(ChatTemplateTest, ForceThinkAppendsThinkOnceWhenGenerationPromptIsEmitted) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.force_think = true;
  EXPECT_EQ(RenderOk(Template("deepseek-r1-2501"), {User("Q")}, options).text,
            "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n");
  EXPECT_EQ(RenderOk(Template("deepseek-r1"), {User("Q")}, options).text,
            "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n");
  options.add_generation_prompt = false;
  EXPECT_EQ(RenderOk(Template("deepseek-r1-2501"), {User("Q")}, options).text,
            "<｜begin▁of▁sentence｜><｜User｜>Q");
}

TEST(ChatTemplateTest, RendersToolCallsAndOutputsAsV3TemplateDoes) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  const std::vector<ChatMessage> messages = {
      User("W?"),
      Calls({{"", "function", "get", "{\"c\": 1}"}, {"", "function", "get", "{\"c\": 2}"}}),
      Tool("r1"), Tool("r2")};
  RenderedPrompt p = RenderOk(Template("deepseek-v3"), messages, options);
  EXPECT_EQ(p.text,
            "<｜begin▁of▁sentence｜><｜User｜>W?<｜Assistant｜><｜tool▁calls▁begin｜>"
            "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{\"c\": 1}\n```"
            "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n"
            "{\"c\": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
            "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r1<｜tool▁output▁end｜>\n"
            "<｜tool▁output▁begin｜>r2<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
  // No generation prompt after tool outputs: the model continues directly.
  EXPECT_FALSE(p.opens_think);
}

TEST(ChatTemplateTest, IgnoresToolDefinitionsLikeTheTemplates) {
  ChatTemplateOptions with_tools;
  with_tools.tools.push_back({"function", "f", "d", "{}", {}});
  EXPECT_EQ(RenderOk(Template("deepseek-v3"), {User("x")}, with_tools).text,
            RenderOk(Template("deepseek-v3"), {User("x")}, {}).text);
}

TEST(ChatTemplateTest, ReturnsUnimplementedForUnknownTemplateWithoutFallback) {
  absl::StatusOr<RenderedPrompt> p = RenderChat("{{ messages }}", {User("x")}, {});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(p.status().message().find("sha256"), absl::string_view::npos);
}

TEST(ChatTemplateTest, UsesFallbackAndSaysWhyWhenAllowed) {
  ChatTemplateOptions options;
  options.fallback_template = "deepseek-r1";
  options.add_generation_prompt = true;
  RenderedPrompt p = RenderOk("{{ messages }}", {User("x")}, options);
  EXPECT_EQ(p.template_name, "deepseek-r1");
  EXPECT_EQ(p.fallback_used.rfind("deepseek-r1 (template not recognized: sha256 ", 0), 0u)
      << p.fallback_used;
  EXPECT_EQ(p.text, "<｜begin▁of▁sentence｜><｜User｜>x<｜Assistant｜><think>\n");
  RenderedPrompt empty = RenderOk("", {User("x")}, options);
  EXPECT_EQ(empty.fallback_used, "deepseek-r1 (no chat template)");
  options.fallback_template = "chatml";
  absl::StatusOr<RenderedPrompt> bad = RenderChat("", {User("x")}, options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, ReturnsInvalidArgumentNamingMessageWithNullContent) {
  std::vector<ChatMessage> messages = {User("x"), {ChatRole::kUser, std::nullopt}};
  absl::StatusOr<RenderedPrompt> p = RenderChat(Template("deepseek-v3"), messages, {});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message().find("messages[1].content"), 0u) << p.status();
}

TEST(ChatTemplateTest, RendersGgufDeepSeekV2TemplateWithEosToken) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.eos_token = "<EOS>";
  options.bos_token = "<BOS>";
  EXPECT_EQ(
      RenderOk(Template("deepseek-v2-gguf"), {System("S"), User("U"), Assistant("A")}, options)
          .text,
      "<BOS>S\n\nUser: U\n\nAssistant: A<EOS>Assistant:");
}

// OpenAI's tool round-trip (what the SDKs send: an assistant message with
// content null + tool_calls, then the tool's result) renders with every
// template once the server asks for the polyfill; without it the templates
// behave as their Jinja does (deepseek-v2 refuses null content).
TEST(ChatTemplateTest, ToolRoundTripRendersWithThePolyfill) {
  ToolCall call;
  call.name = "get_weather";
  call.arguments = "{\"city\": \"Paris\"}";
  const std::vector<ChatMessage> messages = {User("Weather?"), Calls({call}), Tool("{\"c\": 18}"),
                                             Tool("{\"c\": 19}")};
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.bos_token = "<BOS>";
  options.eos_token = "<EOS>";
  EXPECT_FALSE(RenderChat(Template("deepseek-v2-gguf"), messages, options).ok());
  options.polyfill_tool_messages = true;
  EXPECT_EQ(RenderOk(Template("deepseek-v2-gguf"), messages, options).text,
            "<BOS>User: Weather?\n\nAssistant: "
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
            "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><EOS>"
            "User: <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{\"c\": 18}<｜tool▁output▁end｜>"
            "<｜tool▁output▁begin｜>{\"c\": 19}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>\n\n"
            "Assistant:");
  // deepseek-v3 renders null content as its template does, polyfill or not;
  // "" with tool calls (some clients) is taken as null, so the calls show.
  options.polyfill_tool_messages = false;
  const std::string v3_null = RenderOk(Template("deepseek-v3"), messages, options).text;
  EXPECT_NE(v3_null.find("get_weather"), std::string::npos) << v3_null;
  std::vector<ChatMessage> empty_content = messages;
  empty_content[1].content = "";
  EXPECT_EQ(RenderOk(Template("deepseek-v3"), empty_content, options).text.find("get_weather"),
            std::string::npos);
  options.polyfill_tool_messages = true;
  EXPECT_EQ(RenderOk(Template("deepseek-v3"), empty_content, options).text, v3_null);
  EXPECT_EQ(RenderOk(Template("deepseek-v3"), messages, options).text, v3_null);
}

}  // namespace
}  // namespace moeflow::chat
