// The DeepSeek pre-tokenizer scanners against hand-checked splits (the regex
// semantics are checked at scale by peer_compare_test).
#include "tokenizer/pre_tokenizer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizer/unicode_tables.h"

namespace moeflow {
namespace {

std::vector<std::string> SplitV3(absl::string_view text) {
  std::vector<absl::string_view> pieces;
  PreTokenizer(PreTokenizerKind::kDeepseekV3).Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

std::vector<std::string> SplitLlm(absl::string_view text) {
  std::vector<absl::string_view> pieces;
  PreTokenizer(PreTokenizerKind::kDeepseekLlm).Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

using V = std::vector<std::string>;

TEST(PreTokenizerTest, SplitsDigitsInGroupsOfThreeWhenV3) {
  EXPECT_EQ(SplitV3("1234567"), (V{"123", "456", "7"}));
  EXPECT_EQ(SplitV3("x12"), (V{"x", "12"}));
}

TEST(PreTokenizerTest, KeepsLeadingSpaceWithWordWhenV3) {
  EXPECT_EQ(SplitV3("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(SplitV3("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(SplitV3("a   "), (V{"a", "   "}));
}

TEST(PreTokenizerTest, IsolatesCjkRunsWhenV3) {
  EXPECT_EQ(SplitV3("\xe4\xb8\xad\xe6\x96\x87"
                    "abc"),
            (V{"\xe4\xb8\xad\xe6\x96\x87", "abc"}));
}

TEST(PreTokenizerTest, AttachesAsciiPunctuationToFollowingLettersWhenV3) {
  EXPECT_EQ(SplitV3("don't .NET"), (V{"don", "'t", " .", "NET"}));
  EXPECT_EQ(SplitV3("a+=b;\n"), (V{"a", "+=", "b", ";\n"}));
}

TEST(PreTokenizerTest, SplitsNewlineRunsWhenV3) {
  EXPECT_EQ(SplitV3("a\n\n  b"), (V{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(SplitV3("a \n\tb"), (V{"a", " \n", "\tb"}));
}

TEST(PreTokenizerTest, KeepsInvalidBytesInPiecesWhenUtf8IsBroken) {
  const std::string text =
      "ab\xff\xfe"
      "cd \xe4\xb8";
  V pieces = SplitV3(text);
  std::string joined;
  for (const auto& p : pieces) joined += p;
  EXPECT_EQ(joined, text);
  // Like a lone surrogate in JavaScript: no class, so it may prefix a word.
  EXPECT_EQ(pieces, (V{"ab", "\xff",
                       "\xfe"
                       "cd",
                       " ", "\xe4\xb8"}));
}

TEST(PreTokenizerTest, SplitsNewlinesAndLettersWhenDeepseekLlm) {
  EXPECT_EQ(SplitLlm("Hello, world!\n123 ok  "),
            (V{"Hello", ",", " world", "!", "\n", "123", " ok", "  "}));
  EXPECT_EQ(SplitLlm("\xec\x95\x88\xeb\x85\x95 1"), (V{"\xec\x95\x88\xeb\x85\x95", " ", "1"}));
}

TEST(PreTokenizerTest, RecognisesKnownRegexSequences) {
  EXPECT_EQ(*PreTokenizerKindFromSplitRegexes(SplitRegexes(PreTokenizerKind::kDeepseekV3)),
            PreTokenizerKind::kDeepseekV3);
  EXPECT_EQ(*PreTokenizerKindFromSplitRegexes(SplitRegexes(PreTokenizerKind::kDeepseekLlm)),
            PreTokenizerKind::kDeepseekLlm);
  auto unknown = PreTokenizerKindFromSplitRegexes({"\\p{N}{1,3}", "x+"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(unknown.status().message().find("/x+/"), absl::string_view::npos) << unknown.status();
  EXPECT_EQ(PreTokenizerKindFromGgufName("llama3").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(PreTokenizerTest, ClassifiesCodePointsLikeIcu) {
  EXPECT_EQ(CodePointFlags('a'), kCpLetter | kCpDeepseekLlmLetter);
  EXPECT_EQ(CodePointFlags('7'), kCpNumber);
  EXPECT_EQ(CodePointFlags(' '), kCpWhitespace);
  EXPECT_EQ(CodePointFlags(0x0301), kCpMark);        // combining acute
  EXPECT_EQ(CodePointFlags(0x1F600), kCpSymbol);     // 😀
  EXPECT_EQ(CodePointFlags(0xFEFF), kCpWhitespace);  // JavaScript \s has BOM
  EXPECT_EQ(CodePointFlags(0x0085), 0);              // ... but not NEL
  EXPECT_EQ(CodePointFlags(0x4E2D), kCpLetter);
  EXPECT_EQ(CodePointFlags(0x110000 + 0xFF), 0);  // an invalid byte
}

}  // namespace
}  // namespace moeflow
