#include "chat/chat_message.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moeflow::chat {
namespace {

using nlohmann::json;

absl::Status FieldError(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

std::string TypeName(const json& value) { return value.type_name(); }

// A string field that may be absent; error if present with another type.
absl::StatusOr<std::optional<std::string>> OptionalString(const json& object, const char* key,
                                                          absl::string_view path) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) {
    return FieldError(absl::StrCat(path, ".", key),
                      absl::StrCat("expected a string, got ", TypeName(*it)));
  }
  return std::optional<std::string>(it->get<std::string>());
}

absl::StatusOr<std::optional<std::string>> ParseContent(const json& message,
                                                        absl::string_view path) {
  auto it = message.find("content");
  if (it == message.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  const std::string content_path = absl::StrCat(path, ".content");
  if (!it->is_array()) {
    return FieldError(
        content_path,
        absl::StrCat("expected a string, null or an array of parts, got ", TypeName(*it)));
  }
  std::string joined;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& part = (*it)[i];
    const std::string part_path = absl::StrCat(content_path, "[", i, "]");
    if (!part.is_object()) return FieldError(part_path, "expected an object");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string() || *type != "text") {
      return FieldError(absl::StrCat(part_path, ".type"),
                        "only \"text\" content parts are supported");
    }
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) {
      return FieldError(absl::StrCat(part_path, ".text"), "expected a string");
    }
    joined += text->get<std::string>();
  }
  return std::optional<std::string>(std::move(joined));
}

absl::StatusOr<ToolCall> ParseToolCall(const json& call, const std::string& path) {
  if (!call.is_object()) return FieldError(path, "expected an object");
  ToolCall out;
  absl::StatusOr<std::optional<std::string>> id = OptionalString(call, "id", path);
  if (!id.ok()) return id.status();
  out.id = id->value_or("");
  absl::StatusOr<std::optional<std::string>> type = OptionalString(call, "type", path);
  if (!type.ok()) return type.status();
  if (type->has_value() && **type != "function") {
    return FieldError(absl::StrCat(path, ".type"),
                      absl::StrCat("expected \"function\", got \"", **type, "\""));
  }
  auto function = call.find("function");
  if (function == call.end() || !function->is_object()) {
    return FieldError(absl::StrCat(path, ".function"), "expected an object");
  }
  const std::string function_path = absl::StrCat(path, ".function");
  auto name = function->find("name");
  if (name == function->end() || !name->is_string() || name->get<std::string>().empty()) {
    return FieldError(absl::StrCat(function_path, ".name"), "expected a non-empty string");
  }
  out.name = name->get<std::string>();
  auto arguments = function->find("arguments");
  if (arguments == function->end() || arguments->is_null()) {
    out.arguments = "{}";
  } else if (arguments->is_string()) {
    out.arguments = arguments->get<std::string>();
  } else if (arguments->is_object()) {
    out.arguments = arguments->dump();
  } else {
    return FieldError(absl::StrCat(function_path, ".arguments"),
                      absl::StrCat("expected a JSON string or object, got ", TypeName(*arguments)));
  }
  return out;
}

