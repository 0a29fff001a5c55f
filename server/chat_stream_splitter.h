// Splits streamed chat text into reasoning and content as it arrives.
//
// Role in the data flow: the chat encoders (openai_protocol.h, OpenAI's
// delta.reasoning_content; ollama_protocol.h, Ollama's "thinking") feed it
// each released piece of generated text. R1's "<think>...</think>" becomes
// reasoning; text that may be the start of a marker is held back until it
// cannot be; text from "<｜tool▁calls▁begin｜>" on is kept for the tool-call
// parser (tool_text) and never streamed as content.
//
// Thread-safety: none; one per exchange. Failure: none.
#ifndef MOEFLOW_SERVER_CHAT_STREAM_SPLITTER_H_
#define MOEFLOW_SERVER_CHAT_STREAM_SPLITTER_H_

#include <string>

#include "absl/strings/string_view.h"

namespace moeflow::server {

class ChatStreamSplitter {
 public:
  // `opens_think`: the rendered prompt ended inside "<think>\n".
  explicit ChatStreamSplitter(bool opens_think = false)
      : state_(opens_think ? State::kReasoning : State::kStart) {}

  struct Delta {
    std::string reasoning;
    std::string content;
  };

  // `final`: nothing follows; release everything held back.
  Delta Feed(absl::string_view text, bool final);

  bool in_tool_calls() const { return state_ == State::kToolCalls; }
  const std::string& tool_text() const { return tool_text_; }

 private:
  enum class State { kStart, kReasoning, kContentAfterThink, kContent, kToolCalls };

  // Bytes at the end of held_ that could be the start of `marker`.
  size_t HeldBackFor(absl::string_view marker) const;

  State state_;
  bool reasoning_started_ = false;
  std::string held_;
  std::string tool_text_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_CHAT_STREAM_SPLITTER_H_
