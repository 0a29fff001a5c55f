// JSON schema → GBNF (json_schema_grammar.h): which documents each schema's
// grammar accepts, and the errors for schemas it cannot convert.
#include "sampling/json_schema_grammar.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sampling/grammar.h"
#include "sampling/grammar_matcher.h"
#include "sampling/json_schema_pattern.h"

namespace moeflow::sampling {
namespace {

using Json = nlohmann::ordered_json;

class SchemaGrammar {
 public:
  explicit SchemaGrammar(const std::string& schema) {
    absl::StatusOr<std::string> gbnf = JsonSchemaToGbnf(Json::parse(schema), &warnings);
    EXPECT_TRUE(gbnf.ok()) << gbnf.status() << "\n" << schema;
    if (!gbnf.ok()) return;
    text = *gbnf;
    absl::StatusOr<Grammar> g = Grammar::Parse(text);
    EXPECT_TRUE(g.ok()) << g.status() << "\n" << text;
    if (g.ok()) grammar = std::make_shared<const Grammar>(*std::move(g));
  }
  bool Accepts(const std::string& doc) const {
    if (grammar == nullptr) return false;
    GrammarMatcher m(grammar);
    return m.Advance(doc) && m.complete();
  }

  std::string text;
  std::vector<std::string> warnings;
  std::shared_ptr<const Grammar> grammar;
};

std::string ConversionError(const std::string& schema) {
  absl::StatusOr<std::string> gbnf = JsonSchemaToGbnf(Json::parse(schema));
  EXPECT_FALSE(gbnf.ok()) << schema << "\n" << (gbnf.ok() ? *gbnf : "");
  EXPECT_TRUE(gbnf.ok() || absl::IsInvalidArgument(gbnf.status()));
  return gbnf.ok() ? "" : std::string(gbnf.status().message());
}

TEST(JsonSchemaGrammarTest, ObjectsWithRequiredAndOptionalPropertiesInOrder) {
  SchemaGrammar g(R"({"type": "object", "properties": {
      "name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"},
      "none": {"type": "null"}, "score": {"type": "number"}},
      "required": ["name", "age"]})");
  EXPECT_TRUE(g.Accepts(R"({"name": "Ann", "age": 31})"));
  EXPECT_TRUE(g.Accepts(R"({"name":"Ann","age":-4,"ok":true,"none":null,"score":1.5e-3})"));
  EXPECT_TRUE(g.Accepts(R"({"name": "Ann", "age": 31, "score": 2})"));   // optional ones may go
  EXPECT_TRUE(g.Accepts("{\n  \"name\": \"A\",\n  \"age\": 0\n}"));      // whitespace
  EXPECT_FALSE(g.Accepts(R"({"name": "Ann"})"));                         // age is required
  EXPECT_FALSE(g.Accepts(R"({"age": 31, "name": "Ann"})"));              // schema order
  EXPECT_FALSE(g.Accepts(R"({"name": "Ann", "age": 31, "extra": 1})"));  // no others
  EXPECT_FALSE(g.Accepts(R"({"name": "Ann", "age": 3.5})"));             // integer
  EXPECT_FALSE(g.Accepts(R"({"name": 7, "age": 3})"));
  EXPECT_FALSE(g.Accepts(R"({"name": "Ann", "age": 3, "ok": "yes"})"));
  EXPECT_FALSE(g.Accepts(R"({"name": "Ann", "age": 3, "score": 1, "ok": true})"));  // order
  EXPECT_FALSE(g.Accepts(R"( {"name": "Ann", "age": 3})"));  // no space around the root
}

