#include "model/tokenizer_data.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace moeflow {
namespace {

std::string TmpDir(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
  std::system(("mkdir -p '" + path + "'").c_str());
  return path;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(TokenizerDataTest, ByteAlphabetIsGpt2s) {
  const auto& alphabet = ByteLevelAlphabet();
  ASSERT_EQ(alphabet.size(), 256u);
  EXPECT_EQ(alphabet['a'], "a");
  EXPECT_EQ(alphabet[' '], "\xC4\xA0");   // Ġ, U+0120
  EXPECT_EQ(alphabet['\n'], "\xC4\x8A");  // Ċ, U+010A
  EXPECT_EQ(alphabet[0], "\xC4\x80");     // U+0100
  EXPECT_EQ(alphabet[0xAD], "\xC5\x83");  // soft hyphen → U+0143
  absl::flat_hash_set<std::string> distinct(alphabet.begin(), alphabet.end());
  EXPECT_EQ(distinct.size(), 256u);
}

TEST(TokenizerDataTest, GeneratedVocabularyIsConsistentBpe) {
  for (int64_t vocab : {int64_t{2048}, int64_t{20000}}) {
    const TokenizerData data = GenerateByteLevelBpe(vocab);
    ASSERT_EQ(data.vocab_size(), vocab);
    ASSERT_EQ(data.token_types.size(), data.tokens.size());
    EXPECT_EQ(data.bos_id, vocab - 2);
    EXPECT_EQ(data.eos_id, vocab - 1);
    EXPECT_EQ(data.token_types[vocab - 1], TokenType::kControl);
    EXPECT_EQ(data.pre, "deepseek-llm");
    EXPECT_EQ(static_cast<int64_t>(data.merges.size()), vocab - 258);
    absl::flat_hash_set<std::string> tokens(data.tokens.begin(), data.tokens.end());
    EXPECT_EQ(static_cast<int64_t>(tokens.size()), vocab) << "duplicate token";
    // Every merge joins two tokens into a third.
    for (const std::string& merge : data.merges) {
      const size_t space = merge.find(' ');
      ASSERT_NE(space, std::string::npos) << merge;
      const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
      EXPECT_TRUE(tokens.contains(left) && tokens.contains(right) && tokens.contains(left + right))
          << merge;
    }
  }
  // Deterministic.
  EXPECT_EQ(GenerateByteLevelBpe(3000).merges, GenerateByteLevelBpe(3000).merges);
}

TEST(TokenizerDataTest, LoadsHfTokenizerJsonWithPairMergesAndConfig) {
  const std::string dir = TmpDir("hf_pairs");
  WriteFile(dir + "/tokenizer.json", R"({
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 4},
              "merges": [["a", "b"]]},
    "added_tokens": [
      {"id": 5, "content": "<s>", "special": true},
      {"id": 6, "content": "</s>", "special": true},
      {"id": 7, "content": "<tool>", "special": false}
    ]})");
  WriteFile(dir + "/tokenizer_config.json",
            R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true,
                "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"})");
  auto data = LoadHfTokenizerJson(dir + "/tokenizer.json", /*min_vocab_size=*/10);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->vocab_size(), 10);
  EXPECT_EQ(data->tokens[2], "ab");
  EXPECT_EQ(data->tokens[3], "[PAD3]");
  EXPECT_EQ(data->token_types[3], TokenType::kUnused);
  EXPECT_EQ(data->token_types[0], TokenType::kNormal);
  EXPECT_EQ(data->token_types[5], TokenType::kControl);
  EXPECT_EQ(data->token_types[7], TokenType::kUserDefined);
  EXPECT_EQ(data->tokens[9], "[PAD9]");
  ASSERT_EQ(data->merges.size(), 1u);
  EXPECT_EQ(data->merges[0], "a b");
  EXPECT_EQ(data->bos_id, 5);
  EXPECT_EQ(data->eos_id, 6);
  EXPECT_EQ(data->pre, "deepseek-v3");
  EXPECT_EQ(data->chat_template,
            "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}");
}

TEST(TokenizerDataTest, FallsBackToDeepseekMarkersAndStringMerges) {
  const std::string dir = TmpDir("hf_strings");
  WriteFile(dir + "/tokenizer.json",
            "{\"model\": {\"vocab\": {\"x\": 0, \"y\": 1, \"xy\": 2}, \"merges\": [\"x y\"]},"
            " \"added_tokens\": ["
            "{\"id\": 3, \"content\": \"<\xEF\xBD\x9C"
            "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>\", \"special\": true},"
            "{\"id\": 4, \"content\": \"<\xEF\xBD\x9C"
            "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>\", \"special\": true}]}");
  auto data = LoadHfTokenizerJson(dir + "/tokenizer.json");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->vocab_size(), 5);
  EXPECT_EQ(data->merges[0], "x y");
  EXPECT_EQ(data->bos_id, 3);
  EXPECT_EQ(data->eos_id, 4);
}

TEST(TokenizerDataTest, BadJsonNamesFileAndField) {
  const std::string dir = TmpDir("hf_bad");
  WriteFile(dir + "/tokenizer.json", R"({"model": {"vocab": {"a": 0}, "merges": [3]}})");
  auto data = LoadHfTokenizerJson(dir + "/tokenizer.json");
  ASSERT_FALSE(data.ok());
  EXPECT_NE(data.status().message().find("tokenizer.json"), absl::string_view::npos);
  EXPECT_NE(data.status().message().find("model.merges[0]"), absl::string_view::npos);
  WriteFile(dir + "/broken.json", "{");
  EXPECT_EQ(LoadHfTokenizerJson(dir + "/broken.json").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadHfTokenizerJson(dir + "/missing.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moeflow
