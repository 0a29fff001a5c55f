// Chat messages: the conversation a chat template renders into a prompt.
//
// Role in the data flow: the HTTP server (OpenAI-style /v1/chat/completions)
// and `moeflow chat` parse the request's "messages" and "tools" with
// ParseMessagesJson (or ParseMessages) / ParseToolsJson, hand them to RenderChat
// (chat_template.h), tokenize the result and generate; the generated text goes
// back through ParseAssistantOutput (tool_call_parser.h).
//
// JSON accepted (OpenAI chat completions):
//   {"role": "system" | "developer" | "user" | "assistant" | "tool",
//    "content": string | null | [{"type": "text", "text": string}, ...],
//    "tool_calls": [{"id"?: string, "type"?: "function",
//                    "function": {"name": string, "arguments": string | object}}],
//    "reasoning_content"?: string, "tool_call_id"?: string, "name"?: string}
// "developer" (OpenAI's name for system instructions to its newer models) is
// a system message. Content parts are joined (text parts only); object
// arguments are serialized
// compactly. `"tool_calls": null` or `[]` counts as no tool calls. Unknown
// keys are ignored, as OpenAI does.
//
// Thread-safety: plain values and pure functions. Failure: InvalidArgument
// naming the field at fault, e.g.
//   "messages[2].role: expected one of system, developer, user, assistant,
//   tool, got \"bot\"".
#ifndef MOEFLOW_CHAT_CHAT_MESSAGE_H_
#define MOEFLOW_CHAT_CHAT_MESSAGE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moeflow::chat {

enum class ChatRole { kSystem, kUser, kAssistant, kTool };

// "system" / "user" / "assistant" / "tool".
absl::string_view ChatRoleName(ChatRole role);

// One call of a function by the assistant.
struct ToolCall {
  std::string id;  // may be empty; templates don't render it
  std::string type = "function";
  std::string name;
  std::string arguments;  // JSON text, rendered verbatim
};

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  // nullopt = JSON null (an assistant message that only calls tools).
  std::optional<std::string> content;
  std::vector<ToolCall> tool_calls;  // assistant only
  // The reasoning of an earlier R1 turn. The DeepSeek templates never render
  // it (the API docs say not to send it back); kept for the server's echo.
  std::optional<std::string> reasoning_content;
  std::string tool_call_id;  // tool only
  std::string name;
};

// A function the model may call (an entry of the request's "tools").
struct ToolDefinition {
  std::string type = "function";
  std::string name;
  std::string description;
  std::string parameters_json;  // the JSON schema, compact; "" if absent
  nlohmann::json raw;           // the entry as given
};

// Parses a JSON array of messages (the request's "messages" value), as text
// or already parsed.
absl::StatusOr<std::vector<ChatMessage>> ParseMessagesJson(absl::string_view json_text);
absl::StatusOr<std::vector<ChatMessage>> ParseMessages(const nlohmann::json& messages);

// Parses a JSON array of tools ({"type": "function", "function": {...}}).
absl::StatusOr<std::vector<ToolDefinition>> ParseToolsJson(const nlohmann::json& tools);

}  // namespace moeflow::chat

#endif  // MOEFLOW_CHAT_CHAT_MESSAGE_H_
