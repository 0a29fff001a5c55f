// The GBNF parser (grammar.h) and the pushdown matcher over bytes
// (grammar_matcher.h): what parses, what is refused (with where and why),
// and which strings a grammar accepts.
#include "sampling/grammar.h"

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sampling/grammar_matcher.h"

namespace moeflow::sampling {
namespace {

std::shared_ptr<const Grammar> ParseOk(const std::string& text) {
  absl::StatusOr<Grammar> g = Grammar::Parse(text);
  EXPECT_TRUE(g.ok()) << g.status() << "\n" << text;
  if (!g.ok()) return nullptr;
  return std::make_shared<const Grammar>(*std::move(g));
}

// Whether the whole of `text` matches.
bool Matches(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.Advance(text) && m.complete();
}

// Whether `text` can start a match.
bool Prefix(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.Advance(text);
}

std::string ParseError(const std::string& text) {
  absl::StatusOr<Grammar> g = Grammar::Parse(text);
  EXPECT_FALSE(g.ok()) << text;
  EXPECT_TRUE(g.ok() || absl::IsInvalidArgument(g.status()));
  return g.ok() ? "" : std::string(g.status().message());
}

// JSON in GBNF, written for these tests in llama.cpp's json.gbnf style.
constexpr char kJson[] = R"(# JSON values
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws (
             string ":" ws value
             ("," ws string ":" ws value)*
           )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,16})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
)";

TEST(GrammarTest, JsonGrammarAcceptsJsonAndRejectsTheRest) {
  auto g = ParseOk(kJson);
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g, "{}"));
  EXPECT_TRUE(
      Matches(g, R"({"a": 1, "b": [true, false, null, -0.5e+3], "c": {"d": "x\"\u00e9"}})"));
  EXPECT_TRUE(Matches(g, "{\"k\":\"h\xc3\xa9llo \xe4\xb8\xad\"}\n\t"));  // UTF-8 inside strings
  EXPECT_TRUE(Matches(g, "{ }"));
  EXPECT_FALSE(Matches(g, "{"));           // incomplete: a prefix only
  EXPECT_TRUE(Prefix(g, "{\"a\": [1, "));  // ... that can go on
  EXPECT_FALSE(Prefix(g, "[1]"));          // root is an object
  EXPECT_FALSE(Prefix(g, "{'a': 1}"));
  EXPECT_FALSE(Prefix(g, "{\"a\": 01"));  // no leading zero
  EXPECT_FALSE(Prefix(g, "{\"a\": tru}"));
  EXPECT_FALSE(Prefix(g, "{\"a\":\"\x01\"}"));  // control characters must be escaped
  EXPECT_FALSE(Prefix(g, "{\"a\": 1,}"));
  EXPECT_FALSE(Matches(g, "{} {}"));
}

TEST(GrammarTest, RepetitionsCountExactly) {
  auto g = ParseOk("root ::= \"a\"{2,3} \"b\"{2,} \"c\"? \"d\"+ [x]{2}\n");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g, "aabbdxx"));
  EXPECT_TRUE(Matches(g, "aaabbbbbcddddxx"));
  EXPECT_FALSE(Matches(g, "abbdxx"));     // a{2,3}: one is too few
  EXPECT_FALSE(Matches(g, "aaaabbdxx"));  // four too many
  EXPECT_FALSE(Matches(g, "aabdxx"));     // b{2,}
  EXPECT_FALSE(Matches(g, "aabbccdxx"));  // c?
  EXPECT_FALSE(Matches(g, "aabbxx"));     // d+
  EXPECT_FALSE(Matches(g, "aabbdx"));     // x{2}
  // A literal repeats as a whole; groups as a whole.
  auto words = ParseOk("root ::= \"ab\"* (\"x\" | \"yz\"){1,2}\n");
  ASSERT_NE(words, nullptr);
  EXPECT_TRUE(Matches(words, "ababyzx"));
  EXPECT_FALSE(Matches(words, "abax"));
  EXPECT_FALSE(Matches(words, "xyzx"));
}

