// Random-weight DeepSeek-V2/V3 models (`deepseek2` GGUF files), the way
// llama.cpp's converter and llama-quantize would write them.
//
// Role in the data flow: `moeflow mkmodel` calls GenerateModel to make test
// and benchmark models of any size without downloading weights. The files
// use llama.cpp's metadata keys (Deepseek2Config::AddToGguf), tensor names,
// shapes (MLA in the absorbed layout: attn_k_b / attn_v_b) and per-tensor
// quant types (llama-quantize's mixes for deepseek2, model/quant_mix.h), so
// llama.cpp loads them and the engine sees what it sees in real files.
//
// Importance matrix: with `imatrix_path` (llama-imatrix's file, GGUF or the
// legacy .dat; model/imatrix.h) every tensor the matrix has an entry for is
// quantized with ggml's importance-weighted quantizer, each routed expert
// with its own slice, as `llama-quantize --imatrix` does, and the mix is the
// one llama-quantize picks when given an imatrix. A matrix entry whose size
// does not fit its tensor, or a very low-bit tensor (IQ1_S, IQ1_M, IQ2_XXS,
// IQ2_XS, IQ2_S, IQ3_XXS) the matrix has no entry for, is an error naming
// the tensor, as in llama-quantize. Without an imatrix every type is
// quantized with uniform importance (1 for every value): where llama-quantize
// refuses (those low-bit types), mkmodel quantizes them as ggml would with an
// all-ones matrix (kernels/cpu/quants.h).
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
// Failure: InvalidArgument naming the bad option (preset, type, layers) or
// the imatrix file and entry that does not fit,
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
#include "model/quant_mix.h"

namespace moeflow {

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
// The types are llama-quantize's for `file_type` (with --pure: `pure`; with
// --imatrix: `has_imatrix`).
std::vector<PlannedTensor> PlanTensors(const Deepseek2Config& config, LlamaFileType file_type,
                                       bool pure = false, bool has_imatrix = false);

// Quantizes rows [row_begin, row_end) of `tensor` (its values at `values`,
// ne[0] per row, row_begin's first) into `out` (RowBytes(type, ne[0]) per
// row) as llama-quantize does: with `importance` (the tensor's imatrix
// entry, ne[0] * ne[2] values) ggml's importance-weighted quantizer, row r
// taking slice r / ne[1] (its expert); without, uniform importance. F32 is
// copied. Errors: the quantizer's (kernels/cpu/quants.h).
absl::Status QuantizeTensorRows(const PlannedTensor& tensor, const float* values, int64_t row_begin,
                                int64_t row_end, const float* importance, uint8_t* out);

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
  // llama-imatrix's output (GGUF or legacy .dat, model/imatrix.h); empty:
  // uniform importance.
  std::string imatrix_path;
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
