// GBNF pieces of the JSON schema converter (json_schema_grammar.cc and
// json_schema_object.cc; internal to //sampling:json_schema_grammar): the
// shared rules llama.cpp's json-schema-to-grammar names (value, string,
// integer, date, ...), rule names, literals, repetitions, and integer ranges
// as digit patterns.
//
// Thread-safety: pure functions (Builtins() is built once, thread-safe).
// Failure: none; Builtins().at() of an unknown name is a programmer error.
#ifndef MOEFLOW_SAMPLING_JSON_SCHEMA_RULES_H_
#define MOEFLOW_SAMPLING_JSON_SCHEMA_RULES_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moeflow::sampling::json_schema_internal {

// Whitespace between tokens: none, a space, or one or two newlines and an
// indent.
inline constexpr char kSpaceRule[] = R"(| " " | "\n"{1,2} [ \t]{0,20})";

struct Builtin {
  const char* body;
  std::vector<const char*> deps;
};

// The shared rules, named as llama.cpp names them.
const std::map<std::string, Builtin>& Builtins();

// "root" or a builtin's name: a schema's rule takes another name.
bool IsReserved(const std::string& name);

// [^a-zA-Z0-9-]+ → "-".
std::string RuleNameOf(const std::string& name);

// A GBNF literal of `text`.
std::string Literal(const std::string& text);

// `item` min..max times (max < 0: no limit), `separator` between items.
std::string Repetition(const std::string& item, int64_t min, int64_t max,
                       const std::string& separator = "");

// Longest integers the grammar writes: 16 digits (integral-part).
inline constexpr int64_t kMaxDigitsValue = 9999999999999999;

// The integers lo..hi (lo <= hi) as GBNF digit patterns.
std::string IntegerRange(int64_t lo, int64_t hi);

}  // namespace moeflow::sampling::json_schema_internal

#endif  // MOEFLOW_SAMPLING_JSON_SCHEMA_RULES_H_
