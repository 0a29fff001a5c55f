#include "sampling/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow::sampling {
namespace {

Sampler MakeSampler(const SamplerOptions& options) {
  absl::StatusOr<Sampler> sampler = Sampler::Create(options);
  EXPECT_TRUE(sampler.ok()) << sampler.status();
  return *std::move(sampler);
}

int32_t SampleOk(Sampler& sampler, const std::vector<float>& logits) {
  absl::StatusOr<int32_t> token = sampler.Sample(logits);
  EXPECT_TRUE(token.ok()) << token.status();
  return token.ok() ? *token : -1;
}

std::vector<double> Softmax(const std::vector<float>& logits) {
  double max = -std::numeric_limits<double>::infinity();
  for (float l : logits) max = std::max<double>(max, l);
  std::vector<double> p;
  double sum = 0;
  for (float l : logits) sum += std::exp(l - max);
  for (float l : logits) p.push_back(std::exp(l - max) / sum);
  return p;
}

// The distribution the sampler drew from, indexed by token.
std::map<int32_t, double> LastDistribution(const Sampler& sampler) {
  std::map<int32_t, double> out;
  for (const auto& [token, p] : sampler.last_distribution()) out[token] = p;
  return out;
}

std::vector<float> Logits(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

TEST(SamplerTest, GreedyPicksLowestIdWhenLogitsTie) {
  Sampler sampler = MakeSampler({.temperature = 0});
  EXPECT_EQ(SampleOk(sampler, {1.0f, 3.0f, 2.0f, 3.0f}), 1);
  EXPECT_EQ(SampleOk(sampler, {5.0f, 5.0f}), 0);
}

TEST(SamplerTest, GreedyIgnoresNanLogits) {
  Sampler sampler = MakeSampler({.temperature = 0});
  EXPECT_EQ(SampleOk(sampler, {std::nanf(""), 1.0f, 0.5f}), 1);
}

TEST(SamplerTest, MatchesGreedyWhenTemperatureApproachesZero) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 1.5f};
  for (uint64_t seed = 0; seed < 50; ++seed) {
    Sampler sampler = MakeSampler({.temperature = 1e-3f, .seed = seed});
    EXPECT_EQ(SampleOk(sampler, logits), 1) << "seed " << seed;
  }
}

TEST(SamplerTest, RepeatsSequenceWhenSeedIsTheSame) {
  const std::vector<float> logits = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  Sampler a = MakeSampler({.seed = 1234});
  Sampler b = MakeSampler({.seed = 1234});
  Sampler c = MakeSampler({.seed = 4321});
  std::vector<int32_t> seq_a, seq_b, seq_c;
  for (int i = 0; i < 64; ++i) {
    seq_a.push_back(SampleOk(a, logits));
    seq_b.push_back(SampleOk(b, logits));
    seq_c.push_back(SampleOk(c, logits));
  }
  EXPECT_EQ(seq_a, seq_b);
  EXPECT_NE(seq_a, seq_c);
}

TEST(SamplerTest, MatchesGreedyWhenTopKIsOne) {
  const std::vector<float> logits = {0.3f, 1.2f, 1.2f, 0.9f, -2.0f};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Sampler sampler = MakeSampler({.temperature = 1.5f, .top_k = 1, .seed = seed});
    EXPECT_EQ(SampleOk(sampler, logits), 1);
  }
}

