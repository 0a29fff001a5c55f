// JSON schema → GBNF grammar (grammar.h), for constrained decoding of
// OpenAI's response_format and Ollama's format.
//
// Role in the data flow: the HTTP API converts a request's schema (or, for
// JSON mode, {"type": "object"}) here, parses the text with Grammar::Parse
// and hands the grammar to the sampler.
//
// Behaviour follows llama.cpp's common/json-schema-to-grammar (the output is
// the same language; rule names follow its scheme): compact JSON with
// optional whitespace (`space`) between tokens, the root with none around it.
//   type          string, number, integer, boolean, null, object, array, or a
//                 list of them (any of); no type: decided by the keywords
//                 present (properties → object, items → array, pattern /
//                 minLength / maxLength / format → string), else any value
//   object        properties in the schema's order: the required ones first,
//                 then the optional ones (each may be left out; those present
//                 keep the order); additionalProperties: false / absent with
//                 properties → no others, true / absent without properties →
//                 any others (keys other than the listed ones), a schema →
//                 others of that schema
//   array         items (a schema), prefixItems or items as a list (a tuple),
//                 minItems / maxItems
//   string        minLength / maxLength (characters), format date, time,
//                 date-time, uuid, pattern (json_schema_pattern.h: an
//                 anchored ^…$ regular expression; one this converter does
//                 not support becomes any string, as llama.cpp does, and is
//                 reported in `warnings`)
//   integer       minimum / maximum / exclusiveMinimum / exclusiveMaximum
//                 (as digit patterns; at most 16 digits, as llama.cpp)
//   enum, const   the values' JSON text
//   anyOf, oneOf  alternatives (oneOf is not exclusive); allOf merges the
//                 objects' properties (each required when its member is not
//                 inside an anyOf) or intersects enums
//   $ref          "#" or "#/…" pointers into the same document ($defs,
//                 definitions, …), recursion included
// Keywords not listed (number bounds, uniqueItems, multipleOf, …) are not
// enforced. Strings are always valid JSON strings.
//
// Thread-safety: pure functions. Failure: InvalidArgument naming the JSON
// pointer of the bad part ("#/properties/age: minimum must be a number"):
// a schema that is not an object, an unknown type, a $ref that does not
// resolve or leaves the document, a malformed pattern, bounds that leave
// nothing (minimum > maximum).
#ifndef MOEFLOW_SAMPLING_JSON_SCHEMA_GRAMMAR_H_
#define MOEFLOW_SAMPLING_JSON_SCHEMA_GRAMMAR_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moeflow::sampling {

// GBNF text whose rule `root` matches the JSON documents `schema` accepts
// (as far as the keywords above go). Unsupported patterns are listed in
// *warnings when given.
absl::StatusOr<std::string> JsonSchemaToGbnf(const nlohmann::ordered_json& schema,
                                             std::vector<std::string>* warnings = nullptr);

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_JSON_SCHEMA_GRAMMAR_H_
