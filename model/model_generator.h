// Random-weight DeepSeek-V2/V3 models (`deepseek2` GGUF files), the way
// llama.cpp's converter and llama-quantize would write them.
//
// Role in the data flow: `moeflow mkmodel` calls GenerateModel to make test
// and benchmark models of any size without downloading weights. The files
// use llama.cpp's metadata keys (Deepseek2Config::AddToGguf), tensor names,
// shapes (MLA in the absorbed layout: attn_k_b / attn_v_b) and per-tensor
// quant types (the llama-quantize rules for deepseek2, ChooseTensorType), so
// llama.cpp loads them and the engine sees what it sees in real files.
//
// Weights: value i of a tensor is a function of (seed, tensor name, i) only —
// a splitmix64 counter hashed from the name — so a tensor does not depend on
// the order or the threads that generate it, and the same seed gives a
// byte-identical file. Each value is an approximate standard normal (the
// Irwin–Hall sum of four 16-bit uniforms, scaled to unit variance; bounded at
// ±3.46σ) times a per-tensor std (TensorInit):
//   - matrices: 0.64 / sqrt(fan_in), fan_in = ne[0] (the dimension ggml's
//     mul_mat contracts); routed experts 0.48 / sqrt(fan_in); output
//     3.2 / sqrt(fan_in); token_embd 0.64 / sqrt(hidden). At hidden 256 these
//     are the tests/data/llamacpp fixtures' N(0, 0.04) / 0.03 / 0.2, which keep
//     the logits' std near 3.2 (not flat) at any width, while RMSNorm before
//     every block keeps activations finite through any number of layers.
//   - norm weights: 1 + N(0, 0.1), so a missing norm changes the output.
//   - ffn_gate_inp (router): 1.6 / sqrt(hidden) (0.1 at 256), F32.
//   - exp_probs_b.bias: N(0, 0.1), F32.
//
// Memory: tensors are generated, quantized and written in chunks of about
// 4 M values, so peak memory is a few tens of MB plus the tokenizer, whatever
// the model size.
//
// Thread-safety: GenerateModel may run concurrently for different outputs;
// it uses `threads` worker threads of its own.
// Failure: InvalidArgument naming the bad option (preset, type, layers),
// AlreadyExists when the output (or a shard) exists and `force` is false, the tokenizer
// loader's or GgufWriter's error otherwise (a failed write leaves no file
// under the output path).
#ifndef MOEFLOW_MODEL_MODEL_GENERATOR_H_
#define MOEFLOW_MODEL_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formats/ggml_types.h"
#include "model/deepseek2/config.h"
#include "model/gguf_split.h"
#include "model/model_presets.h"

