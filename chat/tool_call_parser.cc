#include "chat/tool_call_parser.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace moeflow::chat {
namespace {

constexpr absl::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr absl::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr absl::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr absl::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr absl::string_view kSep = "<｜tool▁sep｜>";
constexpr absl::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr absl::string_view kThinkOpen = "<think>";
constexpr absl::string_view kThinkClose = "</think>";

absl::string_view StripWhitespace(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

absl::Status Malformed(absl::string_view what, size_t offset) {
  return absl::InvalidArgumentError(absl::StrCat("generated text: ", what, " at byte ", offset));
}

// One call's body (between kCallBegin and kCallEnd), `offset` for messages.
absl::StatusOr<ToolCall> ParseCall(absl::string_view body, size_t offset) {
  const size_t sep = body.find(kSep);
  if (sep == absl::string_view::npos) return Malformed("tool call without <｜tool▁sep｜>", offset);
  ToolCall call;
  call.type = std::string(StripWhitespace(body.substr(0, sep)));
  if (call.type.empty()) call.type = "function";
  absl::string_view rest = body.substr(sep + kSep.size());
  const size_t newline = rest.find('\n');
  absl::string_view name = rest.substr(0, newline);
  call.name = std::string(StripWhitespace(name));
  if (call.name.empty()) return Malformed("tool call without a function name", offset);
  absl::string_view args =
      newline == absl::string_view::npos ? absl::string_view() : rest.substr(newline + 1);
  args = StripWhitespace(args);
  // The arguments sit in a ```json fence; accept them bare too.
  if (absl::ConsumePrefix(&args, "```")) {
    absl::ConsumePrefix(&args, "json");
    if (!absl::ConsumeSuffix(&args, "```")) {
      return Malformed(absl::StrCat("tool call \"", call.name, "\": unclosed ``` fence"), offset);
    }
    args = StripWhitespace(args);
  }
  call.arguments = std::string(args);
  return call;
}

}  // namespace

absl::StatusOr<ParsedToolCalls> ParseToolCalls(absl::string_view text) {
  ParsedToolCalls out;
  size_t begin = text.find(kCallsBegin);
  // Some outputs skip the section marker and start with a single call.
  size_t section = begin == absl::string_view::npos ? text.find(kCallBegin) : begin;
  if (section == absl::string_view::npos) {
    out.content = std::string(text);
    return out;
  }
  out.content = std::string(text.substr(0, section));
  size_t pos = begin == absl::string_view::npos ? section : begin + kCallsBegin.size();
  while (true) {
    // Skip whitespace between calls.
    while (pos < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[pos]))) ++pos;
    absl::string_view rest = text.substr(pos);
    if (rest.empty() || absl::StartsWith(rest, kCallsEnd) || absl::StartsWith(rest, kEos)) break;
    if (!absl::StartsWith(rest, kCallBegin)) {
      return Malformed("expected <｜tool▁call▁begin｜> or <｜tool▁calls▁end｜>", pos);
    }
    const size_t body_start = pos + kCallBegin.size();
    const size_t end = text.find(kCallEnd, body_start);
    if (end == absl::string_view::npos) {
      return Malformed("tool call without <｜tool▁call▁end｜>", pos);
    }
    absl::StatusOr<ToolCall> call = ParseCall(text.substr(body_start, end - body_start), pos);
    if (!call.ok()) return call.status();
    out.tool_calls.push_back(*std::move(call));
    pos = end + kCallEnd.size();
  }
  return out;
}

SplitReasoningResult SplitReasoning(absl::string_view text, bool prompt_opened_think) {
  SplitReasoningResult out;
  absl::string_view rest = text;
  bool open = prompt_opened_think;
  absl::string_view leading = absl::StripLeadingAsciiWhitespace(rest);
  if (absl::StartsWith(leading, kThinkOpen)) {
    rest = leading.substr(kThinkOpen.size());
    open = true;
  }
  const size_t close = rest.find(kThinkClose);
  if (close == absl::string_view::npos) {
    (open ? out.reasoning_content : out.content) = std::string(open ? StripWhitespace(rest) : text);
    return out;
  }
  out.reasoning_content = std::string(StripWhitespace(rest.substr(0, close)));
  out.content =
      std::string(absl::StripLeadingAsciiWhitespace(rest.substr(close + kThinkClose.size())));
  return out;
}

absl::StatusOr<ChatMessage> ParseAssistantOutput(absl::string_view text, bool prompt_opened_think) {
  SplitReasoningResult split = SplitReasoning(text, prompt_opened_think);
  absl::StatusOr<ParsedToolCalls> calls = ParseToolCalls(split.content);
  if (!calls.ok()) return calls.status();
  ChatMessage message;
  message.role = ChatRole::kAssistant;
  if (!split.reasoning_content.empty()) message.reasoning_content = split.reasoning_content;
  message.tool_calls = std::move(calls->tool_calls);
  if (!(message.tool_calls.size() > 0 && StripWhitespace(calls->content).empty())) {
    message.content = std::move(calls->content);
  }
  return message;
}

}  // namespace moeflow::chat
