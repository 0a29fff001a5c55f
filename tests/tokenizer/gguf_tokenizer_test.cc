// BpeTokenizer loaded from the tiny-v3 GGUF fixture (a generated 2048-token
// byte-level BPE, pre "deepseek-llm"): metadata, special tokens, round trips
// on a mixed corpus and on random byte strings, invalid UTF-8 included.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {
namespace {

constexpr char kFixture[] = "tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf";

class GgufTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto file = GgufFile::Open(kFixture);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tok = BpeTokenizer::FromGguf(**file);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  static BpeTokenizer* tok_;
};
BpeTokenizer* GgufTokenizerTest::tok_ = nullptr;

TEST_F(GgufTokenizerTest, ReadsVocabularyAndSpecialTokensWhenFileIsValid) {
  EXPECT_EQ(tok_->vocab_size(), 2048);
  EXPECT_EQ(tok_->merge_count(), 1790);
  EXPECT_EQ(tok_->pre_tokenizer(), PreTokenizerKind::kDeepseekLlm);
  EXPECT_EQ(tok_->bos_id(), 2046);  // sequences.txt starts with BOS = 2046
  EXPECT_EQ(tok_->eos_id(), 2047);
  EXPECT_EQ(tok_->token_type(tok_->bos_id()), BpeTokenType::kControl);
  const std::string bos(tok_->TokenText(tok_->bos_id()));
  EXPECT_EQ(tok_->Encode(bos, false), std::vector<int32_t>{tok_->bos_id()});
  EXPECT_EQ(tok_->Encode("hi", true).front(), tok_->bos_id());
}

TEST_F(GgufTokenizerTest, RoundTripsMixedCorpus) {
  const std::vector<std::string> corpus = {
      "",
      "The quick brown fox jumps over the lazy dog.",
      "def f(x):\n    return x ** 2  # square\n\n",
      "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
      "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xef\xbc\x81",  // 你好，世界！
      "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf",  // こんにちは
      "\xec\x95\x88\xeb\x85\x95\xed\x95\x98\xec\x84\xb8\xec\x9a\x94",  // 안녕하세요
      "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 123",                  // مرحبا
      "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 "
      "\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5",  // family ZWJ sequence, flag
      "1234567890123 3.14159 1e-9 0xDEADBEEF",
      "  \t\t\n\n\r\n   trailing   ",
      "e\xcc\x81 caf\xc3\xa9 na\xc3\xafve",
      "<\xef\xbd\x9c"
      "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>inside text",
      std::string(3000, 'a'),
  };
  for (const std::string& s : corpus) {
    const std::vector<int32_t> ids = tok_->Encode(s, false);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok_->vocab_size()) << id;
    EXPECT_EQ(tok_->Decode(ids), s);
  }
}

TEST_F(GgufTokenizerTest, RoundTripsRandomBytesIncludingInvalidUtf8) {
  std::mt19937 rng(12345);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const std::vector<std::string> fragments = {
      "\xc3\xa9",
      "\xe4\xb8\xad",
      "\xf0\x9f\x98\x80",
      " ",
      "\n",
      "\t",
      "abc",
      "123",
      "!?",
      "\xed\xa0\x80",      // UTF-16 surrogate in UTF-8 (invalid)
      "\xc0\xaf",          // overlong '/' (invalid)
      "\xf4\x90\x80\x80",  // above U+10FFFF (invalid)
      "\xe4\xb8",          // truncated
      "\x80",
      "\xff",
      "\xfe",
  };
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const int parts = uniform(0, 40);
    for (int p = 0; p < parts; ++p) {
      if (uniform(0, 2) == 0) {
        s.push_back(static_cast<char>(uniform(0, 255)));
      } else {
        s += fragments[uniform(0, static_cast<int>(fragments.size()) - 1)];
      }
    }
    const std::vector<int32_t> ids = tok_->Encode(s, false);
    ASSERT_EQ(tok_->Decode(ids), s) << "iteration " << iter;
  }
}

TEST(GgufTokenizerErrorTest, ReturnsErrorNamingKeyWhenTokensAreMissing) {
  GgufWriter writer;
  writer.AddMetadata("tokenizer.ggml.model", GgufValue::String("gpt2"));
  writer.AddMetadata("tokenizer.ggml.pre", GgufValue::String("deepseek-llm"));
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/no_tokens.gguf";
  ASSERT_TRUE(writer.Begin(path).ok());
  ASSERT_TRUE(writer.Finish().ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = BpeTokenizer::FromGguf(**file);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("tokenizer.ggml.tokens"), absl::string_view::npos)
      << tok.status();
}

TEST(GgufTokenizerErrorTest, ReturnsUnimplementedWhenPreTokenizerIsUnknown) {
  GgufWriter writer;
  writer.AddMetadata("tokenizer.ggml.model", GgufValue::String("gpt2"));
  writer.AddMetadata("tokenizer.ggml.pre", GgufValue::String("qwen2"));
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/qwen2.gguf";
  ASSERT_TRUE(writer.Begin(path).ok());
  ASSERT_TRUE(writer.Finish().ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = BpeTokenizer::FromGguf(**file);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(tok.status().message().find("qwen2"), absl::string_view::npos) << tok.status();
}

}  // namespace
}  // namespace moeflow
