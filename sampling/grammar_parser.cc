// Grammar::Parse: GBNF text → GrammarBuilder rules (grammar.h describes the
// notation and how repetitions and groups are compiled).
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "sampling/grammar.h"

namespace moeflow::sampling {
namespace {

constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

class Parser {
 public:
  explicit Parser(absl::string_view text) : text_(text) {}

  absl::StatusOr<Grammar> Run(absl::string_view root) {
    SkipSpace(/*newline_ok=*/true);
    while (!AtEnd()) {
      if (absl::Status s = ParseRule(); !s.ok()) return s;
    }
    absl::StatusOr<Grammar> grammar = builder_.Build(root);
    if (!grammar.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("grammar: ", grammar.status().message()));
    }
    return grammar;
  }

 private:
  using Sequence = GrammarBuilder::Sequence;

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek(size_t ahead = 0) const {
    return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0';
  }

  absl::Status Error(absl::string_view what) const { return ErrorAt(pos_, what); }
  absl::Status ErrorAt(size_t at, absl::string_view what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    std::string near(text_.substr(at, 20));
    for (char& c : near) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    return absl::InvalidArgumentError(
        absl::StrCat("grammar line ", line, " column ", column, ": ", what,
                     at < text_.size() ? absl::StrCat(" at \"", near, "\"") : " at the end"));
  }

  // Spaces, tabs and comments; newlines too when `newline_ok`.
  void SkipSpace(bool newline_ok) {
    while (!AtEnd()) {
      const char c = Peek();
      if (c == '#') {
        while (!AtEnd() && Peek() != '\n' && Peek() != '\r') ++pos_;
      } else if (c == ' ' || c == '\t' || (newline_ok && (c == '\n' || c == '\r'))) {
        ++pos_;
      } else {
        break;
      }
    }
  }

  absl::string_view ParseName() {
    const size_t start = pos_;
    while (!AtEnd() && IsNameChar(Peek())) ++pos_;
    return text_.substr(start, pos_ - start);
  }

  absl::Status ParseRule() {
    const size_t start = pos_;
    const absl::string_view name = ParseName();
    if (name.empty()) return Error("expected a rule name");
    SkipSpace(/*newline_ok=*/false);
    if (text_.substr(pos_, 3) != "::=")
      return Error(absl::StrCat("expected ::= after '", name, "'"));
    pos_ += 3;
    SkipSpace(/*newline_ok=*/true);
    const uint32_t rule = builder_.RuleId(name);
    if (!defined_.insert(rule).second) {
      return ErrorAt(start, absl::StrCat("rule '", name, "' is defined twice"));
    }
    if (absl::Status s = ParseAlternates(rule, name, /*nested=*/false); !s.ok()) return s;
    if (Peek() == '\r') ++pos_;
    if (Peek() == '\n') {
      ++pos_;
    } else if (!AtEnd()) {
      return Error("expected a newline or the end of the grammar");
    }
    SkipSpace(/*newline_ok=*/true);
    return absl::OkStatus();
  }

  absl::Status ParseAlternates(uint32_t rule, absl::string_view rule_name, bool nested) {
    if (++depth_ > kMaxNesting) return Error("groups nested too deeply");
    std::vector<Sequence> alternatives(1);
    if (absl::Status s = ParseSequence(rule_name, nested, &alternatives.back()); !s.ok()) return s;
    while (Peek() == '|') {
      ++pos_;
      SkipSpace(/*newline_ok=*/true);
      alternatives.emplace_back();
      if (absl::Status s = ParseSequence(rule_name, nested, &alternatives.back()); !s.ok())
        return s;
    }
    --depth_;
    builder_.Define(rule, std::move(alternatives));
    return CheckSize();
  }

  absl::Status CheckSize() const {
    if (builder_.element_count() > Grammar::kMaxElements) {
      return Error(absl::StrCat("the grammar grows past ", Grammar::kMaxElements, " elements"));
    }
    return absl::OkStatus();
  }