TEST(JsonSchemaGrammarTest, AdditionalPropertiesAndAnyObject) {
  SchemaGrammar any(R"({"type": "object"})");
  EXPECT_TRUE(any.Accepts(R"({})"));
  EXPECT_TRUE(any.Accepts(R"({"a": [1, {"b": null}], "c": "d"})"));
  EXPECT_FALSE(any.Accepts(R"([1])"));
  SchemaGrammar typed(R"({"type": "object", "properties": {"ab": {"type": "string"}},
                          "additionalProperties": {"type": "integer"}})");
  EXPECT_TRUE(typed.Accepts(R"({"ab": "x", "n": 1, "m": 2})"));
  EXPECT_TRUE(typed.Accepts(R"({"a": 1, "abc": 2, "b\u0041": 3})"));  // keys near "ab" too
  EXPECT_TRUE(typed.Accepts(R"({"": 1})"));
  EXPECT_FALSE(typed.Accepts(R"({"ab": "x", "n": "y"})"));  // others must be integers
  EXPECT_FALSE(typed.Accepts(R"({"ab": 1})"));              // "ab" is the listed string one
  SchemaGrammar open(R"({"type": "object", "properties": {"a": {"type": "string"}},
                         "required": ["a"], "additionalProperties": true})");
  EXPECT_TRUE(open.Accepts(R"({"a": "x", "b": [true], "c": {}})"));
  SchemaGrammar closed(R"({"type": "object", "properties": {"x": {"type": "string"}},
                           "required": ["x"], "additionalProperties": false})");
  EXPECT_FALSE(closed.Accepts(R"({"x": "1", "y": 2})"));
}

TEST(JsonSchemaGrammarTest, ArraysEnumsConstAndUnions) {
  SchemaGrammar bounded(R"({"type": "array", "items": {"type": "integer"}, "minItems": 1,
                            "maxItems": 3})");
  EXPECT_TRUE(bounded.Accepts("[1]"));
  EXPECT_TRUE(bounded.Accepts("[1, 2, 3]"));
  EXPECT_FALSE(bounded.Accepts("[]"));
  EXPECT_FALSE(bounded.Accepts("[1, 2, 3, 4]"));
  SchemaGrammar colors(R"({"type": "array", "items": {"enum": ["red", "green"]}})");
  EXPECT_TRUE(colors.Accepts(R"(["red", "green", "red"])"));
  EXPECT_TRUE(colors.Accepts("[]"));
  EXPECT_FALSE(colors.Accepts(R"(["blue"])"));
  SchemaGrammar tuple(R"({"type": "array", "prefixItems": [{"type": "integer"},
                                                           {"type": "string"}]})");
  EXPECT_TRUE(tuple.Accepts(R"([1, "a"])"));
  EXPECT_FALSE(tuple.Accepts(R"(["a", 1])"));
  SchemaGrammar values(R"({"enum": ["a", 1, null, true, {"x": 1}]})");
  for (const char* v : {R"("a")", "1", "null", "true", R"({"x":1})"})
    EXPECT_TRUE(values.Accepts(v));
  EXPECT_FALSE(values.Accepts("false"));
  EXPECT_TRUE(SchemaGrammar(R"({"const": "fixed"})").Accepts(R"("fixed")"));
  SchemaGrammar nullable(R"({"type": ["string", "null"]})");
  EXPECT_TRUE(nullable.Accepts("null"));
  EXPECT_TRUE(nullable.Accepts(R"("s")"));
  EXPECT_FALSE(nullable.Accepts("1"));
  SchemaGrammar any_of(R"({"anyOf": [{"type": "integer"}, {"type": "object",
      "properties": {"x": {"type": "number"}}, "required": ["x"]}]})");
  EXPECT_TRUE(any_of.Accepts("12"));
  EXPECT_TRUE(any_of.Accepts(R"({"x": 1.5})"));
  EXPECT_FALSE(any_of.Accepts(R"({"y": 1})"));
  SchemaGrammar all_of(R"({"allOf": [
      {"type": "object", "properties": {"a": {"type": "string"}}},
      {"type": "object", "properties": {"b": {"type": "integer"}}}]})");
  EXPECT_TRUE(all_of.Accepts(R"({"a": "x", "b": 1})"));
  EXPECT_FALSE(all_of.Accepts(R"({"a": "x"})"));  // members' properties are required
}

