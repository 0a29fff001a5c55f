#include "sampling/grammar_matcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::sampling {

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar)
    : grammar_(std::move(grammar)) {
  MOEFLOW_CHECK(grammar_ != nullptr);
  std::vector<int32_t> start;
  for (uint32_t alt : grammar_->alternatives(grammar_->root())) Expand(alt, kEmptyStack, &start);
  if (overflow_ || start.size() > kMaxStacks) {
    status_ = absl::ResourceExhaustedError(
        absl::StrCat("the grammar is too ambiguous to follow: more than ", kMaxStacks,
                     " ways to start (or rules nested past ", kMaxExpandDepth, ")"));
  }
  current_ = InternState(InternSet(std::move(start)), 0, 0);
}

int32_t GrammarMatcher::Node(uint32_t pos, int32_t parent) {
  const uint64_t key = static_cast<uint64_t>(pos) << 32 | static_cast<uint32_t>(parent + 1);
  auto [it, inserted] = node_ids_.try_emplace(key, static_cast<int32_t>(nodes_.size()));
  if (inserted) nodes_.push_back({pos, parent});
  return it->second;
}

void GrammarMatcher::Expand(uint32_t pos, int32_t parent, std::vector<int32_t>* out, int depth) {
  if (out->size() > 4 * kMaxStacks || depth > kMaxExpandDepth) {
    overflow_ = true;
    return;
  }
  const GrammarElement& e = grammar_->element(pos);
  switch (e.kind) {
    case GrammarElement::Kind::kEnd:
      if (parent == kEmptyStack) {
        out->push_back(kEmptyStack);
      } else {
        const struct Node below = nodes_[static_cast<size_t>(parent)];
        Expand(below.pos, below.parent, out, depth + 1);
      }
      return;
    case GrammarElement::Kind::kChars:
      out->push_back(Node(pos, parent));
      return;
    case GrammarElement::Kind::kRule: {
      // What follows the reference is pushed below the rule's alternatives,
      // unless nothing follows (a tail call: the stack does not grow).
      const bool last = grammar_->element(pos + 1).kind == GrammarElement::Kind::kEnd;
      const int32_t rest = last ? parent : Node(pos + 1, parent);
      for (uint32_t alt : grammar_->alternatives(e.value)) Expand(alt, rest, out, depth + 1);
      return;
    }
  }
}

int32_t GrammarMatcher::InternSet(std::vector<int32_t> stacks) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  auto it = set_ids_.find(stacks);
  if (it != set_ids_.end()) return it->second;
  const int32_t id = static_cast<int32_t>(sets_.size());
  sets_.push_back(stacks);
  set_ids_.emplace(std::move(stacks), id);
  return id;
}

GrammarMatcher::State GrammarMatcher::InternState(int32_t set, uint32_t partial,
                                                  uint8_t remaining) {
  const uint64_t key =
      static_cast<uint64_t>(set) << 24 | static_cast<uint64_t>(remaining) << 21 | partial;
  auto [it, inserted] = state_ids_.try_emplace(key, static_cast<State>(states_.size()));
  if (inserted) {
    const uint32_t table = static_cast<uint32_t>(transitions_.size());
    states_.push_back({set, partial, remaining, table});
    transitions_.resize(transitions_.size() + (remaining == 0 ? 256 : 64), kUnknown);
  }
  return it->second;
}

bool GrammarMatcher::accepting(State s) const {
  if (s == kDead) return false;
  const StateInfo& info = states_[static_cast<size_t>(s)];
  const std::vector<int32_t>& stacks = sets_[static_cast<size_t>(info.set)];
  return info.remaining == 0 && !stacks.empty() && stacks.front() == kEmptyStack;
}

bool GrammarMatcher::Feasible(int32_t set, uint32_t lo, uint32_t hi) const {
  for (int32_t stack : sets_[static_cast<size_t>(set)]) {
    if (stack == kEmptyStack) continue;
    const GrammarElement& e = grammar_->element(nodes_[static_cast<size_t>(stack)].pos);
    if (grammar_->char_set(e.value).Intersects(lo, hi)) return true;
  }
  return false;
}

GrammarMatcher::State GrammarMatcher::AdvanceCodePoint(int32_t set, uint32_t c) {
  scratch_.clear();
  overflow_ = false;
  // sets_ may grow while expanding: copy the stacks first.
  const std::vector<int32_t> stacks = sets_[static_cast<size_t>(set)];
  for (int32_t stack : stacks) {
    if (stack == kEmptyStack) continue;
    const struct Node node = nodes_[static_cast<size_t>(stack)];
    if (!grammar_->char_set(grammar_->element(node.pos).value).Contains(c)) continue;
    Expand(node.pos + 1, node.parent, &scratch_);
  }
  std::sort(scratch_.begin(), scratch_.end());
  scratch_.erase(std::unique(scratch_.begin(), scratch_.end()), scratch_.end());
  if (overflow_ || scratch_.size() > kMaxStacks) {
    if (status_.ok()) {
      status_ = absl::ResourceExhaustedError(
          absl::StrCat("the grammar is too ambiguous to follow: more than ", kMaxStacks,
                       " ways to continue (or rules nested past ", kMaxExpandDepth,
                       ") after code point U+", absl::Hex(c)));
    }
    return kDead;
  }
  if (scratch_.empty()) return kDead;
  return InternState(InternSet(scratch_), 0, 0);
}

