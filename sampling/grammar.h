// Grammar: a context-free grammar over Unicode code points, written in GBNF
// (llama.cpp's grammar notation), compiled into flat rules that a pushdown
// matcher (grammar_matcher.h) walks.
//
// Role in the data flow: the HTTP API turns a request's response_format
// (JSON mode, a JSON schema: json_schema_grammar.h) into GBNF text, parses it
// here once per request, and hands the Grammar to the sampler of each of the
// request's sequences, which masks the tokens the grammar cannot accept
// (grammar_constraint.h).
//
// GBNF, as llama.cpp reads it (grammars/README.md there):
//   rule     ::= name "::=" alternatives            one rule per line; inside
//                                                   ( ) and after | a rule
//                                                   may go on over lines
//   alternatives: sequence ("|" sequence)*
//   sequence: items; an item is
//     "literal"          code points, escapes \n \r \t \\ \" \[ \] \- \xHH
//                        \uHHHH \UHHHHHHHH
//     [a-z0-9_] [^"\\]   a character class (ranges, negation)
//     .                  any code point
//     name               a rule reference (names: [a-zA-Z0-9-]+)
//     ( alternatives )   a group
//     item* item+ item? item{m} item{m,} item{m,n}   repetition (at most
//                        kMaxRepetition times)
//   # comment            to the end of the line
// Compilation follows llama.cpp: a group becomes a rule of its own, and a
// repetition becomes the item written m times followed by generated
// optional rules (S{m,n} = S…S S'(n-m), S'(k) ::= S S'(k-1) | ε). Grammars
// with left recursion (a rule that can reach itself before matching a
// character, e.g. `a ::= a "x"` or `b ::= ("")*`) are refused: the
// pushdown matcher would loop on them.
//
// Thread-safety: immutable after Parse; share it freely (a shared_ptr to a
// const Grammar is what requests hold). Failure: Parse returns
// InvalidArgument naming the line and column and what was expected, an
// undefined rule, a missing root, left recursion, or a grammar past the size
// limits.
#ifndef MOEFLOW_SAMPLING_GRAMMAR_H_
#define MOEFLOW_SAMPLING_GRAMMAR_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moeflow::sampling {

// A set of code points: sorted, disjoint, non-adjacent inclusive ranges, with
// a bitmap for ASCII.
class CodePointSet {
 public:
  static constexpr uint32_t kMaxCodePoint = 0x10FFFF;

  CodePointSet() = default;
  // The union of `ranges` (any order, may overlap), or its complement over
  // [0, kMaxCodePoint] when `negated`.
  static CodePointSet Of(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated);

  bool Contains(uint32_t c) const {
    if (c < 128) return (ascii_[c >> 6] >> (c & 63)) & 1;
    return ContainsSlow(c);
  }
  // Whether some code point in [lo, hi] is in the set.
  bool Intersects(uint32_t lo, uint32_t hi) const;
  const std::vector<std::pair<uint32_t, uint32_t>>& ranges() const { return ranges_; }
  bool operator==(const CodePointSet& other) const { return ranges_ == other.ranges_; }

 private:
  bool ContainsSlow(uint32_t c) const;
  std::vector<std::pair<uint32_t, uint32_t>> ranges_;
  uint64_t ascii_[2] = {0, 0};
};

struct GrammarElement {
  enum class Kind : uint8_t {
    kEnd,    // the end of an alternative
    kChars,  // one code point of char_set(value)
    kRule,   // rule `value`
  };
  Kind kind = Kind::kEnd;
  uint32_t value = 0;
};

class Grammar {
 public:
  // Most times one item may be repeated ({m,n}); llama.cpp's limit too.
  static constexpr uint64_t kMaxRepetition = 2000;
  // Most elements in all rules (about 8 bytes each).
  static constexpr size_t kMaxElements = 1 << 21;

  // Parses GBNF `text` whose start rule is `root`. See the errors above.
  static absl::StatusOr<Grammar> Parse(absl::string_view text, absl::string_view root = "root");

  uint32_t root() const { return root_; }
  size_t rule_count() const { return rule_names_.size(); }
  const std::string& rule_name(uint32_t rule) const { return rule_names_[rule]; }
  // Every alternative of every rule, each ending with a kEnd element.
  absl::Span<const GrammarElement> elements() const { return elements_; }
  const GrammarElement& element(uint32_t pos) const { return elements_[pos]; }
  // Where each alternative of `rule` starts in elements().
  absl::Span<const uint32_t> alternatives(uint32_t rule) const {
    return absl::MakeConstSpan(alternative_starts_)
        .subspan(rule_alternatives_[rule], rule_alternatives_[rule + 1] - rule_alternatives_[rule]);
  }
  const CodePointSet& char_set(uint32_t index) const { return char_sets_[index]; }

  // The compiled rules in GBNF (generated rules included), for tests and
  // error messages.
  std::string ToString() const;

 private:
  friend class GrammarBuilder;
  Grammar() = default;

  uint32_t root_ = 0;
  std::vector<std::string> rule_names_;
  std::vector<GrammarElement> elements_;
  std::vector<uint32_t> alternative_starts_;
  std::vector<uint32_t> rule_alternatives_;  // rule r: [r], [r + 1] in alternative_starts_
  std::vector<CodePointSet> char_sets_;
};

// Builds a Grammar rule by rule (the GBNF parser uses it; so can code that
// generates grammars). Not thread-safe.
class GrammarBuilder {
 public:
  using Sequence = std::vector<GrammarElement>;

  // The id of rule `name`, declared on first use.
  uint32_t RuleId(absl::string_view name);
  // A new rule named after `base` ("base_3": '_' is not a GBNF name
  // character, so it never meets a rule of the text).
  uint32_t NewRule(absl::string_view base);
  bool defined(uint32_t rule) const { return !rules_[rule].empty(); }
  // Sets the alternatives of `rule` (at least one; an empty sequence is ε).
  void Define(uint32_t rule, std::vector<Sequence> alternatives);
  // An element matching one code point of `set` (equal sets share an index).
  GrammarElement Chars(const CodePointSet& set);
  static GrammarElement Ref(uint32_t rule) { return {GrammarElement::Kind::kRule, rule}; }
  size_t element_count() const { return element_count_; }

  // Checks (undefined rules, left recursion, size) and compiles.
  absl::StatusOr<Grammar> Build(absl::string_view root);

 private:
  std::vector<std::string> names_;
  absl::flat_hash_map<std::string, uint32_t> ids_;  // names_ by name
  std::vector<std::vector<Sequence>> rules_;
  std::vector<CodePointSet> char_sets_;
  size_t element_count_ = 0;
};

// The UTF-8 encoding of code point `c` appended to `out`.
void AppendUtf8(uint32_t c, std::string* out);
// The code points of UTF-8 `text` appended to `out`; false (out partly
// filled) at an invalid or truncated sequence.
bool DecodeUtf8(absl::string_view text, std::vector<uint32_t>* out);

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_GRAMMAR_H_