namespace moeflow {

// llama.cpp's llama_ftype (general.file_type): which quant mix a file uses.
enum class LlamaFileType : int {
  kAllF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 7,
  kQ5_0 = 8,
  kQ5_1 = 9,
  kQ2_K = 10,
  kQ3_K_S = 11,
  kQ3_K_M = 12,
  kQ3_K_L = 13,
  kQ4_K_S = 14,
  kQ4_K_M = 15,
  kQ5_K_S = 16,
  kQ5_K_M = 17,
  kQ6_K = 18,
  kBF16 = 32,
};

// Names as llama-quantize spells them, case-insensitive: f32, f16, bf16,
// q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s,
// q4_k_m, q5_k_s, q5_k_m, q6_k, and its aliases q3_k (= q3_k_m), q4_k
// (= q4_k_m), q5_k (= q5_k_m). InvalidArgument naming an unknown one.
absl::StatusOr<LlamaFileType> ParseLlamaFileType(absl::string_view name);
std::string LlamaFileTypeName(LlamaFileType type);  // "Q4_K_M"
std::vector<std::string> LlamaFileTypeNames();      // lower case, for --help
// The type most tensors get (Q4_K for Q4_K_M, F32 for kAllF32, ...).
GgmlType DefaultTensorType(LlamaFileType type);

// The type llama-quantize (no imatrix) gives a tensor of a deepseek2 model
// of `n_layers` layers and `n_experts` routed experts:
//   - 1-D tensors, names not ending in "weight", norms and ffn_gate_inp keep
//     F32;
//   - output.weight: Q6_K (Q8_0 when the file type is Q8_0 or the rows do
//     not fit the default type's block);
//   - ffn_down*: Q4_K_M / Q5_K_M use Q6_K on the "more bits" layers
//     (i < n/8, i >= 7n/8, (i - n/8) % 3 == 2); Q4_K_S Q5_K for i < n/8;
//     Q3_K_M Q5_K for i < n/16, else Q4_K; Q3_K_L Q5_K; Q2_K Q3_K;
//   - attn_output: Q2_K → Q3_K, Q3_K_M → Q4_K, Q3_K_L → Q5_K (and Q5_K for
//     the low-bit mixes when the model has exactly 8 experts);
//   - then rows whose length is not a multiple of the block fall back:
//     Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0, and F16 if
//     even that does not fit.
// With `pure` every quantizable tensor gets the default type (plus the
// shape fallback), as `llama-quantize --pure` does.
GgmlType ChooseTensorType(absl::string_view name, const std::vector<int64_t>& ne,
                          LlamaFileType file_type, int64_t n_layers, int64_t n_experts,
                          bool pure = false);

// How a tensor's values are drawn: mean + std * N(0, 1).
struct TensorInit {
  float mean = 0.f;
  float std = 0.f;
};
TensorInit TensorInitFor(absl::string_view name, const std::vector<int64_t>& ne, int64_t hidden);

// One tensor of the file, in file order.
struct PlannedTensor {
  std::string name;
  std::vector<int64_t> ne;  // ggml order
  GgmlType type = GgmlType::kF32;
  TensorInit init;
};
// The tensors of a model with this config, in llama.cpp's converter order.
std::vector<PlannedTensor> PlanTensors(const Deepseek2Config& config, LlamaFileType file_type,
                                       bool pure = false);

// Value `index` of the tensor `name` for `seed` (N(0, 1), approximately).
float RandomNormal(uint64_t tensor_key, uint64_t index);
uint64_t TensorKey(uint64_t seed, absl::string_view name);

struct GenerationProgress {
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  uint64_t bytes_done = 0;   // tensor bytes written so far
  uint64_t bytes_total = 0;  // all tensor bytes
  double elapsed_s = 0;
};

struct ModelGeneratorOptions {
  std::string preset = "tiny";
  int64_t layers = 0;        // 0: the preset's; else dense layers are capped at it
  std::string type = "f32";  // a llama-quantize file type name
  bool pure = false;
  uint64_t seed = 1;
  std::string out_path;
  // Empty: a generated byte-level BPE, with DeepSeek-V3's chat template as
  // tokenizer.chat_template; else its tokenizer_config.json's chat_template.
  std::string tokenizer_json_path;
  bool force = false;  // overwrite an existing out_path
  // Shards as llama-gguf-split writes them (gguf_split.h): out_path without
  // a final ".gguf" is the prefix, e.g. m.gguf -> m-00001-of-00003.gguf, ...
  // No limit: one plain file at out_path.
  GgufSplitLimits split;
  int threads = 2;
  // Called from the calling thread after each chunk is written.
  std::function<void(const GenerationProgress&)> on_progress;
};

struct GeneratedModel {
  std::string path;                      // the file, or the first shard
  std::vector<std::string> shard_paths;  // every file written
  Deepseek2Config config;
  LlamaFileType file_type = LlamaFileType::kAllF32;
  int64_t n_tensors = 0;
  int64_t n_params = 0;
  uint64_t file_bytes = 0;
  double elapsed_s = 0;
};

// Writes the model described by `options` to options.out_path.
absl::StatusOr<GeneratedModel> GenerateModel(const ModelGeneratorOptions& options);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_MODEL_GENERATOR_H_
