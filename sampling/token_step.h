// The one sample-and-stop step of every generation loop: logits in, the
// next token out, with the text the stop condition releases, its logprobs
// when asked for, and whether the sequence is done.
//
// Role in the data flow: BatchingScheduler (server/batching_scheduler.h,
// every HTTP and moeflowctl request) and TextGenerator (generation/:
// `moeflow generate`, `chat`) keep one TokenStep per sequence and call Next
// on each step's logits of that sequence. Sampling itself — logit
// processors, penalties, top-k/p, min-p, temperature — is the Sampler's
// (sampler.h); stopping — stop tokens (the tokenizer's EOS unless
// ignore_eos), stop strings, max_tokens — the StopCondition's
// (stop_condition.h). The prompt's tokens are Accept()ed first, so
// penalties see them (as llama.cpp does).
//
// Thread-safety: none; one per sequence. Failure: Create returns the
// Sampler's and StopCondition's InvalidArgument (naming the option); Next
// the Sampler's (empty logits, no finite value).
#ifndef MOEFLOW_SAMPLING_TOKEN_STEP_H_
#define MOEFLOW_SAMPLING_TOKEN_STEP_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"

namespace moeflow::sampling {

struct TokenStepOptions {
  SamplerOptions sampler;
  StopOptions stop;
  // The tokenizer's end-of-sequence id (-1: none); a stop token unless
  // ignore_eos.
  int32_t eos_id = -1;
  bool ignore_eos = false;
  // -1: no logprobs; 0..20: the token's logprob and this many alternatives.
  int32_t top_logprobs = -1;
};

struct TokenStepResult {
  int32_t token = -1;
  std::string text;  // released by the stop condition with this token (may be empty)
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t matched_stop_token = -1;
  std::string matched_stop_string;
  bool finished() const { return finish_reason != FinishReason::kNone; }
};

class TokenStep {
 public:
  static absl::StatusOr<TokenStep> Create(const TokenStepOptions& options,
                                          absl::Span<const int32_t> prompt);

  // Samples from `logits` (the sequence's last position), accepts the token
  // and appends it to the stop condition; `token_bytes` decodes a token.
  absl::StatusOr<TokenStepResult> Next(absl::Span<const float> logits,
                                       absl::FunctionRef<absl::string_view(int32_t)> token_bytes);

  // The text the stop condition still holds (a loop that ends for another
  // reason: cancelled, context full).
  std::string Flush() { return stop_.Flush(); }
  int64_t tokens() const { return stop_.tokens_seen(); }

 private:
  TokenStep(Sampler sampler, StopCondition stop, int32_t top_logprobs)
      : sampler_(std::move(sampler)), stop_(std::move(stop)), top_logprobs_(top_logprobs) {}

  Sampler sampler_;
  StopCondition stop_;
  int32_t top_logprobs_;
};

// Log-softmax of `logits` at `token` and the `top_n` most likely tokens
// (by logit, ties to the lower id), with their log-probabilities.
float LogSoftmaxAt(absl::Span<const float> logits, int32_t token, int32_t top_n,
                   std::vector<std::pair<int32_t, float>>* top);

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_TOKEN_STEP_H_
