#include "sampling/json_schema_pattern.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "sampling/grammar.h"

namespace moeflow::sampling {
namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

// Any character of a JSON string (raw or escaped) but line breaks: what "."
// matches.
constexpr char kDot[] = R"(([^"\\\x7F\x00-\x1F] | [\\] (["\\/bft] | "u" [0-9a-fA-F]{4})))";
// Any character of a JSON string.
constexpr char kAny[] = R"(([^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})))";

bool MustEscape(uint32_t c) { return c == '"' || c == '\\' || c < 0x20 || c == 0x7F; }

// The JSON text of code point `c` in a string, as a GBNF literal.
std::string JsonCharLiteral(uint32_t c) {
  switch (c) {
    case '"':
      return R"("\\\"")";
    case '\\':
      return R"("\\\\")";
    case '\n':
      return R"("\\n")";
    case '\r':
      return R"("\\r")";
    case '\t':
      return R"("\\t")";
    case '\b':
      return R"("\\b")";
    case '\f':
      return R"("\\f")";
    default:
      break;
  }
  if (MustEscape(c)) return absl::StrFormat(R"("\\u%04x")", c);
  std::string out = "\"";
  AppendUtf8(c, &out);
  return out + "\"";
}

std::string ClassChar(uint32_t c) {
  std::string out;
  if (c == ']' || c == '-' || c == '^' || c == '[' || c == '\\' || c == '"') {
    out += '\\';
    out += static_cast<char>(c);
    return out;
  }
  if (c < 0x20 || c == 0x7F) return absl::StrFormat("\\x%02X", c);
  AppendUtf8(c, &out);
  return out;
}

// A set of characters: the ones JSON writes raw as one class, the others
// in their escaped form.
std::string SetGbnf(const CodePointSet& set) {
  std::vector<std::string> alternatives;
  std::string raw;
  const CodePointSet safe = CodePointSet::Of({{'"', '"'}, {'\\', '\\'}, {0, 0x1F}, {0x7F, 0x7F}},
                                             /*negated=*/true);
  for (const auto& [lo, hi] : set.ranges()) {
    for (const auto& [slo, shi] : safe.ranges()) {
      const uint32_t a = std::max(lo, slo), b = std::min(hi, shi);
      if (a > b) continue;
      raw += ClassChar(a);
      if (b > a) raw += "-" + ClassChar(b);
    }
  }
  if (!raw.empty()) alternatives.push_back("[" + raw + "]");
  for (uint32_t c : {uint32_t{'"'}, uint32_t{'\\'}, uint32_t{0x7F}}) {
    if (set.Contains(c)) alternatives.push_back(JsonCharLiteral(c));
  }
  for (uint32_t c = 0; c < 0x20; ++c) {
    if (set.Contains(c)) alternatives.push_back(JsonCharLiteral(c));
  }
  if (alternatives.empty()) return "[^\\x00-\\U0010FFFF]";  // matches nothing
  if (alternatives.size() == 1) return alternatives[0];
  return "(" + absl::StrJoin(alternatives, " | ") + ")";
}

class PatternParser {
 public:
  explicit PatternParser(absl::string_view pattern) : p_(pattern) {}

  absl::StatusOr<std::string> Run() {
    bool anchored_start = false, anchored_end = false;
    if (!p_.empty() && p_.front() == '^') {
      anchored_start = true;
      pos_ = 1;
    }
    if (p_.size() > pos_ && p_.back() == '$' && !EscapedAt(p_.size() - 1)) {
      anchored_end = true;
      end_ = p_.size() - 1;
    } else {
      end_ = p_.size();
    }
    absl::StatusOr<std::string> body = Alternation();
    if (!body.ok()) return body.status();
    if (pos_ < end_) return Invalid("unbalanced ')'");
    std::string out = "\"\\\"\" ";
    if (!anchored_start) absl::StrAppend(&out, kAny, "* ");
    absl::StrAppend(&out, "(", body->empty() ? "\"\"" : *body, ")");
    if (!anchored_end) absl::StrAppend(&out, " ", kAny, "*");
    return out + " \"\\\"\"";
  }

 private:
  // Whether p_[i] is escaped by an odd run of backslashes before it.
  bool EscapedAt(size_t i) const {
    size_t n = 0;
    while (i > n && p_[i - n - 1] == '\\') ++n;
    return n % 2 == 1;
  }
  bool AtEnd() const { return pos_ >= end_; }
  char Peek() const { return AtEnd() ? '\0' : p_[pos_]; }
  absl::Status Invalid(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("pattern ", p_, ": ", what, " at offset ", pos_));
  }
  absl::Status Unsupported(absl::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(what, " at offset ", pos_));
  }

  absl::StatusOr<std::string> Alternation() {
    if (++depth_ > 100) return Unsupported("groups nested too deeply");
    std::vector<std::string> alternatives;
    while (true) {
      absl::StatusOr<std::string> seq = Sequence();
      if (!seq.ok()) return seq.status();
      alternatives.push_back(seq->empty() ? "\"\"" : *seq);
      if (Peek() != '|') break;
      ++pos_;
    }
    --depth_;
    return alternatives.size() == 1 ? alternatives[0] : absl::StrJoin(alternatives, " | ");
  }

  absl::StatusOr<std::string> Sequence() {
    std::vector<std::string> items;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      absl::StatusOr<std::string> atom = Atom();
      if (!atom.ok()) return atom.status();
      absl::StatusOr<std::string> item = Quantified(*atom);
      if (!item.ok()) return item.status();
      items.push_back(*item);
    }
    return absl::StrJoin(items, " ");
  }

  absl::StatusOr<uint64_t> Number() {
    const size_t start = pos_;
    uint64_t v = 0;
    while (!AtEnd() && Peek() >= '0' && Peek() <= '9') {
      v = v * 10 + static_cast<uint64_t>(Peek() - '0');
      if (v > Grammar::kMaxRepetition) return Unsupported("a repetition count too large");
      ++pos_;
    }
    if (pos_ == start) return Invalid("expected a number in {}");
    return v;
  }

  absl::StatusOr<std::string> Quantified(const std::string& atom) {
    std::string suffix;
    const char c = Peek();
    if (c == '*' || c == '+' || c == '?') {
      ++pos_;
      suffix = std::string(1, c);
    } else if (c == '{') {
      ++pos_;
      absl::StatusOr<uint64_t> min = Number();
      if (!min.ok()) return min.status();
      std::string max_text = absl::StrCat(*min);
      if (Peek() == ',') {
        ++pos_;
        max_text.clear();
        if (Peek() != '}') {
          absl::StatusOr<uint64_t> max = Number();
          if (!max.ok()) return max.status();
          if (*max < *min) return Invalid("{m,n} with n < m");
          max_text = absl::StrCat(*max);
        }
        suffix = absl::StrCat("{", *min, ",", max_text, "}");
      } else {
        suffix = absl::StrCat("{", *min, "}");
      }
      if (Peek() != '}') return Invalid("expected '}'");
      ++pos_;
    } else {
      return atom;
    }
    if (Peek() == '?' || Peek() == '+') return Unsupported("lazy or possessive quantifiers");
    if (Peek() == '*' || Peek() == '{') return Invalid("nothing to repeat");
    return "(" + atom + ")" + suffix;
  }

  // \d \w \s (and capitals: their complements) as ranges; false otherwise.
  static bool ClassEscape(char e, Ranges* ranges, bool* negated) {
    switch (e) {
      case 'd':
      case 'D':
        *ranges = {{'0', '9'}};
        break;
      case 'w':
      case 'W':
        *ranges = {{'0', '9'}, {'A', 'Z'}, {'a', 'z'}, {'_', '_'}};
        break;
      case 's':
      case 'S':
        *ranges = {{' ', ' '}, {'\t', '\r'}};
        break;
      default:
        return false;
    }
    *negated = e >= 'A' && e <= 'Z';
    return true;
  }

  // One escaped code point after '\' (pos_ at the character after it).
  absl::StatusOr<uint32_t> EscapedChar() {
    if (AtEnd()) return Invalid("a trailing backslash");
    const char e = p_[pos_++];
    auto hex = [&](int n) -> absl::StatusOr<uint32_t> {
      uint32_t v = 0;
      for (int i = 0; i < n; ++i, ++pos_) {
        const char h = Peek();
        if (h >= '0' && h <= '9') {
          v = v << 4 | static_cast<uint32_t>(h - '0');
        } else if ((h | 0x20) >= 'a' && (h | 0x20) <= 'f') {
          v = v << 4 | static_cast<uint32_t>((h | 0x20) - 'a' + 10);
        } else {
          return Invalid(absl::StrCat("expected ", n, " hex digits"));
        }
      }
      return v;
    };
    switch (e) {
      case 't':
        return '\t';
      case 'n':
        return '\n';
      case 'r':
        return '\r';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      case 'x':
        return hex(2);
      case 'u':
        return hex(4);
      default:
        break;
    }
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9')) {
      return Unsupported(absl::StrCat("the escape \\", std::string(1, e)));
    }
    return static_cast<uint32_t>(static_cast<unsigned char>(e));  // escaped punctuation
  }

  // The next code point of the pattern (UTF-8).
  absl::StatusOr<uint32_t> RawChar() {
    std::vector<uint32_t> cp;
    const unsigned char c = static_cast<unsigned char>(p_[pos_]);
    const size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    if (pos_ + n > p_.size() || !DecodeUtf8(p_.substr(pos_, n), &cp) || cp.size() != 1) {
      return Invalid("invalid UTF-8");
    }
    pos_ += n;
    return cp[0];
  }

  absl::StatusOr<std::string> Class() {
    ++pos_;  // '['
    bool negated = false;
    if (Peek() == '^') {
      negated = true;
      ++pos_;
    }
    Ranges ranges;
    bool first = true;
    while (true) {
      if (AtEnd()) return Invalid("an unterminated character class");
      if (Peek() == ']' && !first) break;
      first = false;
      uint32_t lo;
      if (Peek() == '\\') {
        ++pos_;
        Ranges escaped;
        bool escape_negated = false;
        if (!AtEnd() && ClassEscape(Peek(), &escaped, &escape_negated)) {
          ++pos_;
          if (escape_negated) return Unsupported("\\D, \\W or \\S inside a class");
          ranges.insert(ranges.end(), escaped.begin(), escaped.end());
          continue;
        }
        absl::StatusOr<uint32_t> c = EscapedChar();
        if (!c.ok()) return c.status();
        lo = *c;
      } else {
        absl::StatusOr<uint32_t> c = RawChar();
        if (!c.ok()) return c.status();
        lo = *c;
      }
      uint32_t hi = lo;
      if (Peek() == '-' && pos_ + 1 < end_ && p_[pos_ + 1] != ']') {
        ++pos_;
        absl::StatusOr<uint32_t> c;
        if (Peek() == '\\') {
          ++pos_;
          c = EscapedChar();
        } else {
          c = RawChar();
        }
        if (!c.ok()) return c.status();
        if (*c < lo) return Invalid("a class range out of order");
        hi = *c;
      }
      ranges.emplace_back(lo, hi);
    }
    ++pos_;  // ']'
    return SetGbnf(CodePointSet::Of(std::move(ranges), negated));
  }

  absl::StatusOr<std::string> Atom() {
    const char c = Peek();
    if (c == '(') {
      ++pos_;
      if (Peek() == '?') {
        if (pos_ + 1 < end_ && p_[pos_ + 1] == ':') {
          pos_ += 2;
        } else {
          return Unsupported("lookaround, named groups and inline flags");
        }
      }
      absl::StatusOr<std::string> inner = Alternation();
      if (!inner.ok()) return inner.status();
      if (Peek() != ')') return Invalid("an unbalanced '('");
      ++pos_;
      return "(" + *inner + ")";
    }
    if (c == '[') return Class();
    if (c == '.') {
      ++pos_;
      return std::string(kDot);
    }
    if (c == '^' || c == '$') return Unsupported("an anchor inside the pattern");
    if (c == '*' || c == '+' || c == '?' || c == '{') return Invalid("nothing to repeat");
    if (c == '\\') {
      ++pos_;
      Ranges ranges;
      bool negated = false;
      if (!AtEnd() && ClassEscape(Peek(), &ranges, &negated)) {
        ++pos_;
        return SetGbnf(CodePointSet::Of(std::move(ranges), negated));
      }
      absl::StatusOr<uint32_t> e = EscapedChar();
      if (!e.ok()) return e.status();
      return JsonCharLiteral(*e);
    }
    absl::StatusOr<uint32_t> raw = RawChar();
    if (!raw.ok()) return raw.status();
    return JsonCharLiteral(*raw);
  }

  absl::string_view p_;
  size_t pos_ = 0;
  size_t end_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<std::string> JsonStringPatternGbnf(absl::string_view pattern) {
  return PatternParser(pattern).Run();
}

}  // namespace moeflow::sampling