  // One code point of a literal or class: an escape or a UTF-8 sequence.
  absl::StatusOr<uint32_t> ParseChar() {
    if (AtEnd()) return Error("unexpected end of the grammar");
    const unsigned char c = static_cast<unsigned char>(Peek());
    if (c == '\\') {
      const char e = Peek(1);
      int hex = 0;
      switch (e) {
        case 'x':
          hex = 2;
          break;
        case 'u':
          hex = 4;
          break;
        case 'U':
          hex = 8;
          break;
        case 't':
          pos_ += 2;
          return '\t';
        case 'r':
          pos_ += 2;
          return '\r';
        case 'n':
          pos_ += 2;
          return '\n';
        case '\\':
        case '"':
        case '[':
        case ']':
        case '-':
          pos_ += 2;
          return static_cast<uint32_t>(e);
        default:
          return Error("unknown escape");
      }
      uint32_t value = 0;
      for (int i = 0; i < hex; ++i) {
        const char h = Peek(2 + i);
        uint32_t d;
        if (h >= '0' && h <= '9') {
          d = h - '0';
        } else if (h >= 'a' && h <= 'f') {
          d = h - 'a' + 10;
        } else if (h >= 'A' && h <= 'F') {
          d = h - 'A' + 10;
        } else {
          return Error(absl::StrCat("expected ", hex, " hex digits"));
        }
        value = value << 4 | d;
      }
      if (value > CodePointSet::kMaxCodePoint) return Error("code point past U+10FFFF");
      pos_ += 2 + hex;
      return value;
    }
    int n = 0;
    uint32_t value = 0;
    if (c < 0x80) {
      n = 1;
      value = c;
    } else if ((c & 0xE0) == 0xC0) {
      n = 2;
      value = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
      value = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4;
      value = c & 0x07;
    } else {
      return Error("invalid UTF-8");
    }
    for (int i = 1; i < n; ++i) {
      const unsigned char b = static_cast<unsigned char>(Peek(i));
      if ((b & 0xC0) != 0x80) return Error("invalid UTF-8");
      value = value << 6 | (b & 0x3F);
    }
    pos_ += n;
    return value;
  }

  // Applies a repetition to the item at (*seq)[item_start...].
  absl::Status Repeat(absl::string_view rule_name, Sequence* seq, size_t item_start, uint64_t min,
                      uint64_t max) {
    if (item_start == seq->size()) return Error("nothing to repeat");
    if (min > Grammar::kMaxRepetition) {
      return Error(absl::StrCat("more than ", Grammar::kMaxRepetition, " repetitions"));
    }
    if (max != kUnbounded && max > Grammar::kMaxRepetition) max = kUnbounded;  // as llama.cpp
    if (max != kUnbounded && max < min)
      return Error("the repetition's maximum is below its minimum");
    const Sequence item(seq->begin() + static_cast<std::ptrdiff_t>(item_start), seq->end());
    const uint64_t copies = std::max<uint64_t>(min, max == kUnbounded ? 1 : max);
    if (builder_.element_count() + (copies + 1) * (item.size() + 2) > Grammar::kMaxElements) {
      return Error(absl::StrCat("the grammar grows past ", Grammar::kMaxElements, " elements"));
    }
    seq->resize(item_start);
    for (uint64_t i = 0; i < min; ++i) seq->insert(seq->end(), item.begin(), item.end());
    if (max == kUnbounded) {
      // S' ::= S S' | ε
      const uint32_t rest = builder_.NewRule(rule_name);
      Sequence again = item;
      again.push_back(GrammarBuilder::Ref(rest));
      builder_.Define(rest, {std::move(again), {}});
      seq->push_back(GrammarBuilder::Ref(rest));
    } else if (max > min) {
      // S'(1) ::= S | ε;  S'(k) ::= S S'(k-1) | ε
      int64_t previous = -1;
      for (uint64_t k = 0; k < max - min; ++k) {
        const uint32_t rest = builder_.NewRule(rule_name);
        Sequence again = item;
        if (previous >= 0) again.push_back(GrammarBuilder::Ref(static_cast<uint32_t>(previous)));
        builder_.Define(rest, {std::move(again), {}});
        previous = rest;
      }
      seq->push_back(GrammarBuilder::Ref(static_cast<uint32_t>(previous)));
    }
    return CheckSize();
  }

  absl::StatusOr<uint64_t> ParseCount() {
    const size_t start = pos_;
    uint64_t value = 0;
    while (IsDigit(Peek())) {
      if (value > Grammar::kMaxRepetition * 10) return ErrorAt(start, "repetition count too large");
      value = value * 10 + static_cast<uint64_t>(Peek() - '0');
      ++pos_;
    }
    if (pos_ == start) return Error("expected a number");
    return value;
  }

