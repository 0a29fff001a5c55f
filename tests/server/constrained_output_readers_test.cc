// The request readers of constrained_output.h on the tiny-v3 tokenizer:
// response_format / format into a grammar (JSON mode and schemas, the
// schema's property order kept from the raw body, the cache), logit_bias
// into the sampler, and the precise errors of each.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "sampling/grammar_constraint.h"
#include "server/constrained_output.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {
namespace {

constexpr char kFixture[] = "tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf";

class ConstrainedOutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = GgufFile::Open(kFixture);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tok = BpeTokenizer::FromGguf(**file);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = *std::move(tok);
    cache_ = std::make_unique<GrammarCache>(tokenizer_.get());
  }
  // Whether the grammar in `options` accepts `text` whole (tokenized).
  bool Accepts(const sampling::SamplerOptions& options, const std::string& text) {
    sampling::GrammarConstraint c(options.grammar);
    for (int32_t t : tokenizer_->Encode(text, false)) {
      if (!c.Accept(t).ok()) return false;
    }
    return c.complete();
  }
  bool OpenAi(const std::string& raw, sampling::SamplerOptions* options, ApiError* error) {
    return ReadResponseFormat(*cache_, json::parse(raw), raw, options, error);
  }
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::unique_ptr<GrammarCache> cache_;
};

TEST_F(ConstrainedOutputTest, JsonModeIsAnyObjectAndIsCompiledOnce) {
  sampling::SamplerOptions a, b, c;
  ApiError error;
  ASSERT_TRUE(OpenAi(R"({"response_format": {"type": "json_object"}})", &a, &error));
  ASSERT_NE(a.grammar, nullptr);
  EXPECT_TRUE(Accepts(a, R"({"x": [1, "y"]})"));
  EXPECT_FALSE(Accepts(a, "[1]"));
  ASSERT_TRUE(ReadOllamaFormat(*cache_, json::parse(R"({"format": "json"})"),
                               R"({"format": "json"})", &b, &error));
  EXPECT_EQ(a.grammar, b.grammar);  // the same compiled grammar
  EXPECT_EQ(cache_->compiled(), 1);
  ASSERT_TRUE(OpenAi(R"({"response_format": {"type": "text"}})", &c, &error));
  EXPECT_EQ(c.grammar, nullptr);
}

TEST_F(ConstrainedOutputTest, ASchemaKeepsThePropertyOrderOfTheBody) {
  const std::string raw = R"({"response_format": {"type": "json_schema", "json_schema": {
      "name": "p", "schema": {"type": "object", "properties": {
      "zz": {"type": "integer"}, "aa": {"type": "boolean"}}, "required": ["zz", "aa"]}}}})";
  sampling::SamplerOptions options;
  ApiError error;
  ASSERT_TRUE(OpenAi(raw, &options, &error)) << error.message;
  EXPECT_TRUE(Accepts(options, R"({"zz": 3, "aa": true})"));
  EXPECT_FALSE(Accepts(options, R"({"aa": true, "zz": 3})"));
  EXPECT_FALSE(Accepts(options, R"({"zz": "3", "aa": true})"));
  // Ollama's schema the same way.
  const std::string ollama = R"({"format": {"type": "object", "properties": {
      "zz": {"type": "null"}, "aa": {"type": "null"}}, "required": ["zz", "aa"]}})";
  sampling::SamplerOptions o;
  ASSERT_TRUE(ReadOllamaFormat(*cache_, json::parse(ollama), ollama, &o, &error));
  EXPECT_TRUE(Accepts(o, R"({"zz": null, "aa": null})"));
  EXPECT_FALSE(Accepts(o, R"({"aa": null, "zz": null})"));
}

TEST_F(ConstrainedOutputTest, BadFormatsNameTheParameter) {
  struct Case {
    const char* body;
    const char* param;
    const char* message;
  } cases[] = {
      {R"({"response_format": "json"})", "response_format", "expected an object"},
      {R"({"response_format": {}})", "response_format.type", "Missing required parameter"},
      {R"({"response_format": {"type": 3}})", "response_format.type", "expected a string"},
      {R"({"response_format": {"type": "yaml"}})", "response_format.type", "'yaml' is not one"},
      {R"({"response_format": {"type": "json_schema", "json_schema": 1}})",
       "response_format.json_schema", "expected an object"},
      {R"({"response_format": {"type": "json_schema", "json_schema": {"name": "n",
          "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}})",
       "response_format.json_schema.schema", "Invalid schema for response_format 'n': #"},
      {R"({"response_format": {"type": "json_object", "schema": {"type": "wat"}}})",
       "response_format.schema", "unknown type"},
  };
  for (const Case& c : cases) {
    sampling::SamplerOptions options;
    ApiError error;
    EXPECT_FALSE(OpenAi(c.body, &options, &error)) << c.body;
    EXPECT_EQ(error.status, 400) << c.body;
    EXPECT_EQ(error.param, c.param) << c.body;
    EXPECT_NE(error.message.find(c.message), std::string::npos) << c.body << ": " << error.message;
    EXPECT_EQ(options.grammar, nullptr);
  }
  sampling::SamplerOptions options;
  ApiError error;
  EXPECT_FALSE(ReadOllamaFormat(*cache_, json::parse(R"({"format": 7})"), R"({"format": 7})",
                                &options, &error));
  EXPECT_NE(error.message.find("invalid format"), std::string::npos);
}

TEST_F(ConstrainedOutputTest, LogitBiasTakesTokenIdsAndBoundedNumbers) {
  sampling::SamplerOptions options;
  ApiError error;
  ASSERT_TRUE(ReadLogitBias(json::parse(R"({"logit_bias": {"5": -100, "2047": 2.5}})"),
                            tokenizer_->vocab_size(), &options, &error));
  ASSERT_EQ(options.logit_bias.size(), 2u);
  EXPECT_EQ(options.logit_bias[0], std::make_pair(int32_t{2047}, 2.5f));  // json's key order
  EXPECT_EQ(options.logit_bias[1], std::make_pair(int32_t{5}, -100.0f));
  for (const char* bad : {R"({"logit_bias": {"2048": 1}})", R"({"logit_bias": {"-1": 1}})",
                          R"({"logit_bias": {"1x": 1}})", R"({"logit_bias": {"": 1}})",
                          R"({"logit_bias": {"+3": 1}})", R"({"logit_bias": {"3": 100.5}})",
                          R"({"logit_bias": {"3": null}})", R"({"logit_bias": 3})"}) {
    sampling::SamplerOptions o;
    ApiError e;
    EXPECT_FALSE(ReadLogitBias(json::parse(bad), tokenizer_->vocab_size(), &o, &e)) << bad;
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.param.rfind("logit_bias", 0), 0u) << bad << ": " << e.param;
  }
}

}  // namespace
}  // namespace moeflow::server
