// Reading the llama.cpp reference fixtures in tests (tests/data/llamacpp:
// GGUF models, MFLG logits, small flat JSON files with top-5 lists, margins
// and greedy continuations). Shared by the reference and engine tests.
// Thread-safe (pure functions). A missing file reads as empty text.
#ifndef MOEFLOW_TESTS_MODEL_DEEPSEEK2_LLAMACPP_FIXTURE_H_
#define MOEFLOW_TESTS_MODEL_DEEPSEEK2_LLAMACPP_FIXTURE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace moeflow::fixtures {

// "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf" for ("tiny-v3", "q8_0.gguf").
std::string FixturePath(const std::string& model, const std::string& file);

std::string ReadText(const std::string& path);

// Every number that follows `"key": ` in a small JSON file, in order (the
// fixture JSON is flat enough for this).
std::vector<double> NumbersAfterKey(const std::string& text, const std::string& key);

// The integers of the array that follows `"key": [`.
std::vector<int32_t> IntArrayAfterKey(const std::string& text, const std::string& key);

// Index of the largest value; the lower index on ties (llama.cpp's greedy rule).
int64_t Argmax(const float* row, int64_t n);

}  // namespace moeflow::fixtures

#endif  // MOEFLOW_TESTS_MODEL_DEEPSEEK2_LLAMACPP_FIXTURE_H_