TEST(JsonSchemaGrammarTest, StringsLengthsFormatsAndPatterns) {
  SchemaGrammar len(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  EXPECT_TRUE(len.Accepts(R"("ab")"));
  EXPECT_TRUE(len.Accepts(R"("a\n")"));  // an escape is one character
  EXPECT_TRUE(len.Accepts("\"\xc3\xa9\xc3\xa9\""));
  EXPECT_FALSE(len.Accepts(R"("a")"));
  EXPECT_FALSE(len.Accepts(R"("abcd")"));
  SchemaGrammar date(R"({"type": "string", "format": "date"})");
  EXPECT_TRUE(date.Accepts(R"("2026-12-04")"));
  EXPECT_FALSE(date.Accepts(R"("2026-13-04")"));
  EXPECT_TRUE(SchemaGrammar(R"({"type": "string", "format": "date-time"})")
                  .Accepts(R"("2026-12-04T10:20:30.123Z")"));
  EXPECT_TRUE(SchemaGrammar(R"({"type": "string", "format": "uuid"})")
                  .Accepts(R"("0f8fad5b-d9cb-469f-a165-70867728950e")"));
  SchemaGrammar code(R"({"type": "string", "pattern": "^[a-z]+-\\d{2,3}$"})");
  EXPECT_TRUE(code.Accepts(R"("ab-12")"));
  EXPECT_TRUE(code.Accepts(R"("x-123")"));
  EXPECT_FALSE(code.Accepts(R"("x-1")"));
  EXPECT_FALSE(code.Accepts(R"("X-12")"));
  EXPECT_TRUE(code.warnings.empty());
  SchemaGrammar alt(R"({"pattern": "^(foo|bar)?baz\\.$"})");
  EXPECT_TRUE(alt.Accepts(R"("foobaz.")"));
  EXPECT_TRUE(alt.Accepts(R"("baz.")"));
  EXPECT_FALSE(alt.Accepts(R"("bazz")"));
  // Unanchored: a search.
  SchemaGrammar search(R"({"pattern": "ab+"})");
  EXPECT_TRUE(search.Accepts(R"("xxabbby")"));
  EXPECT_FALSE(search.Accepts(R"("xxa")"));
  // Characters JSON escapes are matched escaped: the output stays JSON.
  SchemaGrammar quote(R"({"pattern": "^a\"[^x]$"})");
  EXPECT_TRUE(quote.Accepts(R"("a\"\\")"));
  EXPECT_TRUE(quote.Accepts(R"("a\"\n")"));
  EXPECT_FALSE(quote.Accepts("\"a\"\"\""));
  // A pattern this does not support: any string, with a warning.
  SchemaGrammar lookahead(R"({"type": "string", "pattern": "^(?=a)a$"})");
  EXPECT_TRUE(lookahead.Accepts(R"("anything")"));
  ASSERT_EQ(lookahead.warnings.size(), 1u);
  EXPECT_TRUE(absl::StrContains(lookahead.warnings[0], "not supported"));
}

TEST(JsonSchemaGrammarTest, IntegerBoundsAreExact) {
  struct Case {
    const char* schema;
    int64_t lo, hi;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"type": "integer", "minimum": -5, "maximum": 5})", -5, 5},
           {R"({"type": "integer", "minimum": 123, "maximum": 45678})", 123, 45678},
           {R"({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100})", 1, 99},
           {R"({"type": "integer", "minimum": 1.5, "maximum": 20.5})", 2, 20},
           {R"({"type": "integer", "minimum": -1200, "maximum": -17})", -1200, -17},
           {R"({"type": "integer", "minimum": 0, "maximum": 0})", 0, 0}}) {
    SchemaGrammar g(c.schema);
    for (int64_t v = c.lo - 150; v <= c.hi + 150; ++v) {
      EXPECT_EQ(g.Accepts(std::to_string(v)), v >= c.lo && v <= c.hi) << c.schema << " " << v;
    }
    EXPECT_FALSE(g.Accepts("-0")) << c.schema;
    EXPECT_FALSE(g.Accepts("007")) << c.schema;
  }
  SchemaGrammar at_least(R"({"type": "integer", "minimum": 10})");
  EXPECT_TRUE(at_least.Accepts("10"));
  EXPECT_TRUE(at_least.Accepts("9999999999999999"));  // 16 digits, llama.cpp's longest
  EXPECT_FALSE(at_least.Accepts("9"));
  EXPECT_FALSE(at_least.Accepts("-10"));
  SchemaGrammar at_most(R"({"type": "integer", "maximum": -3})");
  EXPECT_TRUE(at_most.Accepts("-3"));
  EXPECT_TRUE(at_most.Accepts("-123456"));
  EXPECT_FALSE(at_most.Accepts("-2"));
  EXPECT_FALSE(at_most.Accepts("-03"));
  EXPECT_TRUE(absl::StrContains(
      ConversionError(R"({"type": "integer", "minimum": 5, "maximum": 4})"), "no integer"));
}

