#include "server/chat_stream_splitter.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace moeflow::server {
namespace {

constexpr absl::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr absl::string_view kThinkOpen = "<think>";
constexpr absl::string_view kThinkClose = "</think>";

}  // namespace

ChatStreamSplitter::Delta ChatStreamSplitter::Feed(absl::string_view text, bool final) {
  held_ += std::string(text);
  Delta delta;
  while (true) {
    if (state_ == State::kStart) {
      absl::string_view rest = absl::StripLeadingAsciiWhitespace(held_);
      if (absl::StartsWith(rest, kThinkOpen)) {
        held_ = std::string(rest.substr(kThinkOpen.size()));
        state_ = State::kReasoning;
        continue;
      }
      if (!final && kThinkOpen.substr(0, rest.size()) == rest) return delta;  // undecided
      state_ = State::kContent;
      continue;
    }
    if (state_ == State::kReasoning) {
      if (!reasoning_started_) {
        held_ = std::string(absl::StripLeadingAsciiWhitespace(held_));
        if (held_.empty()) return delta;
        reasoning_started_ = true;
      }
      const size_t close = held_.find(std::string(kThinkClose));
      if (close != std::string::npos) {
        delta.reasoning += held_.substr(0, close);
        held_ = held_.substr(close + kThinkClose.size());
        state_ = State::kContentAfterThink;
        continue;
      }
      const size_t keep = final ? 0 : HeldBackFor(kThinkClose);
      delta.reasoning += held_.substr(0, held_.size() - keep);
      held_ = held_.substr(held_.size() - keep);
      return delta;
    }
    if (state_ == State::kContentAfterThink) {
      held_ = std::string(absl::StripLeadingAsciiWhitespace(held_));
      if (held_.empty() && !final) return delta;
      state_ = State::kContent;
      continue;
    }
    if (state_ == State::kContent) {
      const size_t begin = held_.find(std::string(kToolCallsBegin));
      if (begin != std::string::npos) {
        delta.content += held_.substr(0, begin);
        tool_text_ = held_.substr(begin);
        held_.clear();
        state_ = State::kToolCalls;
        return delta;
      }
      const size_t keep = final ? 0 : HeldBackFor(kToolCallsBegin);
      delta.content += held_.substr(0, held_.size() - keep);
      held_ = held_.substr(held_.size() - keep);
      return delta;
    }
    // kToolCalls
    tool_text_ += held_;
    held_.clear();
    return delta;
  }
}

size_t ChatStreamSplitter::HeldBackFor(absl::string_view marker) const {
  const size_t max = std::min(held_.size(), marker.size() - 1);
  for (size_t n = max; n > 0; --n) {
    if (absl::EndsWith(held_, marker.substr(0, n))) return n;
  }
  return 0;
}

}  // namespace moeflow::server
