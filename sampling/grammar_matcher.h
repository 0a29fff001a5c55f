// GrammarMatcher: where a sequence's output stands in a Grammar, and which
// bytes may come next.
//
// Role in the data flow: GrammarConstraint (grammar_constraint.h) keeps one
// per sequence; before a token is sampled it asks whether the token's bytes
// can follow (Step over them, from state()), and after sampling it Advance()s
// over the chosen token.
//
// How: the grammar is matched like llama.cpp's, by a set of pushdown stacks
// of grammar positions, each with a character class on top (the empty stack
// means "the grammar may end here"). Bytes are decoded as UTF-8 on the way
// (a token may end inside a character; the partial character travels in the
// state, and is rejected as soon as no stack could match any completion).
// Unlike llama.cpp, the stacks are hash-consed nodes (equal stacks are one
// id), each distinct stack set is interned, and (stack set, partial
// character) pairs are the states of a byte automaton built lazily: Step()
// computes a transition once and then it is one table lookup. Masking a
// 128k-token vocabulary is then a walk of the vocabulary's byte trie
// (token_vocabulary.h) through this table, skipping every subtree whose
// first bytes are rejected.
//
// Memory: the tables grow with the distinct states a generation visits;
// past kMaxStates / kMaxNodes they are rebuilt around the current state
// (Compact, at the next Advance), so a long generation stays bounded.
//
// Thread-safety: none; one per sequence. Failure: a byte the grammar
// rejects gives kDead; a step whose stack set would exceed kMaxStacks
// (a grammar too ambiguous to follow) or whose rule expansion nests past
// kMaxExpandDepth also gives kDead and sets status() to ResourceExhausted,
// which the caller reports.
#ifndef MOEFLOW_SAMPLING_GRAMMAR_MATCHER_H_
#define MOEFLOW_SAMPLING_GRAMMAR_MATCHER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "sampling/grammar.h"

namespace moeflow::sampling {

class GrammarMatcher {
 public:
  using State = int32_t;
  static constexpr State kDead = -1;
  // Most stacks in one state (ambiguity), distinct stack nodes and automaton
  // states kept before the tables are rebuilt.
  static constexpr size_t kMaxStacks = 4096;
  static constexpr size_t kMaxNodes = 1 << 20;
  static constexpr size_t kMaxStates = 1 << 15;

  explicit GrammarMatcher(std::shared_ptr<const Grammar> grammar);

  // Where the output stands now.
  State state() const { return current_; }
  // The state after `byte` from `s` (kDead: rejected). `s` must not be kDead.
  State Step(State s, uint8_t byte) {
    const StateInfo& info = states_[static_cast<size_t>(s)];
    size_t index;
    if (info.remaining == 0) {
      index = info.table + byte;
    } else {
      if ((byte & 0xC0) != 0x80) return kDead;  // not a continuation byte
      index = info.table + (byte & 0x3F);
    }
    const State next = transitions_[index];
    if (next != kUnknown) return next;
    return ComputeStep(s, byte, index);
  }
  // The state after `bytes` from `s` (kDead: rejected somewhere).
  State StepAll(State s, absl::string_view bytes) {
    for (char c : bytes) {
      s = Step(s, static_cast<uint8_t>(c));
      if (s == kDead) return kDead;
    }
    return s;
  }
  // Whether the grammar may end in `s` (the whole output matches it).
  bool accepting(State s) const;
  // Moves the current state over `bytes`; false (and nothing changes) when
  // the grammar rejects them. May rebuild the tables (state ids change).
  bool Advance(absl::string_view bytes);
  bool complete() const { return accepting(current_); }

  // ResourceExhausted once a step exceeded kMaxStacks.
  const absl::Status& status() const { return status_; }

  // Changes whenever the tables are rebuilt (state ids then mean other
  // states): what a cache keyed by state must check.
  uint64_t epoch() const { return epoch_; }

  // For tests and the benchmark: table sizes.
  size_t state_count() const { return states_.size(); }
  size_t node_count() const { return nodes_.size(); }

 private:
  static constexpr State kUnknown = -2;
  static constexpr int kMaxExpandDepth = 10000;
  static constexpr int32_t kEmptyStack = -1;  // a stack with nothing left: the grammar may end
  // A stack is its top node: the top's pos is the kChars element to match
  // next; each node below holds where to go on (any element but kEnd) once
  // the rule above it has ended.
  struct Node {
    uint32_t pos;
    int32_t parent;  // the node below, or kEmptyStack
  };
  struct StateInfo {
    int32_t set;        // index into sets_
    uint32_t partial;   // bits of an incomplete UTF-8 character
    uint8_t remaining;  // its continuation bytes still to come (0: none)
    uint32_t table;     // offset of its transitions: 256 entries, or 64 when remaining > 0
  };

  State ComputeStep(State s, uint8_t byte, size_t index);
  State AdvanceCodePoint(int32_t set, uint32_t c);
  // Whether some stack of `set` can take a code point in [lo, hi].
  bool Feasible(int32_t set, uint32_t lo, uint32_t hi) const;
  int32_t Node(uint32_t pos, int32_t parent);
  // Adds to *out the char-topped stacks (or kEmptyStack) reached from
  // grammar position `pos` over stack `parent`, expanding rules and ends.
  // Sets overflow_ past 4 × kMaxStacks results or kMaxExpandDepth nested
  // expansions (the caller reports it).
  void Expand(uint32_t pos, int32_t parent, std::vector<int32_t>* out, int depth = 0);
  int32_t InternSet(std::vector<int32_t> stacks);
  State InternState(int32_t set, uint32_t partial, uint8_t remaining);
  // Rebuilds the tables holding only what the current state needs.
  void Compact();

  std::shared_ptr<const Grammar> grammar_;
  std::vector<struct Node> nodes_;
  absl::flat_hash_map<uint64_t, int32_t> node_ids_;  // pos << 32 | (parent + 1)
  std::vector<std::vector<int32_t>> sets_;           // sorted stack ids
  absl::flat_hash_map<std::vector<int32_t>, int32_t> set_ids_;
  std::vector<StateInfo> states_;
  absl::flat_hash_map<uint64_t, State> state_ids_;  // set << 24 | remaining << 21 | partial
  std::vector<State> transitions_;
  State current_ = kDead;
  uint64_t epoch_ = 0;
  absl::Status status_;
  bool overflow_ = false;
  std::vector<int32_t> scratch_;
};

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_GRAMMAR_MATCHER_H_