TEST(JsonSchemaGrammarTest, RefsDefsAndRecursion) {
  SchemaGrammar list(R"({"$defs": {"node": {"type": "object", "properties": {
      "value": {"type": "integer"},
      "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
      "required": ["value", "next"]}}, "$ref": "#/$defs/node"})");
  EXPECT_TRUE(list.Accepts(R"({"value": 1, "next": null})"));
  EXPECT_TRUE(
      list.Accepts(R"({"value": 1, "next": {"value": 2, "next": {"value": 3, "next": null}}})"));
  EXPECT_FALSE(list.Accepts(R"({"value": 1, "next": {"value": 2}})"));
  SchemaGrammar points(R"({"definitions": {"p": {"type": "object",
      "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
      "type": "object", "properties": {"points": {"type": "array", "items": {"$ref": "#/definitions/p"}}},
      "required": ["points"]})");
  EXPECT_TRUE(points.Accepts(R"({"points": [{"x": 1}, {"x": 2}]})"));
  EXPECT_FALSE(points.Accepts(R"({"points": [{"y": 1}]})"));
  SchemaGrammar tree(R"({"type": "object", "properties": {"children": {"type": "array",
      "items": {"$ref": "#"}}}, "required": ["children"]})");
  EXPECT_TRUE(
      tree.Accepts(R"({"children": [{"children": []}, {"children": [{"children": []}]}]})"));
}

TEST(JsonSchemaGrammarTest, BadSchemasNameWhereAndWhy) {
  EXPECT_EQ(ConversionError(R"({"type": "frob"})"), "#: unknown type \"frob\"");
  EXPECT_TRUE(absl::StrContains(ConversionError(R"({"$ref": "#/nope"})"), "does not resolve"));
  EXPECT_TRUE(absl::StrContains(ConversionError(R"({"$ref": "http://x/y.json"})"),
                                "only references into the same document"));
  EXPECT_TRUE(absl::StrContains(
      ConversionError(R"({"type": "object", "properties": {"a": {"type": "integer",
                          "minimum": "x"}}})"),
      "#/properties/a: minimum must be a number"));
  EXPECT_TRUE(absl::StrContains(ConversionError(R"({"type": "array", "maxItems": -1})"),
                                "maxItems must be a non-negative integer"));
  EXPECT_TRUE(absl::StrContains(ConversionError(R"({"anyOf": []})"), "#/anyOf: must be"));
  EXPECT_TRUE(absl::StrContains(ConversionError(R"({"enum": []})"), "enum must be"));
  EXPECT_TRUE(
      absl::StrContains(ConversionError(R"({"type": "string", "pattern": "^(a$"})"), "unbalanced"));
  EXPECT_TRUE(absl::StrContains(ConversionError(R"([1, 2])"), "a schema must be an object"));
  // A schema that refers to itself before anything is matched converts, but
  // its grammar is left-recursive and refused by the parser.
  absl::StatusOr<std::string> loop = JsonSchemaToGbnf(Json::parse(R"({"$ref": "#"})"));
  ASSERT_TRUE(loop.ok()) << loop.status();
  EXPECT_TRUE(absl::StrContains(Grammar::Parse(*loop).status().message(), "left-recursive"));
}

TEST(JsonSchemaGrammarTest, RuleNamesFollowLlamaCpp) {
  SchemaGrammar g(R"({"type": "object", "properties": {"first name": {"type": "string"},
      "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["first name"]})");
  EXPECT_TRUE(absl::StrContains(
      g.text, "first-name-kv ::= \"\\\"first name\\\"\" space \":\" space string"))
      << g.text;
  EXPECT_TRUE(absl::StrContains(
      g.text, "root ::= \"{\" space first-name-kv ( \",\" space ( age-kv ) )? space \"}\""))
      << g.text;
  EXPECT_TRUE(absl::StrContains(g.text, "space ::= | \" \" | \"\\n\"{1,2} [ \\t]{0,20}")) << g.text;
}

}  // namespace
}  // namespace moeflow::sampling
