// A JSON schema "pattern" (a regular expression over a string's characters)
// as GBNF for the JSON string — quotes, escapes and all.
//
// Role in the data flow: json_schema_grammar.h calls it for string schemas
// with a pattern.
//
// Supported: literals and escaped punctuation, . (any character but line
// breaks), classes [a-z], [^...], \d \w \s and their negations \D \W \S,
// \t \n \r \f \v \xHH \uHHHH, groups ( ) and (?: ), alternation |,
// quantifiers * + ? {m} {m,} {m,n} (up to Grammar::kMaxRepetition), and the
// anchors ^ at the start / $ at the end. A pattern is a search, as JSON
// schema defines it: without ^ any characters may come before, without $
// after. Characters JSON must escape (" \ and control characters) are
// matched in their escaped form, so the output is always a valid JSON string.
//
// Thread-safety: a pure function. Failure: Unimplemented for a valid regular
// expression this does not support (lookaround, backreferences, lazy
// quantifiers, \b, anchors inside), which the caller may replace by any
// string; InvalidArgument for a malformed one (unbalanced parentheses,
// nothing to repeat, a bad escape), naming the offset.
#ifndef MOEFLOW_SAMPLING_JSON_SCHEMA_PATTERN_H_
#define MOEFLOW_SAMPLING_JSON_SCHEMA_PATTERN_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow::sampling {

absl::StatusOr<std::string> JsonStringPatternGbnf(absl::string_view pattern);

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_JSON_SCHEMA_PATTERN_H_
