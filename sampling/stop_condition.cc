#include "sampling/stop_condition.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::sampling {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of `stop`.
size_t PartialMatchLength(absl::string_view text, absl::string_view stop) {
  const size_t longest = std::min(text.size(), stop.size() - 1);
  for (size_t n = longest; n > 0; --n) {
    if (text.substr(text.size() - n) == stop.substr(0, n)) return n;
  }
  return 0;
}

// Bytes at the end of `text` that start a UTF-8 sequence not yet complete.
size_t IncompleteUtf8Tail(absl::string_view text) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  for (size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking
    size_t need = 0;
    if ((c & 0xE0) == 0xC0) {
      need = 2;
    } else if ((c & 0xF0) == 0xE0) {
      need = 3;
    } else if ((c & 0xF8) == 0xF0) {
      need = 4;
    }
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

absl::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kNone:
      break;
  }
  return "";
}

absl::StatusOr<StopCondition> StopCondition::Create(const StopOptions& options) {
  for (size_t i = 0; i < options.stop_strings.size(); ++i) {
    if (options.stop_strings[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "]: empty stop string"));
    }
  }
  if (options.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: must be >= 0 (0 = unlimited), got ", options.max_tokens));
  }
  return StopCondition(options);
}

StopCondition::StopCondition(const StopOptions& options)
    : options_(options), stop_tokens_(options.stop_tokens.begin(), options.stop_tokens.end()) {}

std::string StopCondition::Flush() { return std::exchange(held_, std::string()); }

StopStep StopCondition::Append(int32_t token, absl::string_view piece) {
  MOEFLOW_CHECK(!finished());
  ++tokens_seen_;
  StopStep step;
  if (stop_tokens_.contains(token)) {
    finish_reason_ = step.finish_reason = FinishReason::kStop;
    step.matched_stop_token = token;
    step.text = Flush();
    return step;
  }
  held_.append(piece.data(), piece.size());

  // Leftmost complete stop string (the longest one on a tie).
  size_t match_at = std::string::npos;
  const std::string* matched = nullptr;
  for (const std::string& stop : options_.stop_strings) {
    const size_t at = held_.find(stop);
    if (at == std::string::npos) continue;
    if (at < match_at || (at == match_at && stop.size() > matched->size())) {
      match_at = at;
      matched = &stop;
    }
  }
  if (matched != nullptr) {
    finish_reason_ = step.finish_reason = FinishReason::kStop;
    step.matched_stop_string = *matched;
    step.text = held_.substr(0, match_at);
    held_.clear();
    return step;
  }
  if (options_.max_tokens > 0 && tokens_seen_ >= options_.max_tokens) {
    finish_reason_ = step.finish_reason = FinishReason::kLength;
    step.text = Flush();
    return step;
  }
  size_t hold = IncompleteUtf8Tail(held_);
  for (const std::string& stop : options_.stop_strings) {
    hold = std::max(hold, PartialMatchLength(held_, stop));
  }
  step.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return step;
}

}  // namespace moeflow::sampling
