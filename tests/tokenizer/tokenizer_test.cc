// BpeTokenizer on a small hand-made byte-level vocabulary.
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {
namespace {

std::string Alphabet(absl::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) {
    const uint32_t cp = ByteToAlphabetCodePoint(b);
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

// Ids 0..255: the byte tokens in byte order; then merged tokens; then added.
struct SmallVocab {
  BpeVocabulary vocab;
  int32_t Add(const std::string& text, BpeTokenType type = BpeTokenType::kNormal) {
    vocab.tokens.push_back(text);
    vocab.token_types.push_back(type);
    return static_cast<int32_t>(vocab.tokens.size() - 1);
  }
  // Adds the merge (left, right) and its result token; spellings are raw bytes.
  int32_t Merge(const std::string& left, const std::string& right) {
    vocab.merges.emplace_back(Alphabet(left), Alphabet(right));
    return Add(Alphabet(left + right));
  }
};

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int b = 0; b < 256; ++b) v_.Add(Alphabet(std::string(1, static_cast<char>(b))));
    he_ = v_.Merge("h", "e");
    ll_ = v_.Merge("l", "l");
    hell_ = v_.Merge("he", "ll");
    hello_ = v_.Merge("hell", "o");
    aa_ = v_.Merge("a", "a");
    bc_ = v_.Merge("b", "c");
    ab_ = v_.Merge("a", "b");
    space_w_ = v_.Merge(" ", "w");
    bos_ = v_.Add("<s>", BpeTokenType::kControl);
    eos_ = v_.Add("</s>", BpeTokenType::kControl);
    tool_ = v_.Add("<tool>", BpeTokenType::kUserDefined);
    tool_call_ = v_.Add("<tool>call", BpeTokenType::kUserDefined);
    unused_ = v_.Add("[PAD]", BpeTokenType::kUnused);
    v_.vocab.bos_id = bos_;
    v_.vocab.eos_id = eos_;
    v_.vocab.pre = PreTokenizerKind::kDeepseekV3;
    auto t = BpeTokenizer::Create(v_.vocab);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }

  std::vector<int32_t> Bytes(absl::string_view s) {
    std::vector<int32_t> ids;
    for (unsigned char c : s) ids.push_back(c);
    return ids;
  }

  SmallVocab v_;
  int32_t he_, ll_, hell_, hello_, aa_, bc_, ab_, space_w_;
  int32_t bos_, eos_, tool_, tool_call_, unused_;
  std::unique_ptr<BpeTokenizer> tok_;
};

TEST_F(TokenizerTest, MergesChainToOneTokenWhenAllPairsHaveRanks) {
  EXPECT_EQ(tok_->Encode("hello", false), std::vector<int32_t>{hello_});
}

TEST_F(TokenizerTest, MergesLowestRankFirstWhenPairsOverlap) {
  // "b c" (rank 5) beats "a b" (rank 6): abc → a + bc.
  EXPECT_EQ(tok_->Encode("abc", false), (std::vector<int32_t>{'a', bc_}));
}

TEST_F(TokenizerTest, MergesLeftmostFirstWhenRanksTie) {
  EXPECT_EQ(tok_->Encode("aaa", false), (std::vector<int32_t>{aa_, 'a'}));
  EXPECT_EQ(tok_->Encode("aaaa", false), (std::vector<int32_t>{aa_, aa_}));
}

TEST_F(TokenizerTest, FallsBackToByteTokensWhenNoMergeApplies) {
  const std::string text = "\xc3\xa9z";  // "éz": two bytes of é, then z
  EXPECT_EQ(tok_->Encode(text, false), (std::vector<int32_t>{0xC3, 0xA9, 'z'}));
  EXPECT_EQ(tok_->Decode(tok_->Encode(text, false)), text);
}

TEST_F(TokenizerTest, MergesAcrossPreTokenizerPiecesNever) {
  // " w" is a merge, but "hello world" splits as "hello" | " world".
  EXPECT_EQ(tok_->Encode("hello world", false),
            (std::vector<int32_t>{hello_, space_w_, 'o', 'r', 'l', 'd'}));
}

TEST_F(TokenizerTest, ReturnsNothingWhenTextIsEmpty) {
  EXPECT_TRUE(tok_->Encode("", false).empty());
  EXPECT_EQ(tok_->Encode("", true), std::vector<int32_t>{bos_});
  EXPECT_EQ(tok_->Decode({}), "");
}

TEST_F(TokenizerTest, PrependsBosWhenAsked) {
  EXPECT_EQ(tok_->Encode("he", true), (std::vector<int32_t>{bos_, he_}));
}

TEST_F(TokenizerTest, MatchesSpecialTokensBeforePreTokenization) {
  EXPECT_EQ(tok_->Encode("he</s>he", false), (std::vector<int32_t>{he_, eos_, he_}));
  EXPECT_EQ(tok_->Encode("<s><s>", false), (std::vector<int32_t>{bos_, bos_}));
  EXPECT_EQ(tok_->Decode(tok_->Encode("x</s>y", false)), "x</s>y");
}

