// GrammarConstraint: constrained decoding of one sequence — which tokens may
// come next under a grammar, as a logits mask.
//
// Role in the data flow: a request with a response_format (JSON mode or a
// JSON schema, converted by json_schema_grammar.h) carries a TokenGrammar in
// its SamplerOptions; the Sampler (sampler.h) of each of its sequences owns
// a GrammarConstraint and, every step, samples as usual, asks Allows() of
// the sampled token, and only when the grammar rejects it Mask()s the logits
// (every token whose bytes the grammar cannot accept goes to -infinity) and
// samples again — llama.cpp's fast path: most steps inside a string or a
// number never build the mask. The chosen token is then Accept()ed.
//
// The allowed set is a function of the matcher's state, and a generation
// comes back to the same few states (inside a string, after a comma), so
// the last kMaskCacheStates masks are kept as bitmaps: a repeated Mask()
// costs one pass over the logits instead of a walk of the trie.
//
// End of generation: the vocabulary's end tokens (EOS) are allowed only
// where the whole output matches the grammar; once the grammar has nothing
// left to match, they are the only tokens allowed, so the model stops there.
// After an end token nothing is allowed.
//
// Thread-safety: none; one per sequence (the TokenGrammar it reads is
// immutable and shared). Failure: Accept returns InvalidArgument for a token
// the grammar does not allow; Allows / Mask report a grammar too ambiguous
// to follow through status() (ResourceExhausted), the sampler then fails
// the step.
#ifndef MOEFLOW_SAMPLING_GRAMMAR_CONSTRAINT_H_
#define MOEFLOW_SAMPLING_GRAMMAR_CONSTRAINT_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "sampling/grammar.h"
#include "sampling/grammar_matcher.h"
#include "sampling/token_vocabulary.h"

namespace moeflow::sampling {

// What a request's sequences share: the compiled grammar and the model's
// vocabulary.
struct TokenGrammar {
  std::shared_ptr<const Grammar> grammar;
  std::shared_ptr<const TokenVocabulary> vocabulary;
};

class GrammarConstraint {
 public:
  // Masks kept per sequence (a bitmap of the vocabulary each: 16 KiB for
  // 128k tokens).
  static constexpr size_t kMaskCacheStates = 32;

  explicit GrammarConstraint(std::shared_ptr<const TokenGrammar> grammar);

  // Whether `token` may come next.
  bool Allows(int32_t token);
  // Sets every logit the grammar does not allow to -infinity (ids past the
  // vocabulary too); returns how many tokens stay allowed.
  int64_t Mask(absl::Span<float> logits);
  // Moves past `token`; InvalidArgument if it is not allowed.
  absl::Status Accept(int32_t token);

  // The output so far matches the whole grammar.
  bool complete() const { return !ended_ && matcher_.complete(); }
  // An end token was accepted.
  bool ended() const { return ended_; }
  const absl::Status& status() const { return matcher_.status(); }

  // Counters for tests and the benchmark: Allows() calls answered, Mask()
  // calls, and the walks of the trie they needed (the others were cached).
  int64_t checks() const { return checks_; }
  int64_t masks() const { return masks_; }
  int64_t walks() const { return walks_; }
  // Drops the cached masks (the benchmark times walks with it).
  void ForgetMasks() { mask_cache_.clear(); }

 private:
  std::shared_ptr<const TokenGrammar> grammar_;
  const TokenVocabulary& vocabulary_;
  GrammarMatcher matcher_;
  bool ended_ = false;
  // The allowed tokens of the current state as a bitmap over the vocabulary
  // (end tokens included).
  const std::vector<uint64_t>& AllowedBits();

  std::vector<GrammarMatcher::State> walk_;  // state per trie depth
  absl::flat_hash_map<GrammarMatcher::State, std::vector<uint64_t>> mask_cache_;
  uint64_t cache_epoch_ = 0;
  std::vector<uint64_t> scratch_bits_;
  int64_t checks_ = 0;
  int64_t masks_ = 0;
  int64_t walks_ = 0;
};

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_GRAMMAR_CONSTRAINT_H_
