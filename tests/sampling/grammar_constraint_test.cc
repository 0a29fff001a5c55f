// Constrained decoding over a token vocabulary: the byte trie
// (token_vocabulary.h), the logits mask against a token-by-token check
// (grammar_constraint.h), end tokens, and the Sampler with a grammar
// (sampler.h) producing only what the grammar accepts.
#include "sampling/grammar_constraint.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sampling/grammar.h"
#include "sampling/json_schema_grammar.h"
#include "sampling/sampler.h"

namespace moeflow::sampling {
namespace {

constexpr int32_t kEos = 0;

// A small vocabulary with the shapes a byte-level BPE has: single bytes,
// words, tokens that span JSON punctuation, multi-byte characters whole and
// split, a special token, an empty one, duplicates.
std::shared_ptr<const TokenVocabulary> TestVocabulary() {
  std::vector<std::string> bytes = {
      "<eos>",    "{",
      "}",        "\"",
      ":",        ",",
      " ",        "\n",
      "[",        "]",
      "a",        "b",
      "ab",       "abc",
      "\":",      "\",",
      "\"}",      "{\"",
      "\": \"",   "1",
      "12",       "-",
      ".",        "e",
      "true",     "false",
      "null",     "tr",
      "ue",       "\\",
      "n",        "\\n",
      "\xc3",     "\xa9",
      "\xc3\xa9", "\xe4\xb8",
      "\xad",     "\xe4\xb8\xad",
      "x\xc3",    "<special>",
      "",         "ab",
      "  ",       "\t",
      "\x01",     "\"a\"",
      "}}",       "0",
      "9",        "E",
      "+",        "u",
      "00e9",     "name",
      "age",
  };
  // Every printable ASCII character is a token too, as in a byte-level BPE
  // (else a prefix the grammar allows could have no token to go on with).
  for (char c = ' '; c < 0x7F; ++c) bytes.emplace_back(1, c);
  std::vector<bool> usable(bytes.size(), true);
  usable[39] = false;  // <special>
  return TokenVocabulary::Create(bytes, usable, {kEos});
}

std::shared_ptr<const TokenGrammar> MakeGrammar(const std::string& gbnf,
                                                std::shared_ptr<const TokenVocabulary> vocab) {
  absl::StatusOr<Grammar> g = Grammar::Parse(gbnf);
  EXPECT_TRUE(g.ok()) << g.status();
  auto tg = std::make_shared<TokenGrammar>();
  tg->grammar = std::make_shared<const Grammar>(*std::move(g));
  tg->vocabulary = std::move(vocab);
  return tg;
}

std::string SchemaGbnf(const std::string& schema) {
  absl::StatusOr<std::string> gbnf = JsonSchemaToGbnf(nlohmann::ordered_json::parse(schema));
  EXPECT_TRUE(gbnf.ok()) << gbnf.status();
  return gbnf.ok() ? *gbnf : "";
}

TEST(TokenVocabularyTest, TheTrieHoldsEveryUsableTokenOnceInPreorder) {
  auto v = TestVocabulary();
  const auto trie = v->trie();
  const auto tokens = v->trie_tokens();
  std::vector<int> found(static_cast<size_t>(v->size()), 0);
  std::vector<std::string> path(static_cast<size_t>(v->max_depth()) + 1);
  for (size_t i = 1; i < trie.size(); ++i) {
    const auto& node = trie[i];
    ASSERT_GE(node.depth, 1);
    ASSERT_GT(node.next, i);
    ASSERT_LE(node.next, trie.size());
    path[node.depth] = path[node.depth - 1] + static_cast<char>(node.byte);
    for (uint32_t k = node.tokens_begin; k < node.tokens_end; ++k) {
      EXPECT_EQ(v->bytes(tokens[k]), path[node.depth]);
      found[static_cast<size_t>(tokens[k])]++;
    }
    // The subtree holds exactly the nodes deeper than this one until next.
    for (size_t j = i + 1; j < node.next; ++j) EXPECT_GT(trie[j].depth, node.depth);
    if (node.next < trie.size()) EXPECT_LE(trie[node.next].depth, node.depth);
  }
  for (int32_t t = 0; t < v->size(); ++t) {
    const bool expected = t != kEos && t != 39 && !v->bytes(t).empty();
    EXPECT_EQ(found[t], expected ? 1 : 0) << t;
    EXPECT_EQ(v->in_trie(t), expected) << t;
  }
  EXPECT_TRUE(v->is_end(kEos));
}

// Mask() must allow exactly the tokens Allows() allows, in every state a
// random walk reaches.
void CheckMaskAgainstAllows(const std::string& gbnf, uint64_t seed) {
  auto vocab = TestVocabulary();
  auto tg = MakeGrammar(gbnf, vocab);
  std::mt19937_64 rng(seed);
  int64_t masks = 0, walks = 0;
  for (int walk = 0; walk < 20; ++walk) {
    GrammarConstraint c(tg);
    for (int step = 0; step < 60; ++step) {
      std::vector<float> logits(static_cast<size_t>(vocab->size()) + 3, 1.0f);  // 3 past the vocab
      const int64_t allowed = c.Mask(absl::MakeSpan(logits));
      std::vector<int32_t> ok;
      for (int32_t t = 0; t < static_cast<int32_t>(logits.size()); ++t) {
        const bool masked_in = std::isfinite(logits[t]);
        ASSERT_EQ(masked_in, c.Allows(t)) << "token " << t << " step " << step << " walk " << walk;
        if (masked_in) ok.push_back(t);
      }
      ASSERT_EQ(allowed, static_cast<int64_t>(ok.size()));
      if (ok.empty()) break;
      const int32_t pick = ok[rng() % ok.size()];
      ASSERT_TRUE(c.Accept(pick).ok());
      if (pick == kEos) {
        EXPECT_TRUE(c.ended());
        std::vector<float> after(logits.size(), 1.0f);
        EXPECT_EQ(c.Mask(absl::MakeSpan(after)), 0);  // nothing after the end
        break;
      }
    }
    EXPECT_TRUE(c.status().ok()) << c.status();
    masks += c.masks();
    walks += c.walks();
  }
  // States come back (inside strings, between values): cached masks served
  // some of the steps, and were right (checked above).
  EXPECT_LT(walks, masks);
}

TEST(GrammarConstraintTest, MaskEqualsTheTokenByTokenCheckForJsonMode) {
  CheckMaskAgainstAllows(SchemaGbnf(R"({"type": "object"})"), 1);
}

TEST(GrammarConstraintTest, MaskEqualsTheTokenByTokenCheckForASchema) {
  CheckMaskAgainstAllows(SchemaGbnf(R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 4}, "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["name"]})"),
                         2);
}

TEST(GrammarConstraintTest, MaskEqualsTheTokenByTokenCheckAcrossSplitCharacters) {
  // Only é and 中 between quotes: tokens ending inside them carry the
  // partial character on.
  CheckMaskAgainstAllows("root ::= \"\\\"\" (\"\xc3\xa9\" | \"\xe4\xb8\xad\" | \"a\")* \"\\\"\"\n",
                         3);
}

TEST(GrammarConstraintTest, EndTokensOnlyWhereTheGrammarMayEnd) {
  auto vocab = TestVocabulary();
  GrammarConstraint c(MakeGrammar("root ::= \"ab\" \"c\"?\n", vocab));
  EXPECT_FALSE(c.Allows(kEos));
  EXPECT_TRUE(c.Allows(12));        // "ab"
  EXPECT_TRUE(c.Allows(13));        // "abc"
  EXPECT_FALSE(c.Allows(39));       // a special token never
  EXPECT_FALSE(c.Allows(40));       // an empty one never
  EXPECT_FALSE(c.Accept(11).ok());  // "b"
  ASSERT_TRUE(c.Accept(10).ok());   // "a"
  ASSERT_TRUE(c.Accept(11).ok());   // "b": complete, "c" may still come
  EXPECT_TRUE(c.complete());
  EXPECT_TRUE(c.Allows(kEos));
  // "c" or the end.
  std::vector<float> logits(static_cast<size_t>(vocab->size()), 0.0f);
  EXPECT_EQ(c.Mask(absl::MakeSpan(logits)), 2);
  EXPECT_TRUE(std::isfinite(logits[kEos]));
  ASSERT_TRUE(c.Accept(kEos).ok());
  EXPECT_TRUE(c.ended());
  EXPECT_FALSE(c.Allows(kEos));
}

TEST(GrammarConstraintTest, SamplerOutputFollowsTheGrammarAndStopsAtItsEnd) {
  auto vocab = TestVocabulary();
  const std::string schema = R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 3}, "age": {"type": "integer", "maximum": 99},
      "ok": {"type": "boolean"}}, "required": ["name", "age", "ok"]})";
  auto tg = MakeGrammar(SchemaGbnf(schema), vocab);
  std::mt19937_64 rng(7);
  for (int run = 0; run < 30; ++run) {
    SamplerOptions options;
    options.temperature = run % 3 == 0 ? 0.0f : 1.0f;
    options.top_k = run % 3 == 2 ? 5 : 0;
    options.seed = static_cast<uint64_t>(run);
    options.grammar = tg;
    absl::StatusOr<Sampler> sampler = Sampler::Create(options);
    ASSERT_TRUE(sampler.ok()) << sampler.status();
    std::string text;
    bool ended = false;
    for (int step = 0; step < 400 && !ended; ++step) {
      std::vector<float> logits(static_cast<size_t>(vocab->size()));
      std::normal_distribution<float> noise(0.0f, 3.0f);
      for (float& l : logits) l = noise(rng);
      absl::StatusOr<int32_t> token = sampler->Sample(logits);
      ASSERT_TRUE(token.ok()) << token.status() << " after " << text;
      if (*token == kEos) {
        ended = true;
      } else {
        text += std::string(vocab->bytes(*token));
      }
    }
    ASSERT_TRUE(ended) << "no end after 400 tokens: " << text;
    const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << text;
    ASSERT_TRUE(doc.is_object()) << text;
    EXPECT_TRUE(doc["name"].is_string() && doc["name"].get<std::string>().size() <= 6) << text;
    EXPECT_TRUE(doc["age"].is_number_integer() && doc["age"].get<int64_t>() <= 99) << text;
    EXPECT_TRUE(doc["ok"].is_boolean()) << text;
    EXPECT_EQ(doc.size(), 3u) << text;
    // Most steps took the model's own pick: the mask was built only when
    // the grammar rejected it.
    EXPECT_GT(sampler->grammar()->checks(), 0);
  }
}

