// Tool turns for chat templates that cannot render them, as OpenAI defines
// them: what the server (not the template) does so that the standard tool
// round-trip works with every template.
//
// Role in the data flow: RenderChat (chat_template.h) calls it when
// ChatTemplateOptions::polyfill_tool_messages is set (the HTTP API sets it;
// the peer-compatibility tests, which check the templates themselves, do
// not). llama.cpp's server does the same outside its templates
// (common/chat.cpp's polyfills).
//
//   deepseek-v2 (no tool support): an assistant message's tool calls become
//     its text, in the DeepSeek tool-call format the tools system prompt
//     teaches (server/api_exchange.h ToolsSystemPrompt), after its content
//     (null content: none); each run of tool results becomes one user turn
//     "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>RESULT
//     <｜tool▁output▁end｜>...<｜tool▁outputs▁end｜>" (the template drops
//     role tool, so the model would never see the results).
//   deepseek-v3: an assistant message with tool calls and empty content ""
//     gets null content (the template renders calls only for null content;
//     some clients send "").
//   other templates: unchanged.
//
// Thread-safety: a pure function. Failure: none.
#ifndef MOEFLOW_CHAT_TOOL_POLYFILL_H_
#define MOEFLOW_CHAT_TOOL_POLYFILL_H_

#include <vector>

#include "absl/strings/string_view.h"
#include "chat/chat_message.h"

namespace moeflow::chat {

std::vector<ChatMessage> PolyfillToolMessages(const std::vector<ChatMessage>& messages,
                                              absl::string_view template_name);

}  // namespace moeflow::chat

#endif  // MOEFLOW_CHAT_TOOL_POLYFILL_H_
