#include "sampling/grammar_constraint.h"

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

int64_t GrammarConstraint::Mask(absl::Span<float> logits) {
  ++masks_;
  const size_t n = logits.size();
  allowed_.assign(n, 0);
  int64_t count = 0;
  if (!ended_) {
    const absl::Span<const TokenVocabulary::TrieNode> trie = vocabulary_.trie();
    const absl::Span<const int32_t> tokens = vocabulary_.trie_tokens();
    walk_[0] = matcher_.state();
    for (size_t i = 1; i < trie.size();) {
      const TokenVocabulary::TrieNode& node = trie[i];
      const GrammarMatcher::State s = matcher_.Step(walk_[node.depth - 1], node.byte);
      if (s == GrammarMatcher::kDead) {
        i = node.next;  // nothing under this prefix can follow
        continue;
      }
      walk_[node.depth] = s;
      for (uint32_t k = node.tokens_begin; k < node.tokens_end; ++k) {
        const size_t t = static_cast<size_t>(tokens[k]);
        if (t < n) allowed_[t] = 1;
      }
      ++i;
    }
    if (matcher_.complete()) {
      for (int32_t t : vocabulary_.end_tokens()) {
        if (static_cast<size_t>(t) < n) allowed_[static_cast<size_t>(t)] = 1;
      }
    }
  }
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (size_t t = 0; t < n; ++t) {
    if (allowed_[t]) {
      ++count;
    } else {
      logits[t] = kNegInf;
    }
  }
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