TEST(GrammarConstraintTest, GreedyPicksTheBestAllowedToken) {
  auto vocab = TestVocabulary();
  SamplerOptions options;
  options.temperature = 0.0f;
  options.grammar = MakeGrammar("root ::= [0-9]+\n", vocab);
  absl::StatusOr<Sampler> sampler = Sampler::Create(options);
  ASSERT_TRUE(sampler.ok());
  std::vector<float> logits(static_cast<size_t>(vocab->size()), 0.0f);
  std::fill(logits.begin() + 55, logits.end(), -1.0f);  // the single characters
  logits[10] = 9.0f;                                    // "a": the model's favourite, not allowed
  logits[20] = 5.0f;                                    // "12"
  logits[19] = 4.0f;                                    // "1"
  absl::StatusOr<int32_t> token = sampler->Sample(logits);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, 20);
  EXPECT_EQ(sampler->grammar()->masks(), 1);
  // Now "12" again is the best and allowed: no mask needed.
  logits[10] = 0.0f;
  token = sampler->Sample(logits);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, 20);
  EXPECT_EQ(sampler->grammar()->masks(), 1);
}

TEST(GrammarConstraintTest, NoAllowedTokenLeftIsAnError) {
  auto vocab = TestVocabulary();
  SamplerOptions options;
  options.temperature = 0.0f;
  options.grammar = MakeGrammar("root ::= \"b\"\n", vocab);
  for (int32_t t = 0; t < vocab->size(); ++t) {  // ban "b" (there are two)
    if (vocab->bytes(t) == "b")
      options.logit_bias.push_back({t, -std::numeric_limits<float>::infinity()});
  }
  absl::StatusOr<Sampler> sampler = Sampler::Create(options);
  ASSERT_TRUE(sampler.ok());
  std::vector<float> logits(static_cast<size_t>(vocab->size()), 1.0f);
  absl::StatusOr<int32_t> token = sampler->Sample(logits);
  EXPECT_FALSE(token.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(token.status())) << token.status();
}

}  // namespace
}  // namespace moeflow::sampling