// UTF-8 as RFC 3629 has it: no overlong forms, no surrogates, nothing past
// U+10FFFF. A partial character is checked as the code points it may still
// become, [lo, hi].
namespace {

bool InSurrogates(uint32_t lo, uint32_t hi) { return lo >= 0xD800 && hi <= 0xDFFF; }

}  // namespace

GrammarMatcher::State GrammarMatcher::ComputeStep(State s, uint8_t byte, size_t index) {
  const StateInfo info = states_[static_cast<size_t>(s)];
  State next = kDead;
  // The smallest code point a character of 2, 3, 4 bytes may encode.
  static constexpr uint32_t kMinOfLength[] = {0, 0, 0x80, 0x800, 0x10000};
  auto partial_state = [&](uint32_t bits, uint8_t remaining, uint32_t min) {
    uint32_t lo = bits << (6 * remaining);
    const uint32_t hi = std::min(lo | ((1u << (6 * remaining)) - 1), CodePointSet::kMaxCodePoint);
    lo = std::max(lo, min);
    if (lo > hi || InSurrogates(lo, hi) || !Feasible(info.set, lo, hi)) return kDead;
    return InternState(info.set, bits, remaining);
  };
  if (info.remaining == 0) {
    if (byte < 0x80) {
      next = AdvanceCodePoint(info.set, byte);
    } else {
      uint8_t remaining = 0;
      uint32_t bits = 0;
      if ((byte & 0xE0) == 0xC0 && byte >= 0xC2) {
        remaining = 1;
        bits = byte & 0x1F;
      } else if ((byte & 0xF0) == 0xE0) {
        remaining = 2;
        bits = byte & 0x0F;
      } else if ((byte & 0xF8) == 0xF0 && byte <= 0xF4) {
        remaining = 3;
        bits = byte & 0x07;
      }
      if (remaining > 0) next = partial_state(bits, remaining, kMinOfLength[remaining + 1]);
    }
  } else if ((byte & 0xC0) == 0x80) {  // a continuation byte, else dead
    const uint32_t bits = info.partial << 6 | (byte & 0x3F);
    const uint8_t remaining = info.remaining - 1;
    // The first continuation decides overlong forms: a state with 2 bytes
    // to come and fewer than 4 bits is a 3-byte lead's (a 4-byte
    // character's has at least 0x10 by then), one with 3 a 4-byte lead's.
    uint32_t min = 0;
    if (info.remaining == 2 && info.partial < 0x10) min = kMinOfLength[3];
    if (info.remaining == 3) min = kMinOfLength[4];
    if (remaining == 0) {
      if (bits >= min && !InSurrogates(bits, bits)) next = AdvanceCodePoint(info.set, bits);
    } else {
      next = partial_state(bits, remaining, min);
    }
  }
  // A dead end from an exceeded stack limit is not cached: status_ tells.
  if (next != kDead || status_.ok()) transitions_[index] = next;
  return next;
}

bool GrammarMatcher::Advance(absl::string_view bytes) {
  const State next = StepAll(current_, bytes);
  if (next == kDead) return false;
  current_ = next;
  if (nodes_.size() > kMaxNodes || states_.size() > kMaxStates) Compact();
  return true;
}

void GrammarMatcher::Compact() {
  // The current stacks as lists of grammar positions, top first.
  const StateInfo info = states_[static_cast<size_t>(current_)];
  std::vector<std::vector<uint32_t>> stacks;
  bool has_empty = false;
  for (int32_t stack : sets_[static_cast<size_t>(info.set)]) {
    if (stack == kEmptyStack) {
      has_empty = true;
      continue;
    }
    std::vector<uint32_t>& positions = stacks.emplace_back();
    for (int32_t n = stack; n != kEmptyStack; n = nodes_[static_cast<size_t>(n)].parent) {
      positions.push_back(nodes_[static_cast<size_t>(n)].pos);
    }
  }
  ++epoch_;
  nodes_.clear();
  node_ids_.clear();
  sets_.clear();
  set_ids_.clear();
  states_.clear();
  state_ids_.clear();
  transitions_.clear();
  std::vector<int32_t> ids;
  if (has_empty) ids.push_back(kEmptyStack);
  for (const std::vector<uint32_t>& positions : stacks) {
    int32_t node = kEmptyStack;
    for (auto it = positions.rbegin(); it != positions.rend(); ++it) node = Node(*it, node);
    ids.push_back(node);
  }
  current_ = InternState(InternSet(std::move(ids)), info.partial, info.remaining);
}

}  // namespace moeflow::sampling