  absl::Status ParseSequence(absl::string_view rule_name, bool nested, Sequence* seq) {
    size_t item_start = seq->size();
    bool have_item = false;
    while (!AtEnd()) {
      const char c = Peek();
      if (c == '"') {
        ++pos_;
        item_start = seq->size();
        have_item = true;
        while (Peek() != '"') {
          if (AtEnd()) return Error("unterminated string literal");
          absl::StatusOr<uint32_t> cp = ParseChar();
          if (!cp.ok()) return cp.status();
          seq->push_back(builder_.Chars(CodePointSet::Of({{*cp, *cp}}, false)));
        }
        ++pos_;
      } else if (c == '[') {
        ++pos_;
        bool negated = false;
        if (Peek() == '^') {
          negated = true;
          ++pos_;
        }
        std::vector<std::pair<uint32_t, uint32_t>> ranges;
        while (Peek() != ']') {
          if (AtEnd()) return Error("unterminated character class");
          absl::StatusOr<uint32_t> lo = ParseChar();
          if (!lo.ok()) return lo.status();
          uint32_t hi = *lo;
          if (Peek() == '-' && Peek(1) != ']' && pos_ + 1 < text_.size()) {
            ++pos_;
            absl::StatusOr<uint32_t> end = ParseChar();
            if (!end.ok()) return end.status();
            if (*end < *lo) return Error("character range out of order");
            hi = *end;
          }
          ranges.emplace_back(*lo, hi);
        }
        ++pos_;
        item_start = seq->size();
        have_item = true;
        seq->push_back(builder_.Chars(CodePointSet::Of(std::move(ranges), negated)));
      } else if (c == '.') {
        ++pos_;
        item_start = seq->size();
        have_item = true;
        seq->push_back(builder_.Chars(CodePointSet::Of({}, /*negated=*/true)));
      } else if (IsNameChar(c)) {
        const absl::string_view name = ParseName();
        item_start = seq->size();
        have_item = true;
        seq->push_back(GrammarBuilder::Ref(builder_.RuleId(name)));
      } else if (c == '(') {
        ++pos_;
        SkipSpace(/*newline_ok=*/true);
        const uint32_t group = builder_.NewRule(rule_name);
        if (absl::Status s = ParseAlternates(group, rule_name, /*nested=*/true); !s.ok()) return s;
        if (Peek() != ')') return Error("expected ')'");
        ++pos_;
        item_start = seq->size();
        have_item = true;
        seq->push_back(GrammarBuilder::Ref(group));
      } else if (c == '*' || c == '+' || c == '?') {
        ++pos_;
        if (!have_item)
          return Error(absl::StrCat("nothing to repeat before '", std::string(1, c), "'"));
        const uint64_t min = c == '+' ? 1 : 0;
        const uint64_t max = c == '?' ? 1 : kUnbounded;
        // The repeated item stays the last one: "a*?" repeats "a*" (llama.cpp).
        if (absl::Status s = Repeat(rule_name, seq, item_start, min, max); !s.ok()) return s;
      } else if (c == '{') {
        ++pos_;
        SkipSpace(nested);
        absl::StatusOr<uint64_t> min = ParseCount();
        if (!min.ok()) return min.status();
        SkipSpace(nested);
        uint64_t max = *min;
        if (Peek() == ',') {
          ++pos_;
          SkipSpace(nested);
          max = kUnbounded;
          if (IsDigit(Peek())) {
            absl::StatusOr<uint64_t> parsed = ParseCount();
            if (!parsed.ok()) return parsed.status();
            max = *parsed;
            SkipSpace(nested);
          }
        }
        if (Peek() != '}') return Error("expected '}'");
        ++pos_;
        if (!have_item) return Error("nothing to repeat before '{'");
        if (absl::Status s = Repeat(rule_name, seq, item_start, *min, max); !s.ok()) return s;
      } else {
        break;
      }
      SkipSpace(nested);
    }
    return absl::OkStatus();
  }

  static constexpr int kMaxNesting = 200;
  absl::string_view text_;
  size_t pos_ = 0;
  int depth_ = 0;
  GrammarBuilder builder_;
  absl::flat_hash_set<uint32_t> defined_;
};

}  // namespace

absl::StatusOr<Grammar> Grammar::Parse(absl::string_view text, absl::string_view root) {
  return Parser(text).Run(root);
}

}  // namespace moeflow::sampling