TEST_F(TokenizerTest, PrefersLongestAddedTokenWhenTwoMatch) {
  EXPECT_EQ(tok_->Encode("<tool>call", false), std::vector<int32_t>{tool_call_});
  EXPECT_EQ(tok_->Encode("<tool>cal", false), (std::vector<int32_t>{tool_, 'c', 'a', 'l'}));
}

TEST_F(TokenizerTest, LeavesControlTokensAsTextWhenParseSpecialIsOff) {
  const std::vector<int32_t> ids = tok_->Encode("</s><tool>", false, /*parse_special=*/false);
  EXPECT_EQ(ids.back(), tool_);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), eos_), 0);
  EXPECT_EQ(tok_->Decode(ids), "</s><tool>");
}

TEST_F(TokenizerTest, DecodesInvalidUtf8BytesUnchanged) {
  EXPECT_EQ(tok_->Decode({0xFF, 0xC3, 'a', 0x80}),
            "\xff\xc3"
            "a\x80");
  const std::string broken = "he\xe4\xb8llo\xff\xfe\xed\xa0\x80 \xf0\x9f\x98";
  EXPECT_EQ(tok_->Decode(tok_->Encode(broken, false)), broken);
}

TEST_F(TokenizerTest, DecodesUnusedAndOutOfRangeIdsToNothing) {
  EXPECT_EQ(tok_->Decode({he_, unused_, -1, 1 << 30, he_}), "hehe");
}

TEST_F(TokenizerTest, LooksUpTokensBothWays) {
  EXPECT_EQ(tok_->TokenText(space_w_), "\xc4\xa0w");  // "Ġw"
  EXPECT_EQ(tok_->TokenBytes(space_w_), " w");
  EXPECT_EQ(tok_->TokenId("\xc4\xa0w"), space_w_);
  EXPECT_EQ(tok_->TokenId("</s>"), eos_);
  EXPECT_FALSE(tok_->TokenId("nope").has_value());
  EXPECT_EQ(tok_->vocab_size(), static_cast<int64_t>(v_.vocab.tokens.size()));
  EXPECT_EQ(tok_->bos_id(), bos_);
  EXPECT_EQ(tok_->eos_id(), eos_);
}

TEST_F(TokenizerTest, GivesSameIdsWhenEncodingFromManyThreads) {
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back("hello world aaa" + std::to_string(i) + " abc</s>he \xff" +
                    std::string(i % 70, 'l'));
  }
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok_->Encode(t, false));
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          failures[k] += tok_->Encode(texts[(i + k * 7) % texts.size()], false) !=
                         expected[(i + k * 7) % texts.size()];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

TEST(TokenizerCreateTest, RejectsMergeOfUnknownTokenWithItsText) {
  SmallVocab v;
  for (int b = 0; b < 256; ++b) v.Add(Alphabet(std::string(1, static_cast<char>(b))));
  v.vocab.merges.emplace_back("x", "y");  // "xy" is not a token
  auto t = BpeTokenizer::Create(v.vocab);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("merge #0"), absl::string_view::npos) << t.status();
  EXPECT_NE(t.status().message().find("\"xy\""), absl::string_view::npos) << t.status();
}

TEST(TokenizerCreateTest, RejectsVocabularyWithoutAllByteTokens) {
  SmallVocab v;
  for (int b = 0; b < 255; ++b) v.Add(Alphabet(std::string(1, static_cast<char>(b))));
  auto t = BpeTokenizer::Create(v.vocab);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("0xff"), absl::string_view::npos) << t.status();
}

TEST(TokenizerHfJsonTest, ReturnsUnimplementedWithPatternWhenRegexIsUnknown) {
  const char* json = R"({
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{Han}+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "model": {"type": "BPE", "vocab": {}, "merges": []}})";
  auto t = BpeTokenizer::FromHfJson(json, "", "test.json");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(t.status().message().find("\\p{Han}+"), absl::string_view::npos) << t.status();
}

TEST(TokenizerHfJsonTest, ReadsMergesInBothSpellings) {
  std::string vocab = "{";
  for (int b = 0; b < 256; ++b) {
    const std::string s = Alphabet(std::string(1, static_cast<char>(b)));
    std::string escaped;
    for (char c : s) {
      if (c == '"' || c == '\\') escaped.push_back('\\');
      escaped.push_back(c);
    }
    vocab += "\"" + escaped + "\": " + std::to_string(b) + ", ";
  }
  vocab += "\"ab\": 256, \"abc\": 257}";
  const std::string json = std::string(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated"},
      {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated"},
      {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated"},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
    "added_tokens": [{"id": 258, "content": "<eos>", "special": true}],
    "model": {"type": "BPE", "vocab": )") +
                           vocab + R"(, "merges": ["a b", ["ab", "c"]]}})";
  auto t = BpeTokenizer::FromHfJson(json, "", "test.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("abc<eos>", false), (std::vector<int32_t>{257, 258}));
  EXPECT_EQ((*t)->vocab_size(), 259);
}

}  // namespace
}  // namespace moeflow
