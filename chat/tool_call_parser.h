// Model output → an OpenAI-style assistant message: R1 reasoning split off,
// DeepSeek-V3 tool calls extracted.
//
// Role in the data flow: after generation finishes (the StopCondition saw
// <｜end▁of▁sentence｜> or a stop string), the server passes the decoded text
// here and returns `reasoning_content`, `content` and `tool_calls`.
//
// Tool calls are written by the model in the format the V3/R1 templates use:
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
//   ```json
//   ARGS
//   ```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
// Text before <｜tool▁calls▁begin｜> is content. A missing
// <｜tool▁calls▁end｜> (generation stopped on it, or on EOS right after the last
// call) is accepted; a call without <｜tool▁call▁end｜> is an error.
//
// Reasoning: R1 writes "<think>\n...\n</think>\n\nANSWER"; when the prompt
// already opened the block (RenderedPrompt::opens_think) the output starts
// inside it and has no "<think>". Without "</think>" the whole text is
// reasoning if the block was open (the generation was cut short), otherwise
// content.
//
// Thread-safety: pure functions. Failure: InvalidArgument naming what is
// malformed and at which byte offset of the generated text.
#ifndef MOEFLOW_CHAT_TOOL_CALL_PARSER_H_
#define MOEFLOW_CHAT_TOOL_CALL_PARSER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "chat/chat_message.h"

namespace moeflow::chat {

struct ParsedToolCalls {
  std::string content;               // text before the tool calls
  std::vector<ToolCall> tool_calls;  // id empty; type "function"
};

absl::StatusOr<ParsedToolCalls> ParseToolCalls(absl::string_view generated_text);

struct SplitReasoningResult {
  std::string reasoning_content;
  std::string content;
};

// `prompt_opened_think`: the prompt ended with "<think>\n".
SplitReasoningResult SplitReasoning(absl::string_view generated_text, bool prompt_opened_think);

// Both: reasoning first, then tool calls in the remaining content. Returns an
// assistant ChatMessage (content null when there are tool calls and no text).
absl::StatusOr<ChatMessage> ParseAssistantOutput(absl::string_view generated_text,
                                                 bool prompt_opened_think);

}  // namespace moeflow::chat

#endif  // MOEFLOW_CHAT_TOOL_CALL_PARSER_H_