TEST(GrammarTest, ClassesEscapesAndAnyCharacter) {
  auto g = ParseOk(R"(root ::= [a-c0-9\-] [^a-z] . "\x41\u00e9\U0001F600" [\]\\] "\n\t\"")"
                   "\n");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g,
                      "b-\xe4\xb8\xad"
                      "A\xc3\xa9\xf0\x9f\x98\x80]\n\t\""));
  EXPECT_TRUE(Matches(g, "-Z!A\xc3\xa9\xf0\x9f\x98\x80\\\n\t\""));
  EXPECT_FALSE(Prefix(g, "d"));
  EXPECT_FALSE(Prefix(g, "aa"));  // [^a-z]
  // A character split across Advance calls (a token ending inside it).
  GrammarMatcher m(g);
  EXPECT_TRUE(m.Advance("a0x"));
  EXPECT_TRUE(m.Advance("A\xc3"));
  EXPECT_FALSE(m.complete());
  EXPECT_FALSE(m.Advance("\xa8"));  // U+00E8, not U+00E9
  EXPECT_TRUE(m.Advance("\xa9\xf0\x9f"));
  EXPECT_TRUE(m.Advance("\x98\x80]\n\t\""));
  EXPECT_TRUE(m.complete());
  // A lead byte no allowed character starts is rejected at once.
  GrammarMatcher ascii(ParseOk("root ::= [a-z]+\n"));
  EXPECT_FALSE(ascii.Advance("\xc3"));
  EXPECT_FALSE(ascii.Advance("\x80"));  // a stray continuation byte
}

// Only well-formed UTF-8 (RFC 3629): a lead byte whose shortest character
// is past what the grammar allows, overlong forms (E0 80 80 is U+0000 again,
// F0 80 80 80 too), surrogates and continuation bytes where a character
// must start never pass, whatever the class allows.
TEST(GrammarTest, OnlyWellFormedUtf8Passes) {
  auto ascii = ParseOk("root ::= [{a]+\n");  // '{' and 'a' only
  ASSERT_NE(ascii, nullptr);
  for (const char* lead : {"\xc2", "\xe0", "\xe1", "\xf0", "\xf4"}) {
    EXPECT_FALSE(Prefix(ascii, lead)) << "lead byte " << static_cast<int>(lead[0] & 0xFF);
  }
  auto any = ParseOk("root ::= [^\\x00]+\n");  // every character but U+0000
  ASSERT_NE(any, nullptr);
  EXPECT_TRUE(
      Matches(any, "\xc3\xa9\xe0\xa0\x80\xe4\xb8\xad\xed\x9f\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"));
  EXPECT_FALSE(Prefix(any, "\xc0\x80"));          // overlong 2-byte
  EXPECT_FALSE(Prefix(any, "\xe0\x80"));          // overlong 3-byte, found at once
  EXPECT_FALSE(Prefix(any, "\xe0\x9f\xbf"));      // U+07FF in 3 bytes
  EXPECT_FALSE(Prefix(any, "\xf0\x80"));          // overlong 4-byte
  EXPECT_FALSE(Prefix(any, "\xf0\x8f\xbf\xbf"));  // U+FFFF in 4 bytes
  EXPECT_FALSE(Prefix(any, "\xed\xa0"));          // a surrogate (U+D800..)
  EXPECT_FALSE(Prefix(any, "\xf4\x90"));          // past U+10FFFF
  EXPECT_FALSE(Prefix(any, "\xe4\x41"));          // a lead byte, then no continuation
  EXPECT_FALSE(Prefix(any, "\xbf"));              // a stray continuation byte
}

TEST(GrammarTest, RulesGoOnOverLinesInsideGroupsAndAfterBars) {
  auto g =
      ParseOk("root ::= (\n  \"a\"\n  \"b\" ) |\n \"c\" # a comment\n\n# another\nx ::= \"y\"\n");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Matches(g, "ab"));
  EXPECT_TRUE(Matches(g, "c"));
  EXPECT_FALSE(Matches(g, "y"));
  // A different start rule.
  absl::StatusOr<Grammar> other = Grammar::Parse("root ::= \"a\"\nx ::= \"y\"\n", "x");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(Matches(std::make_shared<const Grammar>(*other), "y"));
}

