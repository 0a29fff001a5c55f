// The tokenizer -> vocabulary adapter (tokenizer_vocabulary.h) on the
// tiny-v3 fixture's tokenizer (a 2048-token byte-level BPE with BOS/EOS as
// control tokens): every token's bytes, which ids a grammar may produce, EOS
// as the end token, and a JSON schema's mask over that real vocabulary
// checked token by token along the tokenizer's own encoding of a document.
#include "sampling/tokenizer_vocabulary.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "nlohmann/json.hpp"
#include "sampling/grammar.h"
#include "sampling/grammar_constraint.h"
#include "sampling/json_schema_grammar.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::sampling {
namespace {

constexpr char kFixture[] = "tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf";

std::unique_ptr<BpeTokenizer> LoadTokenizer() {
  auto file = GgufFile::Open(kFixture);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  auto tok = BpeTokenizer::FromGguf(**file);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(TokenizerVocabularyTest, HoldsEveryTokensBytesAndLeavesControlTokensOut) {
  std::unique_ptr<BpeTokenizer> tok = LoadTokenizer();
  ASSERT_NE(tok, nullptr);
  std::shared_ptr<const TokenVocabulary> v = VocabularyOf(*tok);
  ASSERT_EQ(v->size(), tok->vocab_size());
  int64_t in_trie = 0;
  for (int32_t id = 0; id < v->size(); ++id) {
    EXPECT_EQ(v->bytes(id), tok->TokenBytes(id)) << id;
    const BpeTokenType type = tok->token_type(id);
    const bool producible = (type == BpeTokenType::kNormal || type == BpeTokenType::kByte) &&
                            !tok->TokenBytes(id).empty() && id != tok->eos_id();
    EXPECT_EQ(v->in_trie(id), producible) << id;
    in_trie += producible;
  }
  ASSERT_GE(tok->bos_id(), 0);
  EXPECT_FALSE(v->in_trie(tok->bos_id()));
  EXPECT_FALSE(v->in_trie(tok->eos_id()));
  EXPECT_EQ(v->end_tokens(), std::vector<int32_t>{tok->eos_id()});
  EXPECT_TRUE(v->is_end(tok->eos_id()));
  EXPECT_EQ(static_cast<int64_t>(v->trie_tokens().size()), in_trie);
  EXPECT_GT(in_trie, 2000);  // all but the control tokens
}

TEST(TokenizerVocabularyTest, ASchemaMaskOnTheRealVocabularyAgreesWithTheTokenCheck) {
  std::unique_ptr<BpeTokenizer> tok = LoadTokenizer();
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<std::string> gbnf = JsonSchemaToGbnf(nlohmann::ordered_json::parse(
      R"({"type": "object", "properties": {"name": {"type": "string"},
          "n": {"type": "integer"}}, "required": ["name", "n"]})"));
  ASSERT_TRUE(gbnf.ok()) << gbnf.status();
  absl::StatusOr<Grammar> g = Grammar::Parse(*gbnf);
  ASSERT_TRUE(g.ok()) << g.status();
  auto tg = std::make_shared<TokenGrammar>();
  tg->grammar = std::make_shared<const Grammar>(*std::move(g));
  tg->vocabulary = VocabularyOf(*tok);
  // The document as this tokenizer splits it; every prefix's mask must
  // allow the next token and agree with Allows() on every id.
  const std::string doc = R"({"name": "Ada \u00e9 Lovelace", "n": -42})";
  const std::vector<int32_t> ids = tok->Encode(doc, /*add_bos=*/false);
  ASSERT_GT(ids.size(), 5u);
  GrammarConstraint c(tg);
  std::vector<float> logits(static_cast<size_t>(tok->vocab_size()), 0.5f);
  // At the start only tokens that begin the object.
  c.Mask(absl::MakeSpan(logits));
  for (int32_t t = 0; t < tok->vocab_size(); ++t) {
    if (std::isfinite(logits[t])) {
      EXPECT_EQ(tok->TokenBytes(t).substr(0, 1), "{") << "token " << t;
    }
  }
  for (int32_t next : ids) {
    std::fill(logits.begin(), logits.end(), 0.5f);
    const int64_t allowed = c.Mask(absl::MakeSpan(logits));
    EXPECT_GT(allowed, 0);
    ASSERT_TRUE(std::isfinite(logits[next])) << "token " << next << " masked out";
    for (int32_t t = 0; t < tok->vocab_size(); ++t) {
      ASSERT_EQ(std::isfinite(logits[t]), c.Allows(t)) << "token " << t;
    }
    EXPECT_FALSE(std::isfinite(logits[tok->eos_id()]));  // not complete yet
    ASSERT_TRUE(c.Accept(next).ok());
  }
  EXPECT_TRUE(c.complete());
  EXPECT_TRUE(c.Allows(tok->eos_id()));
  EXPECT_FALSE(c.Allows(tok->bos_id()));
  // Another key, or text after the object: refused.
  EXPECT_FALSE(c.Allows(tok->Encode(",", false)[0]));
  EXPECT_TRUE(c.Accept(tok->eos_id()).ok());
  EXPECT_TRUE(c.ended());
}

}  // namespace
}  // namespace moeflow::sampling
