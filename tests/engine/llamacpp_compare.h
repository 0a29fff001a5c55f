// The engine against a llama.cpp fixture (tests/data/llamacpp): logits of a
// whole sequence in one batch, and a greedy continuation one token per step,
// measured by the rule of tests/data/llamacpp/README.md (top-1 where
// llama.cpp's margin is >= 0.2). Shared by the engine tests; each call prints
// one line of numbers. Not thread-safe (drives one engine); a missing or bad
// fixture file is a test failure (gtest assertions), not an exception.
#ifndef MOEFLOW_TESTS_ENGINE_LLAMACPP_COMPARE_H_
#define MOEFLOW_TESTS_ENGINE_LLAMACPP_COMPARE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "tests/engine/one_sequence.h"

namespace moeflow::fixtures {

// The engine: the dataflow over the single-process topology, one sequence.
using Engine = ::moeflow::testing::OneSequence;

// The engine on tests/data/llamacpp/MODEL/MODEL.QUANT.gguf (max_batch 64,
// max_context 256), or null after a test failure.
std::unique_ptr<Engine> OpenFixtureEngine(const std::string& model, const std::string& quant,
                                          int n_threads = 2, int64_t active_experts = 0);

struct Comparison {
  double max_abs = 0;
  double mean_abs = 0;
  double logit_std = 0;  // of llama.cpp's logits
  int positions = 0;
  int top1_equal = 0;
  int confident = 0;  // positions with llama.cpp margin >= 0.2
  int confident_top1_equal = 0;
};

// MODEL.QUANT.SEQ.logits.bin (and its top5.json margins) against the
// engine's logits of the same tokens from position 0 in one batch.
Comparison CompareSequence(Engine& engine, const std::string& name,
                           const std::string& quant, const std::string& seq);

// Greedy generation as MODEL.QUANT.greedy32.json was made: prompt in one
// batch, then one token per step. Sets how many leading tokens equal
// llama.cpp's, and the first step whose recorded margin is < 0.2 (32 if none).
void Greedy(Engine& engine, const std::string& name, const std::string& quant,
            int* equal_prefix, int* first_low_margin);

}  // namespace moeflow::fixtures

#endif  // MOEFLOW_TESTS_ENGINE_LLAMACPP_COMPARE_H_
