#include "chat/tool_polyfill.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace moeflow::chat {

std::vector<ChatMessage> PolyfillToolMessages(const std::vector<ChatMessage>& messages,
                                              absl::string_view template_name) {
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  if (template_name == "deepseek-v3") {
    for (ChatMessage m : messages) {
      if (m.role == ChatRole::kAssistant && !m.tool_calls.empty() && m.content.has_value() &&
          m.content->empty()) {
        m.content.reset();
      }
      out.push_back(std::move(m));
    }
    return out;
  }
  if (template_name != "deepseek-v2") return messages;
  constexpr absl::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
  bool in_outputs = false;  // out.back() is the user turn of a run of tool results
  for (const ChatMessage& m : messages) {
    if (m.role == ChatRole::kTool) {
      const std::string result =
          absl::StrCat("<｜tool▁output▁begin｜>", m.content.value_or(""), "<｜tool▁output▁end｜>");
      if (in_outputs) {
        std::string& text = *out.back().content;
        text.insert(text.size() - kOutputsEnd.size(), result);
        continue;
      }
      ChatMessage user;
      user.role = ChatRole::kUser;
      user.content = absl::StrCat("<｜tool▁outputs▁begin｜>", result, kOutputsEnd);
      out.push_back(std::move(user));
      in_outputs = true;
      continue;
    }
    in_outputs = false;
    if (m.role == ChatRole::kAssistant && !m.tool_calls.empty()) {
      ChatMessage text = m;
      std::string calls = "<｜tool▁calls▁begin｜>";
      for (size_t i = 0; i < m.tool_calls.size(); ++i) {
        const ToolCall& call = m.tool_calls[i];
        absl::StrAppend(&calls, i > 0 ? "\n" : "", "<｜tool▁call▁begin｜>", call.type,
                        "<｜tool▁sep｜>", call.name, "\n```json\n", call.arguments,
                        "\n```<｜tool▁call▁end｜>");
      }
      calls += "<｜tool▁calls▁end｜>";
      text.content = m.content.value_or("") + calls;
      text.tool_calls.clear();
      out.push_back(std::move(text));
      continue;
    }
    out.push_back(m);
  }
  return out;
}

}  // namespace moeflow::chat
