#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace moeflow::sampling {
namespace {

absl::Status Invalid(absl::string_view name, absl::string_view rule, double value) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", rule, ", got ", value));
}

// Higher logit first; the lower id first among equal logits.
bool Before(const std::pair<int32_t, float>& a, const std::pair<int32_t, float>& b) {
  if (a.second != b.second) return a.second > b.second;
  return a.first < b.first;
}

}  // namespace

absl::Status ValidateSamplerOptions(const SamplerOptions& o) {
  // `!(x >= 0)` rejects NaN as well.
  if (!(o.temperature >= 0) || std::isinf(o.temperature)) {
    return Invalid("temperature", "must be finite and >= 0", o.temperature);
  }
  if (o.top_k < 0) return Invalid("top_k", "must be >= 0 (0 = off)", o.top_k);
  if (!(o.top_p > 0 && o.top_p <= 1)) return Invalid("top_p", "must be in (0, 1]", o.top_p);
  if (!(o.min_p >= 0 && o.min_p <= 1)) return Invalid("min_p", "must be in [0, 1]", o.min_p);
  if (!(o.repetition_penalty > 0) || std::isinf(o.repetition_penalty)) {
    return Invalid("repetition_penalty", "must be finite and > 0 (1 = off)", o.repetition_penalty);
  }
  if (o.repetition_last_n < -1) {
    return Invalid("repetition_last_n", "must be >= -1 (-1 = whole history)", o.repetition_last_n);
  }
  if (!std::isfinite(o.presence_penalty)) {
    return Invalid("presence_penalty", "must be finite", o.presence_penalty);
  }
  if (!std::isfinite(o.frequency_penalty)) {
    return Invalid("frequency_penalty", "must be finite", o.frequency_penalty);
  }
  for (size_t i = 0; i < o.logit_bias.size(); ++i) {
    const auto& [token, bias] = o.logit_bias[i];
    if (token < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias[", i, "]: token id must be >= 0, got ", token));
    }
    if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity()) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias[", i, "]: bias must be finite or -infinity, got ", bias));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Sampler> Sampler::Create(const SamplerOptions& options) {
  absl::Status status = ValidateSamplerOptions(options);
  if (!status.ok()) return status;
  return Sampler(options);
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  if (options_.grammar != nullptr) grammar_ = std::make_unique<GrammarConstraint>(options_.grammar);
}

double Sampler::NextUniform() {
  return static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

void Sampler::Accept(int32_t token) {
  ++counts_[token];
  if (options_.repetition_last_n == 0) return;
  recent_.push_back(token);
  if (options_.repetition_last_n > 0 &&
      recent_.size() > static_cast<size_t>(options_.repetition_last_n)) {
    recent_.pop_front();
  }
}

absl::StatusOr<int32_t> Sampler::Sample(absl::Span<const float> logits) {
  candidates_.clear();
  if (logits.empty()) return absl::InvalidArgumentError("logits: empty");
  const int64_t vocab = static_cast<int64_t>(logits.size());
  logits_.assign(logits.begin(), logits.end());
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (float& l : logits_) {
    if (std::isnan(l)) l = kNegInf;  // a NaN can never win
  }

  // 1. logit bias.
  for (const auto& [token, bias] : options_.logit_bias) {
    if (token >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias: token ", token, " outside the vocabulary of ", vocab));
    }
    logits_[token] += bias;
  }
  // 2. penalties. Tokens outside the vocabulary (from a caller that accepted
  // prompt ids of another model) are ignored.
  if (options_.repetition_penalty != 1.0f) {
    absl::flat_hash_set<int32_t> seen(recent_.begin(), recent_.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= vocab) continue;
      float& l = logits_[t];
      l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
    }
  }
  if (options_.presence_penalty != 0.0f || options_.frequency_penalty != 0.0f) {
    for (const auto& [t, count] : counts_) {
      if (t < 0 || t >= vocab) continue;
      logits_[t] -= options_.presence_penalty + options_.frequency_penalty * count;
    }
  }

  if (grammar_ == nullptr) return Choose();
  // The fast path: what the model would pick anyway, if the grammar takes it.
  absl::StatusOr<int32_t> token = Choose();
  if (!token.ok() || !grammar_->Allows(*token)) {
    if (!grammar_->status().ok()) return grammar_->status();
    if (grammar_->Mask(absl::MakeSpan(logits_)) == 0 ||
        std::none_of(logits_.begin(), logits_.end(), [kNegInf](float l) { return l != kNegInf; })) {
      if (!grammar_->status().ok()) return grammar_->status();
      return absl::InvalidArgumentError(
          "logits: no token the grammar allows has a finite logit (logit_bias may ban them all)");
    }
    token = Choose();
    if (!token.ok()) return token.status();
  }
  if (absl::Status accepted = grammar_->Accept(*token); !accepted.ok()) return accepted;
  return *token;
}

absl::StatusOr<int32_t> Sampler::Choose() {
  candidates_.clear();
  const int64_t vocab = static_cast<int64_t>(logits_.size());
  const float kNegInf = -std::numeric_limits<float>::infinity();
  // 3. greedy.
  int32_t best = -1;
  for (int32_t t = 0; t < vocab; ++t) {
    if (logits_[t] == kNegInf) continue;
    if (best < 0 || logits_[t] > logits_[best]) best = t;  // strict: lowest id on ties
  }
  if (best < 0) return absl::InvalidArgumentError("logits: no finite value after logit_bias");
  if (options_.temperature == 0.0f) return best;

  candidates_.reserve(vocab);
  for (int32_t t = 0; t < vocab; ++t) {
    if (logits_[t] != kNegInf) candidates_.emplace_back(t, logits_[t]);
  }
  // 4. top-k. Sorting is only paid for when a step needs the order.
  bool sorted = false;
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < candidates_.size()) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + options_.top_k, candidates_.end(),
                      Before);
    candidates_.resize(options_.top_k);
    sorted = true;
  }
  if (options_.top_p < 1.0f && !sorted) {
    std::sort(candidates_.begin(), candidates_.end(), Before);
    sorted = true;
  }
  // 5. temperature and 6. softmax (in double: 129k terms).
  const double inv_t = 1.0 / options_.temperature;
  const double max_logit = logits_[best];
  double sum = 0;
  std::vector<double> p(candidates_.size());
  for (size_t i = 0; i < candidates_.size(); ++i) {
    p[i] = std::exp((candidates_[i].second - max_logit) * inv_t);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  // 7. top-p: candidates_ is sorted here.
  size_t keep = candidates_.size();
  if (options_.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      mass += p[i];
      if (mass >= options_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // 8. min-p, relative to the most likely token (which top-p always keeps).
  const double p_max = *std::max_element(p.begin(), p.begin() + keep);
  const double floor = options_.min_p * p_max;
  size_t out = 0;
  double kept_mass = 0;
  for (size_t i = 0; i < keep; ++i) {
    if (p[i] < floor) continue;
    candidates_[out] = {candidates_[i].first, static_cast<float>(p[i])};
    p[out] = p[i];
    kept_mass += p[i];
    ++out;
  }
  candidates_.resize(out);
  // 9. sample.
  const double u = NextUniform() * kept_mass;
  double cumulative = 0;
  int32_t chosen = candidates_.back().first;  // rounding can leave u just above the sum
  for (size_t i = 0; i < out; ++i) {
    cumulative += p[i];
    if (u < cumulative) {
      chosen = candidates_[i].first;
      break;
    }
  }
  for (auto& c : candidates_) c.second = static_cast<float>(c.second / kept_mass);
  return chosen;
}

}  // namespace moeflow::sampling
