#include "sampling/grammar_constraint.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::sampling {

GrammarConstraint::GrammarConstraint(std::shared_ptr<const TokenGrammar> grammar)
    : grammar_(std::move(grammar)),
      vocabulary_(*grammar_->vocabulary),
      matcher_(grammar_->grammar) {
  walk_.resize(static_cast<size_t>(vocabulary_.max_depth()) + 1);
}

bool GrammarConstraint::Allows(int32_t token) {
  ++checks_;
  if (ended_ || token < 0 || token >= vocabulary_.size()) return false;
  if (vocabulary_.is_end(token)) return matcher_.complete();
  if (!vocabulary_.in_trie(token)) return false;
  return matcher_.StepAll(matcher_.state(), vocabulary_.bytes(token)) != GrammarMatcher::kDead;
}

const std::vector<uint64_t>& GrammarConstraint::AllowedBits() {
  if (matcher_.epoch() != cache_epoch_) {
    mask_cache_.clear();
    cache_epoch_ = matcher_.epoch();
  }
  const GrammarMatcher::State state = matcher_.state();
  auto it = mask_cache_.find(state);
  if (it != mask_cache_.end()) return it->second;
  ++walks_;
  std::vector<uint64_t> bits((static_cast<size_t>(vocabulary_.size()) + 63) / 64, 0);
  auto set = [&bits](int32_t t) { bits[static_cast<size_t>(t) >> 6] |= uint64_t{1} << (t & 63); };
  const absl::Span<const TokenVocabulary::TrieNode> trie = vocabulary_.trie();
  const absl::Span<const int32_t> tokens = vocabulary_.trie_tokens();
  walk_[0] = state;
  for (size_t i = 1; i < trie.size();) {
    const TokenVocabulary::TrieNode& node = trie[i];
    const GrammarMatcher::State s = matcher_.Step(walk_[node.depth - 1], node.byte);
    if (s == GrammarMatcher::kDead) {
      i = node.next;  // nothing under this prefix can follow
      continue;
    }
    walk_[node.depth] = s;
    for (uint32_t k = node.tokens_begin; k < node.tokens_end; ++k) set(tokens[k]);
    ++i;
  }
  if (matcher_.complete()) {
    for (int32_t t : vocabulary_.end_tokens()) set(t);
  }
  // A walk cut short by the stack limit is not the state's answer: not kept.
  if (!matcher_.status().ok()) {
    scratch_bits_ = std::move(bits);
    return scratch_bits_;
  }
  if (mask_cache_.size() >= kMaskCacheStates) mask_cache_.clear();
  return mask_cache_.emplace(state, std::move(bits)).first->second;
}

int64_t GrammarConstraint::Mask(absl::Span<float> logits) {
  ++masks_;
  const size_t n = logits.size();
  const float kNegInf = -std::numeric_limits<float>::infinity();
  if (ended_) {
    for (float& l : logits) l = kNegInf;
    return 0;
  }
  const std::vector<uint64_t>& bits = AllowedBits();
  const size_t known = std::min(n, static_cast<size_t>(vocabulary_.size()));
  int64_t count = 0;
  for (size_t w = 0; w * 64 < known; ++w) {
    const uint64_t word = bits[w];
    const size_t end = std::min(known, w * 64 + 64);
    if (word == 0) {
      for (size_t t = w * 64; t < end; ++t) logits[t] = kNegInf;
      continue;
    }
    for (size_t t = w * 64; t < end; ++t) {
      if ((word >> (t & 63)) & 1) {
        ++count;
      } else {
        logits[t] = kNegInf;
      }
    }
  }
  for (size_t t = known; t < n; ++t) logits[t] = kNegInf;  // ids past the vocabulary
  return count;
}

absl::Status GrammarConstraint::Accept(int32_t token) {
  if (!Allows(token)) {
    return absl::InvalidArgumentError(absl::StrCat("token ", token,
                                                   " is not allowed by the grammar here",
                                                   ended_ ? " (the output already ended)" : ""));
  }
  if (vocabulary_.is_end(token)) {
    ended_ = true;
    return absl::OkStatus();
  }
  MOEFLOW_CHECK(matcher_.Advance(vocabulary_.bytes(token)));
  return absl::OkStatus();
}

}  // namespace moeflow::sampling
