#include "tests/engine/llamacpp_compare.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "model/deepseek2/logits_file.h"
#include "tests/model/deepseek2/llamacpp_fixture.h"

namespace moeflow::fixtures {

std::unique_ptr<Engine> OpenFixtureEngine(const std::string& model, const std::string& quant,
                                          int n_threads, int64_t active_experts) {
  auto e = Engine::Open(FixturePath(model, quant + ".gguf"), n_threads, /*max_batch=*/64,
                        /*max_context=*/256, active_experts);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(e).value() : nullptr;
}

Comparison CompareSequence(Engine& engine, const std::string& name,
                           const std::string& quant, const std::string& seq) {
  Comparison cmp;
  auto ref = ReadLogitsFile(FixturePath(name, absl::StrCat(quant, ".", seq, ".logits.bin")));
  EXPECT_TRUE(ref.ok()) << ref.status();
  if (!ref.ok()) return cmp;
  const std::vector<double> margins = NumbersAfterKey(
      ReadText(FixturePath(name, absl::StrCat(quant, ".", seq, ".top5.json"))), "margin");
  EXPECT_EQ(static_cast<int64_t>(margins.size()), ref->n_tokens());
  std::vector<int32_t> tokens(ref->tokens.begin(), ref->tokens.end());
  auto logits = engine.Forward(tokens, 0);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return cmp;
  const int64_t vocab = ref->n_vocab;
  double sum = 0, ref_sum = 0, ref_sq = 0;
  for (int64_t t = 0; t < ref->n_tokens(); ++t) {
    const float* ours = logits->data() + t * vocab;
    const float* theirs = ref->row(t);
    for (int64_t v = 0; v < vocab; ++v) {
      const double d = std::fabs(static_cast<double>(ours[v]) - theirs[v]);
      cmp.max_abs = std::max(cmp.max_abs, d);
      sum += d;
      ref_sum += theirs[v];
      ref_sq += static_cast<double>(theirs[v]) * theirs[v];
    }
    const bool same = Argmax(ours, vocab) == Argmax(theirs, vocab);
    cmp.top1_equal += same;
    if (t < static_cast<int64_t>(margins.size()) && margins[t] >= 0.2) {
      ++cmp.confident;
      cmp.confident_top1_equal += same;
    }
  }
  const double count = static_cast<double>(ref->n_tokens() * vocab);
  cmp.positions = static_cast<int>(ref->n_tokens());
  cmp.mean_abs = sum / count;
  cmp.logit_std = std::sqrt(std::max(0.0, ref_sq / count - (ref_sum / count) * (ref_sum / count)));
  std::printf(
      "%s.%s.%s: max |d| %.3g, mean |d| %.3g (%.2f%% of logit std %.2f), top-1 %d/%d, "
      "top-1 at margin >= 0.2: %d/%d\n",
      name.c_str(), quant.c_str(), seq.c_str(), cmp.max_abs, cmp.mean_abs,
      100 * cmp.mean_abs / cmp.logit_std, cmp.logit_std, cmp.top1_equal, cmp.positions,
      cmp.confident_top1_equal, cmp.confident);
  return cmp;
}

void Greedy(Engine& engine, const std::string& name, const std::string& quant,
            int* equal_prefix, int* first_low_margin) {
  const std::string json = ReadText(FixturePath(name, quant + ".greedy32.json"));
  const std::vector<int32_t> prompt = IntArrayAfterKey(json, "prompt");
  const std::vector<int32_t> expected = IntArrayAfterKey(json, "generated");
  const std::vector<double> margins = NumbersAfterKey(json, "margin");
  ASSERT_EQ(prompt.size(), 7u);
  ASSERT_EQ(expected.size(), 32u);
  ASSERT_EQ(margins.size(), 32u);
  const int64_t vocab = engine.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  ASSERT_TRUE(engine.ForwardInto(prompt, 0, /*last_only=*/true, absl::MakeSpan(logits)).ok());
  std::vector<int32_t> generated;
  int64_t pos = static_cast<int64_t>(prompt.size());
  while (true) {
    generated.push_back(static_cast<int32_t>(Argmax(logits.data(), vocab)));
    if (generated.size() == expected.size()) break;
    ASSERT_TRUE(
        engine.ForwardInto({generated.back()}, pos++, /*last_only=*/true, absl::MakeSpan(logits))
            .ok());
  }
  *equal_prefix = 0;
  while (*equal_prefix < 32 && generated[*equal_prefix] == expected[*equal_prefix]) ++*equal_prefix;
  *first_low_margin = 0;
  while (*first_low_margin < 32 && margins[*first_low_margin] >= 0.2) ++*first_low_margin;
  std::printf("%s.%s greedy32: equal prefix %d, first step with margin < 0.2: %d\n", name.c_str(),
              quant.c_str(), *equal_prefix, *first_low_margin);
}

}  // namespace moeflow::fixtures