TEST(SamplerTest, TopKKeepsTheKLargestLogits) {
  Sampler sampler = MakeSampler({.top_k = 2});
  SampleOk(sampler, {0.0f, 3.0f, 1.0f, 2.0f});
  const auto dist = LastDistribution(sampler);
  ASSERT_EQ(dist.size(), 2u);
  EXPECT_NEAR(dist.at(1), std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
  EXPECT_NEAR(dist.at(3), std::exp(2.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
}

TEST(SamplerTest, TopPKeepsSmallestSetWhoseMassReachesP) {
  const std::vector<float> logits = Logits({0.15, 0.5, 0.05, 0.3});
  {
    Sampler sampler = MakeSampler({.top_p = 0.75f});  // 0.5 + 0.3 >= 0.75
    SampleOk(sampler, logits);
    const auto dist = LastDistribution(sampler);
    ASSERT_EQ(dist.size(), 2u);
    EXPECT_NEAR(dist.at(1), 0.5 / 0.8, 1e-6);
    EXPECT_NEAR(dist.at(3), 0.3 / 0.8, 1e-6);
  }
  {
    Sampler sampler = MakeSampler({.top_p = 0.85f});  // needs the 0.15 token too
    SampleOk(sampler, logits);
    const auto dist = LastDistribution(sampler);
    ASSERT_EQ(dist.size(), 3u);
    EXPECT_EQ(dist.count(2), 0u);
  }
  {
    Sampler sampler = MakeSampler({.top_p = 0.1f});  // at least one token
    SampleOk(sampler, logits);
    EXPECT_EQ(LastDistribution(sampler).size(), 1u);
  }
}

TEST(SamplerTest, MinPDropsTokensBelowFractionOfMostLikely) {
  const std::vector<float> logits = Logits({0.15, 0.5, 0.05, 0.3});
  Sampler sampler = MakeSampler({.min_p = 0.2f});  // floor 0.1: drops 0.05
  SampleOk(sampler, logits);
  const auto dist = LastDistribution(sampler);
  ASSERT_EQ(dist.size(), 3u);
  EXPECT_EQ(dist.count(2), 0u);
  EXPECT_NEAR(dist.at(0), 0.15 / 0.95, 1e-6);
}

TEST(SamplerTest, AppliesTemperatureBeforeSoftmax) {
  Sampler sampler = MakeSampler({.temperature = 0.5f});
  SampleOk(sampler, {1.0f, 2.0f});
  const auto dist = LastDistribution(sampler);
  const std::vector<double> expected = Softmax({2.0f, 4.0f});
  EXPECT_NEAR(dist.at(0), expected[0], 1e-6);
  EXPECT_NEAR(dist.at(1), expected[1], 1e-6);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler sampler = MakeSampler({.repetition_penalty = 2.0f, .repetition_last_n = 2});
  sampler.Accept(0);  // falls out of the 2-token window
  sampler.Accept(1);
  sampler.Accept(2);
  sampler.Accept(2);  // counted once
  SampleOk(sampler, {1.0f, 3.0f, -1.0f, 0.5f});
  const auto dist = LastDistribution(sampler);
  // The window holds {2, 2}: only token 2 is penalized, once.
  const std::vector<double> expected = Softmax({1.0f, 3.0f, -2.0f, 0.5f});
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(dist.at(t), expected[t], 1e-6) << t;
}

TEST(SamplerTest, RepetitionPenaltyCoversWholeHistoryWhenLastNIsMinusOne) {
  Sampler sampler = MakeSampler({.repetition_penalty = 2.0f, .repetition_last_n = -1});
  sampler.Accept(0);
  sampler.Accept(1);
  SampleOk(sampler, {1.0f, -3.0f, 0.0f});
  const auto dist = LastDistribution(sampler);
  const std::vector<double> expected = Softmax({0.5f, -6.0f, 0.0f});
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(dist.at(t), expected[t], 1e-6) << t;
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesSubtractPerCount) {
  Sampler sampler = MakeSampler({.presence_penalty = 0.5f, .frequency_penalty = 0.25f});
  sampler.Accept(1);
  sampler.Accept(1);
  sampler.Accept(1);
  sampler.Accept(2);
  SampleOk(sampler, {1.0f, 2.0f, 3.0f, 0.0f});
  const auto dist = LastDistribution(sampler);
  // 1: 2 - 0.5 - 3*0.25 = 0.75; 2: 3 - 0.5 - 0.25 = 2.25.
  const std::vector<double> expected = Softmax({1.0f, 0.75f, 2.25f, 0.0f});
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(dist.at(t), expected[t], 1e-6) << t;
}

TEST(SamplerTest, LogitBiasShiftsAndBansTokens) {
  const float kBan = -std::numeric_limits<float>::infinity();
  Sampler greedy = MakeSampler({.temperature = 0, .logit_bias = {{0, kBan}, {2, 5.0f}}});
  // Token 0 is banned and token 2 rises from 0.0 to 5.0, above token 1.
  EXPECT_EQ(SampleOk(greedy, {9.0f, 1.0f, 0.0f}), 2);
}

TEST(SamplerTest, ReturnsInvalidArgumentWhenBiasTokenOutsideVocabulary) {
  Sampler sampler = MakeSampler({.logit_bias = {{7, 1.0f}}});
  absl::StatusOr<int32_t> token = sampler.Sample(std::vector<float>{0.0f, 1.0f});
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(token.status().message().find("logit_bias"), absl::string_view::npos);
}

TEST(SamplerTest, ReturnsInvalidArgumentWhenNoLogitIsFinite) {
  const float kNegInf = -std::numeric_limits<float>::infinity();
  Sampler sampler = MakeSampler({});
  EXPECT_FALSE(sampler.Sample(std::vector<float>{kNegInf, std::nanf("")}).ok());
  EXPECT_FALSE(sampler.Sample(std::vector<float>{}).ok());
}

// 20,000 draws from a known softmax: the chi-square statistic over 6 bins
// (5 degrees of freedom) must stay below 20.52, the 0.999 quantile. The seeds
// are fixed, so the test is deterministic; the bound only says the sampler is
// not biased beyond what chance explains.
TEST(SamplerTest, FrequenciesMatchSoftmaxWithinChiSquareBound) {
  const std::vector<float> logits = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, -0.5f};
  const std::vector<double> expected = Softmax(logits);
  constexpr int kDraws = 20000;
  for (uint64_t seed : {1u, 2u, 3u}) {
    Sampler sampler = MakeSampler({.seed = seed});
    std::vector<int> counts(logits.size());
    for (int i = 0; i < kDraws; ++i) ++counts[SampleOk(sampler, logits)];
    double chi2 = 0;
    for (size_t t = 0; t < logits.size(); ++t) {
      const double e = expected[t] * kDraws;
      chi2 += (counts[t] - e) * (counts[t] - e) / e;
    }
    EXPECT_LT(chi2, 20.52) << "seed " << seed;
  }
}

// Same bound after top-k + top-p + temperature: the draw must follow the
// renormalized survivors.
TEST(SamplerTest, FrequenciesMatchTruncatedDistributionWithinChiSquareBound) {
  const std::vector<float> logits = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, -0.5f};
  Sampler sampler = MakeSampler({.temperature = 0.8f, .top_k = 4, .top_p = 0.9f, .seed = 9});
  constexpr int kDraws = 20000;
  std::map<int32_t, int> counts;
  for (int i = 0; i < kDraws; ++i) ++counts[SampleOk(sampler, logits)];
  const auto dist = LastDistribution(sampler);
  double chi2 = 0;
  for (const auto& [token, p] : dist) {
    const double e = p * kDraws;
    chi2 += (counts[token] - e) * (counts[token] - e) / e;
  }
  for (const auto& [token, n] : counts) EXPECT_EQ(dist.count(token), 1u) << token;
  // dist.size() - 1 degrees of freedom <= 3: 0.999 quantile 16.27.
  EXPECT_LT(chi2, 16.27);
}

TEST(SamplerTest, ReturnsInvalidArgumentNamingTheParameter) {
  struct Case {
    SamplerOptions options;
    const char* name;
  };
  const std::vector<Case> cases = {
      {{.temperature = -0.1f}, "temperature"},
      {{.temperature = std::nanf("")}, "temperature"},
      {{.top_k = -1}, "top_k"},
      {{.top_p = 0.0f}, "top_p"},
      {{.top_p = 1.5f}, "top_p"},
      {{.min_p = -0.1f}, "min_p"},
      {{.min_p = 1.1f}, "min_p"},
      {{.repetition_penalty = 0.0f}, "repetition_penalty"},
      {{.repetition_penalty = std::nanf("")}, "repetition_penalty"},
      {{.presence_penalty = std::nanf("")}, "presence_penalty"},
      {{.frequency_penalty = std::nanf("")}, "frequency_penalty"},
      {{.logit_bias = {{-1, 0.0f}}}, "logit_bias[0]"},
      {{.logit_bias = {{1, std::nanf("")}}}, "logit_bias[0]"},
  };
  for (const Case& c : cases) {
    absl::Status status = ValidateSamplerOptions(c.options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(status.message().find(c.name), 0u) << status;
    EXPECT_FALSE(Sampler::Create(c.options).ok()) << c.name;
  }
  EXPECT_TRUE(ValidateSamplerOptions({}).ok());
}

}  // namespace
}  // namespace moeflow::sampling
