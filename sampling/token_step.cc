#include "sampling/token_step.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moeflow::sampling {

absl::StatusOr<TokenStep> TokenStep::Create(const TokenStepOptions& options,
                                            absl::Span<const int32_t> prompt) {
  StopOptions stop = options.stop;
  if (!options.ignore_eos && options.eos_id >= 0 &&
      std::find(stop.stop_tokens.begin(), stop.stop_tokens.end(), options.eos_id) ==
          stop.stop_tokens.end()) {
    stop.stop_tokens.push_back(options.eos_id);
  }
  absl::StatusOr<StopCondition> stop_condition = StopCondition::Create(stop);
  if (!stop_condition.ok()) return stop_condition.status();
  absl::StatusOr<Sampler> sampler = Sampler::Create(options.sampler);
  if (!sampler.ok()) return sampler.status();
  for (int32_t t : prompt) sampler->Accept(t);
  return TokenStep(std::move(*sampler), std::move(*stop_condition), options.top_logprobs);
}

absl::StatusOr<TokenStepResult> TokenStep::Next(
    absl::Span<const float> logits, absl::FunctionRef<absl::string_view(int32_t)> token_bytes) {
  absl::StatusOr<int32_t> token = sampler_.Sample(logits);
  if (!token.ok()) return token.status();
  sampler_.Accept(*token);
  TokenStepResult r;
  r.token = *token;
  if (top_logprobs_ >= 0) r.logprob = LogSoftmaxAt(logits, *token, top_logprobs_, &r.top_logprobs);
  StopStep step = stop_.Append(*token, token_bytes(*token));
  r.text = std::move(step.text);
  r.finish_reason = step.finish_reason;
  r.matched_stop_token = step.matched_stop_token;
  r.matched_stop_string = std::move(step.matched_stop_string);
  return r;
}

float LogSoftmaxAt(absl::Span<const float> logits, int32_t token, int32_t top_n,
                   std::vector<std::pair<int32_t, float>>* top) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  double sum = 0;
  for (float l : logits) {
    if (std::isfinite(l)) sum += std::exp(static_cast<double>(l - max_logit));
  }
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  if (top != nullptr) {
    top->clear();
    const int32_t n = std::min<int32_t>(top_n, static_cast<int32_t>(logits.size()));
    std::vector<int32_t> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    for (int32_t i = 0; i < n; ++i) top->emplace_back(ids[i], logits[ids[i]] - log_z);
  }
  return logits[token] - log_z;
}

}  // namespace moeflow::sampling
