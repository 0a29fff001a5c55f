// The model shapes `moeflow mkmodel --preset` writes and `moeflow inspect
// --plan` plans: hyper-parameters of real DeepSeek-V2/V3-architecture
// checkpoints (llama.cpp's `deepseek2`), and the tiny shapes of the
// tests/data/llamacpp fixtures.
//
// Role in the data flow: model_generator turns a preset into a file;
// inspect --plan turns one into a GPU memory plan without a file. Each
// preset says in model_presets.cc which config.json its numbers come from.
// Thread-safety: pure functions. Failure: InvalidArgument naming an unknown
// preset and the known ones.
#ifndef MOEFLOW_MODEL_MODEL_PRESETS_H_
#define MOEFLOW_MODEL_MODEL_PRESETS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/deepseek2/config.h"

namespace moeflow {

// "tiny", "tiny-v3", "tiny-v3.1" and "tiny-k2" (V3.1's and Kimi-K2's heads,
// experts, groups, routing and RoPE at the tiny widths; their dense layers +
// 2 MoE layers), "v2-lite", "v3", "v3.1", "kimi-k2".
const std::vector<std::string>& ModelPresetNames();
// The preset's hyper-parameters (vocab_size is the generated tokenizer's;
// a tokenizer.json may raise it). InvalidArgument naming an unknown preset.
absl::StatusOr<Deepseek2Config> PresetConfig(absl::string_view preset);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_MODEL_PRESETS_H_
