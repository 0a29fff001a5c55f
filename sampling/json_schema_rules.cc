#include "sampling/json_schema_rules.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moeflow::sampling::json_schema_internal {

const std::map<std::string, Builtin>& Builtins() {
  static const auto* rules = new std::map<std::string, Builtin>{
      {"boolean", {R"(("true" | "false"))", {}}},
      {"null", {R"("null")", {}}},
      {"decimal-part", {R"([0-9]{1,16})", {}}},
      {"integral-part", {R"([0] | [1-9] [0-9]{0,15})", {}}},
      {"integer", {R"(("-"? integral-part))", {"integral-part"}}},
      {"number",
       {R"(("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?)",
        {"integral-part", "decimal-part"}}},
      {"char", {R"([^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4}))", {}}},
      {"string", {R"("\"" char* "\"")", {"char"}}},
      {"value",
       {"object | array | string | number | boolean | null",
        {"object", "array", "string", "number", "boolean", "null"}}},
      {"object",
       {R"("{" space ( string ":" space value ("," space string ":" space value)* )? space "}")",
        {"string", "value"}}},
      {"array", {R"("[" space ( value ("," space value)* )? space "]")", {"value"}}},
      {"uuid",
       {R"("\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"")",
        {}}},
      {"date",
       {R"([0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] ))",
        {}}},
      {"time",
       {R"(([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ))",
        {}}},
      {"date-time", {R"(date "T" time)", {"date", "time"}}},
      {"date-string", {R"("\"" date "\"")", {"date"}}},
      {"time-string", {R"("\"" time "\"")", {"time"}}},
      {"date-time-string", {R"("\"" date-time "\"")", {"date-time"}}},
  };
  return *rules;
}

bool IsReserved(const std::string& name) { return name == "root" || Builtins().count(name) > 0; }

std::string RuleNameOf(const std::string& name) {
  std::string out;
  bool in_bad = false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (ok) {
      out += c;
      in_bad = false;
    } else if (!in_bad) {
      out += '-';
      in_bad = true;
    }
  }
  return out;
}

std::string Literal(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '\r':
        out += "\\r";
        break;
      case '\n':
        out += "\\n";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

std::string Repetition(const std::string& item, int64_t min, int64_t max,
                       const std::string& separator) {
  const bool has_max = max >= 0;
  if (max == 0) return "";
  if (min == 0 && max == 1) return item + "?";
  if (separator.empty()) {
    if (min == 1 && !has_max) return item + "+";
    if (min == 0 && !has_max) return item + "*";
    return absl::StrCat(item, "{", min, ",", has_max ? absl::StrCat(max) : "", "}");
  }
  std::string out = item + " " +
                    Repetition("(" + separator + " " + item + ")", min == 0 ? 0 : min - 1,
                               has_max ? max - 1 : -1);
  return min == 0 ? "(" + out + ")?" : out;
}

namespace {

std::string DigitClass(char lo, char hi) {
  return lo == hi ? absl::StrCat("[", std::string(1, lo), "]")
                  : absl::StrCat("[", std::string(1, lo), "-", std::string(1, hi), "]");
}

// Decimal strings of equal length, lo <= hi: the numbers between as GBNF.
std::string SameLengthRange(const std::string& lo, const std::string& hi) {
  const size_t n = lo.size();
  if (n == 1) return DigitClass(lo[0], hi[0]);
  const std::string lo_rest = lo.substr(1), hi_rest = hi.substr(1);
  if (lo[0] == hi[0]) {
    return absl::StrCat("[", std::string(1, lo[0]), "] (", SameLengthRange(lo_rest, hi_rest), ")");
  }
  const std::string zeros(n - 1, '0'), nines(n - 1, '9');
  std::vector<std::string> parts;
  char first = lo[0], last = hi[0];
  if (lo_rest != zeros) {
    parts.push_back(
        absl::StrCat("[", std::string(1, lo[0]), "] (", SameLengthRange(lo_rest, nines), ")"));
    ++first;
  }
  std::string top;
  if (hi_rest != nines) {
    top = absl::StrCat("[", std::string(1, hi[0]), "] (", SameLengthRange(zeros, hi_rest), ")");
    --last;
  }
  if (first <= last) {
    parts.push_back(DigitClass(first, last) +
                    (n - 1 == 1 ? " [0-9]" : absl::StrCat(" [0-9]{", n - 1, "}")));
  }
  if (!top.empty()) parts.push_back(top);
  return absl::StrJoin(parts, " | ");
}

// 0 <= lo <= hi.
std::string NonNegativeRange(int64_t lo, int64_t hi) {
  std::vector<std::string> parts;
  const size_t lo_digits = std::to_string(lo).size(), hi_digits = std::to_string(hi).size();
  for (size_t d = lo_digits; d <= hi_digits; ++d) {
    const std::string from = d == lo_digits ? std::to_string(lo) : "1" + std::string(d - 1, '0');
    const std::string to = d == hi_digits ? std::to_string(hi) : std::string(d, '9');
    parts.push_back(SameLengthRange(from, to));
  }
  return absl::StrJoin(parts, " | ");
}

}  // namespace

std::string IntegerRange(int64_t lo, int64_t hi) {
  if (hi < 0) return absl::StrCat("\"-\" (", NonNegativeRange(-hi, -lo), ")");
  if (lo < 0) {
    return absl::StrCat("\"-\" (", NonNegativeRange(1, -lo), ") | ", NonNegativeRange(0, hi));
  }
  return NonNegativeRange(lo, hi);
}

}  // namespace moeflow::sampling::json_schema_internal