TEST(GrammarTest, ErrorsNameTheLineColumnAndWhat) {
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\"\nx = \"b\"\n"), "line 2 column 3"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\"\nx = \"b\"\n"), "expected ::="));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"abc\n"), "unterminated string"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= [abc\n"), "unterminated character class"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"\\q\"\n"), "unknown escape"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"\\x4\"\n"), "hex digits"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= (\"a\"\n"), "expected ')'"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= * \"a\"\n"), "nothing to repeat"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\"{3,2}\n"), "below its minimum"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\"{5000}\n"), "repetitions"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= [z-a]\n"), "out of order"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= thing\n"), "'thing' is used but not defined"));
  EXPECT_TRUE(absl::StrContains(ParseError("x ::= \"a\"\n"), "no rule 'root'"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\"\nroot ::= \"b\"\n"), "defined twice"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"a\" ) \"b\"\n"), "expected a newline"));
  // Left recursion, direct, through another rule, and through a nullable
  // prefix (what the matcher would loop on).
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= root \"x\" | \"y\"\n"), "left-recursive"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= a\na ::= b \"x\"\nb ::= \"\" | root\n"),
                                "left-recursive"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= (\"\")* \"a\"\n"), "left-recursive"));
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= (\"a\"?)+\n"), "left-recursive"));
  // Right recursion and nesting are fine.
  EXPECT_NE(ParseOk("root ::= \"(\" root? \")\"\n"), nullptr);
  // Size: a repetition of a repetition multiplies what is written out
  // (groups do not: they are one rule, referenced).
  EXPECT_TRUE(absl::StrContains(ParseError("root ::= \"abcdefghij\"{2000}{2000}\n"), "elements"));
  EXPECT_NE(ParseOk("root ::= ((\"ab\"{2000}){2000}){2000}\n"), nullptr);
}

TEST(GrammarTest, DeepNestingAndLongOutputsStayWithinTheTableLimits) {
  auto g = ParseOk("root ::= \"[\" root? \"]\"\n");
  ASSERT_NE(g, nullptr);
  GrammarMatcher m(g);
  // Each depth is a distinct stack: more states than kMaxStates, so the
  // tables are rebuilt (Compact) on the way, and the match goes on.
  const size_t depth = GrammarMatcher::kMaxStates + 100;
  for (size_t i = 0; i < depth; ++i) ASSERT_TRUE(m.Advance("[")) << i;
  EXPECT_LE(m.state_count(), GrammarMatcher::kMaxStates + 1);
  EXPECT_FALSE(m.complete());
  for (size_t i = 0; i < depth; ++i) ASSERT_TRUE(m.Advance("]")) << i;
  EXPECT_TRUE(m.complete());
  EXPECT_FALSE(m.Advance("]"));
  EXPECT_TRUE(m.status().ok());
}

TEST(GrammarTest, AGrammarTooAmbiguousToFollowIsReported) {
  // After n "a"s each of 2^n ways to close the brackets is its own stack.
  auto g = ParseOk("root ::= x\nx ::= \"a\" x \"b\" | \"a\" x \"c\" | \"\"\n");
  ASSERT_NE(g, nullptr);
  GrammarMatcher m(g);
  bool refused = false;
  for (int i = 0; i < 20 && !refused; ++i) refused = !m.Advance("a");
  EXPECT_TRUE(refused);
  EXPECT_TRUE(absl::IsResourceExhausted(m.status())) << m.status();
}

TEST(GrammarTest, ToStringListsTheCompiledRules) {
  auto g = ParseOk("root ::= \"ab\" [^x] item*\nitem ::= [0-9]\n");
  ASSERT_NE(g, nullptr);
  const std::string text = g->ToString();
  EXPECT_TRUE(absl::StrContains(text, "root ::= [a] [b] [\\x00-wy-\\U0010FFFF] root_2")) << text;
  EXPECT_TRUE(absl::StrContains(text, "root_2 ::= item root_2 |")) << text;
  EXPECT_TRUE(absl::StrContains(text, "item ::= [0-9]")) << text;
}

}  // namespace
}  // namespace moeflow::sampling
