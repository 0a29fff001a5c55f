// StopCondition: decides when a generation ends and which decoded text may be
// shown to the user so far.
//
// Role in the data flow: after each sampled token the generation loop passes
// the token id and its decoded bytes to Append(); the returned StopStep says
// which text to stream now and whether to stop. Stop strings are matched on
// the decoded text, so they are found across token boundaries ("</s" + "top>"),
// and text that could still become the start of a stop string is held back
// until it can't: a caller that prints only StopStep::text never shows a
// partial or complete stop string. A trailing incomplete UTF-8 sequence is held
// back the same way, so streamed text is always whole characters (the flushed
// rest at the end may still contain invalid bytes the model produced).
//
// Lifecycle:
//   Append()* ──(stop token | stop string | max_tokens)──> finished
//   A stop token or stop string gives finish reason "stop" (the stop token's
//   text and the stop string are not emitted, held-back text before them is);
//   reaching max_tokens gives "length" and flushes all held-back text. If the
//   loop ends for another reason (client gone, context full), Flush() returns
//   the held-back text. Append() after finishing is a programmer error.
//
// Thread-safety: none; one per sequence. Failure: Create() returns
// InvalidArgument naming the bad option.
#ifndef MOEFLOW_SAMPLING_STOP_CONDITION_H_
#define MOEFLOW_SAMPLING_STOP_CONDITION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow::sampling {

enum class FinishReason { kNone, kStop, kLength };

// "" / "stop" / "length": the OpenAI finish_reason strings.
absl::string_view FinishReasonName(FinishReason reason);

struct StopOptions {
  // Non-empty strings; generation stops at the first (leftmost) occurrence.
  std::vector<std::string> stop_strings;
  // Token ids that end generation (EOS, <｜end▁of▁sentence｜>, ...).
  std::vector<int32_t> stop_tokens;
  // Most tokens to generate; 0 = unlimited.
  int64_t max_tokens = 0;
};

struct StopStep {
  // Text that is now safe to show (possibly empty).
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;
  // The stop string that matched, or empty.
  std::string matched_stop_string;
  // The stop token that matched, or -1.
  int32_t matched_stop_token = -1;
  bool finished() const { return finish_reason != FinishReason::kNone; }
};

class StopCondition {
 public:
  static absl::StatusOr<StopCondition> Create(const StopOptions& options);

  // One generated token and its decoded bytes.
  StopStep Append(int32_t token, absl::string_view piece);

  // Returns (and forgets) the held-back text; for loops that end on their own.
  std::string Flush();

  bool finished() const { return finish_reason_ != FinishReason::kNone; }
  int64_t tokens_seen() const { return tokens_seen_; }

 private:
  explicit StopCondition(const StopOptions& options);

  StopOptions options_;
  absl::flat_hash_set<int32_t> stop_tokens_;
  std::string held_;  // decoded text not yet released
  int64_t tokens_seen_ = 0;
  FinishReason finish_reason_ = FinishReason::kNone;
};

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_STOP_CONDITION_H_