absl::StatusOr<ChatMessage> ParseMessage(const json& message, size_t index) {
  const std::string path = absl::StrCat("messages[", index, "]");
  if (!message.is_object()) {
    return FieldError(path, absl::StrCat("expected an object, got ", TypeName(message)));
  }
  ChatMessage out;
  auto role = message.find("role");
  const std::string role_text =
      role != message.end() && role->is_string() ? role->get<std::string>() : std::string();
  // OpenAI's "developer" messages are the system messages of its newer
  // models ("instructions the model should follow"): the DeepSeek templates
  // render them as system messages.
  if (role_text == "system" || role_text == "developer") {
    out.role = ChatRole::kSystem;
  } else if (role_text == "user") {
    out.role = ChatRole::kUser;
  } else if (role_text == "assistant") {
    out.role = ChatRole::kAssistant;
  } else if (role_text == "tool") {
    out.role = ChatRole::kTool;
  } else {
    const std::string got = role == message.end() ? "nothing"
                            : role->is_string()   ? absl::StrCat("\"", role_text, "\"")
                                                  : TypeName(*role);
    return FieldError(
        absl::StrCat(path, ".role"),
        absl::StrCat("expected one of system, developer, user, assistant, tool, got ", got));
  }
  absl::StatusOr<std::optional<std::string>> content = ParseContent(message, path);
  if (!content.ok()) return content.status();
  out.content = *std::move(content);

  auto calls = message.find("tool_calls");
  if (calls != message.end() && !calls->is_null()) {
    if (!calls->is_array()) {
      return FieldError(absl::StrCat(path, ".tool_calls"),
                        absl::StrCat("expected an array, got ", TypeName(*calls)));
    }
    if (out.role != ChatRole::kAssistant && !calls->empty()) {
      return FieldError(absl::StrCat(path, ".tool_calls"), "only assistant messages call tools");
    }
    for (size_t i = 0; i < calls->size(); ++i) {
      absl::StatusOr<ToolCall> call =
          ParseToolCall((*calls)[i], absl::StrCat(path, ".tool_calls[", i, "]"));
      if (!call.ok()) return call.status();
      out.tool_calls.push_back(*std::move(call));
    }
  }
  for (const char* key : {"reasoning_content", "tool_call_id", "name"}) {
    absl::StatusOr<std::optional<std::string>> value = OptionalString(message, key, path);
    if (!value.ok()) return value.status();
    if (!value->has_value()) continue;
    if (key[0] == 'r') {
      out.reasoning_content = *std::move(*value);
    } else if (key[0] == 't') {
      out.tool_call_id = **value;
    } else {
      out.name = **value;
    }
  }
  if (!out.content.has_value() && !(out.role == ChatRole::kAssistant && !out.tool_calls.empty())) {
    return FieldError(absl::StrCat(path, ".content"),
                      out.role == ChatRole::kAssistant
                          ? "null content needs tool_calls"
                          : absl::StrCat("expected a string for role ", ChatRoleName(out.role)));
  }
  return out;
}

}  // namespace

absl::string_view ChatRoleName(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
    case ChatRole::kTool:
      return "tool";
  }
  return "?";
}

absl::StatusOr<std::vector<ChatMessage>> ParseMessages(const json& messages) {
  if (!messages.is_array()) {
    return FieldError("messages", absl::StrCat("expected an array, got ", TypeName(messages)));
  }
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    absl::StatusOr<ChatMessage> message = ParseMessage(messages[i], i);
    if (!message.ok()) return message.status();
    out.push_back(*std::move(message));
  }
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> ParseMessagesJson(absl::string_view json_text) {
  json parsed =
      json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return FieldError("messages", "not valid JSON");
  return ParseMessages(parsed);
}

absl::StatusOr<std::vector<ToolDefinition>> ParseToolsJson(const json& tools) {
  if (tools.is_null()) return std::vector<ToolDefinition>();
  if (!tools.is_array()) {
    return FieldError("tools", absl::StrCat("expected an array, got ", TypeName(tools)));
  }
  std::vector<ToolDefinition> out;
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& tool = tools[i];
    const std::string path = absl::StrCat("tools[", i, "]");
    if (!tool.is_object()) return FieldError(path, "expected an object");
    auto type = tool.find("type");
    if (type != tool.end() && (!type->is_string() || *type != "function")) {
      return FieldError(absl::StrCat(path, ".type"), "expected \"function\"");
    }
    auto function = tool.find("function");
    if (function == tool.end() || !function->is_object()) {
      return FieldError(absl::StrCat(path, ".function"), "expected an object");
    }
    ToolDefinition def;
    auto name = function->find("name");
    if (name == function->end() || !name->is_string() || name->get<std::string>().empty()) {
      return FieldError(absl::StrCat(path, ".function.name"), "expected a non-empty string");
    }
    def.name = name->get<std::string>();
    auto description = function->find("description");
    if (description != function->end() && description->is_string()) {
      def.description = description->get<std::string>();
    }
    auto parameters = function->find("parameters");
    if (parameters != function->end() && !parameters->is_null()) {
      if (!parameters->is_object()) {
        return FieldError(absl::StrCat(path, ".function.parameters"),
                          "expected a JSON schema object");
      }
      def.parameters_json = parameters->dump();
    }
    def.raw = tool;
    out.push_back(std::move(def));
  }
  return out;
}

}  // namespace moeflow::chat
