// The engine on the structure of the real shapes it has no fixture for:
// `tiny-k2` (Kimi-K2: 64 heads, 384 routed experts, top-8, one expert group,
// one leading dense layer, routed scale 2.827, rope theta 50000, YaRN 32 with
// β 1 / 1) and `tiny-v3.1` (DeepSeek-V3.1 / R1-0528: 128 heads, 256 experts in
// 8 groups, 4 groups used, three leading dense layers), both at the tiny
// widths (model/model_presets.h), written by the model generator and run
// against the float32 reference (model/deepseek2/reference.h): a prefill of
// all but the last 4 tokens, then 4 one-token decode steps. F32: max |Δ| <
// 1e-3 and top-1 everywhere; Q8_0: top-1 where the reference's margin is
// >= 0.2 (the quantized rule of tests/data/llamacpp/README.md). The
// full-width kimi-k2 and v3.1 files (one routed layer of either is ~17 G
// parameters) do not fit the suite; inspect --plan plans them.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "model/deepseek2/reference.h"
#include "model/model_generator.h"
#include "tests/engine/one_sequence.h"

namespace moeflow {
namespace {

constexpr int kDecodeSteps = 4;

struct Shape {
  const char* preset;
  int n_heads, n_experts, n_experts_used, n_groups, n_groups_used, n_dense;
  float scale;
};
constexpr Shape kKimiK2{"tiny-k2", 64, 384, 8, 1, 1, 1, 2.827f};
constexpr Shape kV31{"tiny-v3.1", 128, 256, 8, 8, 4, 3, 2.5f};

std::string Write(const Shape& shape, const std::string& type, int64_t moe_layers) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  ModelGeneratorOptions options;
  options.preset = shape.preset;
  options.layers = shape.n_dense + moe_layers;
  options.type = type;
  options.seed = 5;
  options.force = true;
  options.out_path =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", shape.preset, ".", type, ".gguf");
  absl::StatusOr<GeneratedModel> model = GenerateModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? model->path : "";
}

std::vector<int32_t> Tokens(int n) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>((i * 389 + 11) % 2046));
  return tokens;
}

// The engine's logits of every token: a prefill of all but the last
// kDecodeSteps tokens, then one token per step.
std::vector<float> EngineLogits(const std::string& path, const std::vector<int32_t>& tokens,
                                const Shape& shape) {
  auto engine = testing::OneSequence::Open(path, /*n_threads=*/2,
                                           /*max_batch=*/static_cast<int64_t>(tokens.size()),
                                           /*max_context=*/256);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  const Deepseek2Config& c = (*engine)->config();
  EXPECT_EQ(c.n_heads, shape.n_heads);
  EXPECT_EQ(c.n_experts, shape.n_experts);
  EXPECT_EQ(c.n_experts_used, shape.n_experts_used);
  EXPECT_EQ(c.n_expert_groups, shape.n_groups);
  EXPECT_EQ(c.n_expert_groups_used, shape.n_groups_used);
  EXPECT_EQ(c.n_dense_layers, shape.n_dense);
  EXPECT_FLOAT_EQ(c.expert_weights_scale, shape.scale);
  const size_t prefill = tokens.size() - kDecodeSteps;
  const absl::Span<const int32_t> all(tokens);
  auto logits = (*engine)->Forward(all.subspan(0, prefill), 0);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return {};
  std::vector<float> out = *logits;
  for (size_t t = prefill; t < tokens.size(); ++t) {
    auto step = (*engine)->Forward(all.subspan(t, 1), static_cast<int64_t>(t));
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return {};
    out.insert(out.end(), step->begin(), step->end());
  }
  return out;
}

int64_t Argmax(const float* v, int64_t n) { return std::max_element(v, v + n) - v; }

struct Agreement {
  double max_abs = 0;
  int top1_equal = 0, confident = 0, confident_equal = 0, positions = 0;
};

Agreement Compare(const std::string& path, const std::vector<int32_t>& tokens, const Shape& shape) {
  Agreement a;
  const std::vector<float> got = EngineLogits(path, tokens, shape);
  auto reference = Deepseek2Reference::Open(path);
  EXPECT_TRUE(reference.ok()) << reference.status();
  if (got.empty() || !reference.ok()) return a;
  auto want = (*reference)->Forward(tokens, 0);
  EXPECT_TRUE(want.ok()) << want.status();
  if (!want.ok()) return a;
  const int64_t vocab = static_cast<int64_t>(want->size() / tokens.size());
  EXPECT_EQ(got.size(), want->size());
  if (got.size() != want->size()) return a;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* g = got.data() + t * vocab;
    const float* w = want->data() + t * vocab;
    for (int64_t i = 0; i < vocab; ++i) {
      a.max_abs = std::max(a.max_abs, static_cast<double>(std::fabs(g[i] - w[i])));
    }
    const int64_t top = Argmax(w, vocab);
    float second = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i) {
      if (i != top) second = std::max(second, w[i]);
    }
    const bool equal = Argmax(g, vocab) == top;
    ++a.positions;
    a.top1_equal += equal;
    if (w[top] - second >= 0.2f) {
      ++a.confident;
      a.confident_equal += equal;
    }
  }
  const std::string file = path.substr(path.find_last_of('/') + 1);
  std::printf("%s: max |d| %.3g, top-1 %d/%d, at margin >= 0.2: %d/%d\n", file.c_str(), a.max_abs,
              a.top1_equal, a.positions, a.confident_equal, a.confident);
  return a;
}

class EngineShapesTest : public ::testing::TestWithParam<Shape> {};

TEST_P(EngineShapesTest, F32MatchesTheReference) {
  const std::string path = Write(GetParam(), "f32", /*moe_layers=*/1);
  ASSERT_FALSE(path.empty());
  const Agreement a = Compare(path, Tokens(24), GetParam());
  ASSERT_EQ(a.positions, 24);
  EXPECT_LT(a.max_abs, 1e-3);
  EXPECT_EQ(a.top1_equal, a.positions);
}

TEST_P(EngineShapesTest, Q8_0AgreesWithTheReferenceWhereItsMarginIsClear) {
  const std::string path = Write(GetParam(), "q8_0", /*moe_layers=*/2);
  ASSERT_FALSE(path.empty());
  const Agreement a = Compare(path, Tokens(32), GetParam());
  ASSERT_EQ(a.positions, 32);
  ASSERT_GT(a.confident, 0);
  EXPECT_EQ(a.confident_equal, a.confident);
}

INSTANTIATE_TEST_SUITE_P(Presets, EngineShapesTest, ::testing::Values(kKimiK2, kV31),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::string(info.param.preset[5] == 'k' ? "KimiK2" : "V31");
                         });

}  // namespace
}  // namespace moeflow
