#include "generation/text_generator.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"

namespace moeflow {
namespace {

using sampling::FinishReason;
using sampling::SamplerOptions;
using sampling::StopOptions;

constexpr char kDir[] = "tests/data/llamacpp/tiny-v3/";

nlohmann::json Greedy32() {
  std::ifstream in(std::string(kDir) + "tiny-v3.f32.greedy32.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

std::unique_ptr<TextGenerator> Open(int64_t context_tokens = 0) {
  TextGeneratorOptions options;
  options.topology.n_threads = 2;
  options.context_tokens = context_tokens;
  auto g = TextGenerator::Open(std::string(kDir) + "tiny-v3.f32.gguf", options);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? std::move(*g) : nullptr;
}

SamplerOptions Greedy() {
  SamplerOptions s;
  s.temperature = 0;
  return s;
}

StopOptions MaxTokens(int64_t n) {
  StopOptions s;
  s.max_tokens = n;
  return s;
}

TEST(TextGeneratorTest, GreedyGenerationMatchesLlamaCpp) {
  const nlohmann::json fixture = Greedy32();
  const std::vector<int32_t> prompt = fixture["prompt"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = fixture["generated"].get<std::vector<int32_t>>();
  auto g = Open();
  ASSERT_NE(g, nullptr);
  std::string streamed;
  auto r = g->Generate(prompt, Greedy(), MaxTokens(32),
                       [&](absl::string_view piece) { streamed += std::string(piece); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, want);
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);
  EXPECT_EQ(r->prompt_tokens, 7);
  EXPECT_EQ(r->completion_tokens, 32);
  EXPECT_EQ(streamed, r->text);
  EXPECT_EQ(r->text, g->tokenizer().Decode(want));
  EXPECT_TRUE(r->note.empty());
}

TEST(TextGeneratorTest, SameSeedSameTextOtherSeedDiffers) {
  const std::vector<int32_t> prompt = Greedy32()["prompt"].get<std::vector<int32_t>>();
  auto g = Open();
  ASSERT_NE(g, nullptr);
  auto run = [&](uint64_t seed) {
    SamplerOptions s;
    s.temperature = 1.0f;
    s.seed = seed;
    auto r = g->Generate(prompt, s, MaxTokens(32), nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tokens : std::vector<int32_t>{};
  };
  const std::vector<int32_t> a = run(11);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(run(11), a);
  EXPECT_NE(run(12), a);
}

TEST(TextGeneratorTest, StopStringIsHeldBackAndNeverStreamed) {
  const nlohmann::json fixture = Greedy32();
  const std::vector<int32_t> prompt = fixture["prompt"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy = fixture["generated"].get<std::vector<int32_t>>();
  auto g = Open();
  ASSERT_NE(g, nullptr);
  // A stop string across a token boundary: the last byte of token 9's text
  // and the first of token 10's.
  const std::string head = g->tokenizer().Decode(absl::MakeConstSpan(greedy).subspan(0, 10));
  const std::string next(g->tokenizer().TokenBytes(greedy[10]));
  ASSERT_FALSE(next.empty());
  const std::string stop_string = head.substr(head.size() - 1) + next.substr(0, 1);
  const std::string full = g->tokenizer().Decode(greedy);
  const size_t at = full.find(stop_string);
  ASSERT_NE(at, std::string::npos);

  StopOptions stop = MaxTokens(32);
  stop.stop_strings = {stop_string};
  std::vector<std::string> pieces;
  auto r = g->Generate(prompt, Greedy(), stop,
                       [&](absl::string_view piece) { pieces.emplace_back(piece); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->text, full.substr(0, at));
  std::string streamed;
  for (const std::string& p : pieces) {
    streamed += p;
    EXPECT_EQ(streamed.find(stop_string), std::string::npos);
  }
  EXPECT_EQ(streamed, r->text);
  EXPECT_LE(r->completion_tokens, 11);
}

TEST(TextGeneratorTest, MaxTokensFinishesWithLength) {
  const std::vector<int32_t> prompt = Greedy32()["prompt"].get<std::vector<int32_t>>();
  auto g = Open();
  ASSERT_NE(g, nullptr);
  auto r = g->Generate(prompt, Greedy(), MaxTokens(5), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completion_tokens, 5);
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);
}

TEST(TextGeneratorTest, PromptLongerThanContextIsInvalidArgument) {
  auto g = Open(/*context_tokens=*/7);
  ASSERT_NE(g, nullptr);
  const std::vector<int32_t> prompt = Greedy32()["prompt"].get<std::vector<int32_t>>();
  auto r = g->Generate(prompt, Greedy(), MaxTokens(4), nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("7 tokens"), absl::string_view::npos) << r.status();
  EXPECT_NE(r.status().message().find("holds 7"), absl::string_view::npos) << r.status();
}

TEST(TextGeneratorTest, MaxTokensPastTheContextIsClampedWithANote) {
  auto g = Open(/*context_tokens=*/16);
  ASSERT_NE(g, nullptr);
  const std::vector<int32_t> prompt = Greedy32()["prompt"].get<std::vector<int32_t>>();
  auto r = g->Generate(prompt, Greedy(), MaxTokens(100), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completion_tokens, 9);
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);
  EXPECT_NE(r->note.find("clamped to 9"), std::string::npos) << r->note;
  // Unlimited (0) runs until the context is full, without a note.
  r = g->Generate(prompt, Greedy(), MaxTokens(0), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completion_tokens, 9);
  EXPECT_TRUE(r->note.empty());
}

TEST(TextGeneratorTest, ReusedCachePrefixGivesTheTokensOfAFreshRun) {
  const std::vector<int32_t> prompt = Greedy32()["prompt"].get<std::vector<int32_t>>();
  auto g = Open();
  ASSERT_NE(g, nullptr);
  auto first = g->Generate(prompt, Greedy(), MaxTokens(20), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  // The next prompt extends the first one and its reply: the whole 16-token
  // block the first run computed (7 + 19 positions) is reused.
  std::vector<int32_t> longer = prompt;
  longer.insert(longer.end(), first->tokens.begin(), first->tokens.end());
  longer.insert(longer.end(), {95, 1200, 33});
  GenerateFlags reuse;
  reuse.reuse_cache_prefix = true;
  auto reused = g->Generate(longer, Greedy(), MaxTokens(16), nullptr, reuse);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_EQ(reused->reused_prompt_tokens, 16);

  auto fresh_g = Open();
  ASSERT_NE(fresh_g, nullptr);
  auto fresh = fresh_g->Generate(longer, Greedy(), MaxTokens(16), nullptr);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->reused_prompt_tokens, 0);
  EXPECT_EQ(reused->tokens, fresh->tokens);
}

TEST(TextGeneratorTest, ChatTurnsReuseTheCacheAndMatchAFreshRender) {
  auto g = Open();
  ASSERT_NE(g, nullptr);
  ChatSessionOptions options;
  options.system_prompt = "Be brief.";
  ChatSession session(g.get(), options);
  auto first = session.Send("Hello there", Greedy(), MaxTokens(6), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(session.fallback_used().empty()) << session.fallback_used();
  EXPECT_EQ(session.template_name(), "deepseek-v2");  // the fixture's template
  auto second = session.Send("And now?", Greedy(), MaxTokens(6), nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  // Whole 16-token blocks of the first turn's prompt and reply.
  EXPECT_GT(second->generation.reused_prompt_tokens, 0);
  EXPECT_EQ(second->generation.reused_prompt_tokens % 16, 0);
  EXPECT_GT(second->generation.reused_prompt_tokens + 16, first->generation.prompt_tokens);
  ASSERT_EQ(session.messages().size(), 4u);

  // The second turn's prompt generated from an empty cache on a fresh
  // generator (the first turn replayed to get the same history).
  auto fresh_g = Open();
  ASSERT_NE(fresh_g, nullptr);
  ChatSession replay(fresh_g.get(), options);
  auto replay_first = replay.Send("Hello there", Greedy(), MaxTokens(6), nullptr);
  ASSERT_TRUE(replay_first.ok()) << replay_first.status();
  EXPECT_EQ(replay_first->generation.tokens, first->generation.tokens);
  auto prompt = replay.RenderPrompt("And now?", nullptr);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  auto from_scratch = fresh_g->Generate(*prompt, Greedy(), MaxTokens(6), nullptr);
  ASSERT_TRUE(from_scratch.ok()) << from_scratch.status();
  EXPECT_EQ(from_scratch->reused_prompt_tokens, 0);
  EXPECT_EQ(from_scratch->tokens, second->generation.tokens);

  session.Reset();
  EXPECT_TRUE(session.messages().empty());
}

}  // namespace
}  // namespace moeflow
