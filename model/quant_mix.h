// llama-quantize's quant mixes: which ggml type each tensor of a deepseek2
// model gets for a file type (llama_ftype), as llama.cpp v0.5.0 (de3ff81,
// src/llama-quant.cpp) chooses them.
//
// Role in the data flow: `moeflow mkmodel` (model_generator.h) plans every
// tensor's type with ChooseTensorTypes before generating it; `inspect --plan`
// sizes files of a mix without writing them. The rules are llama.cpp's
// llama_tensor_get_type for the tensors a deepseek2 file holds (token_embd,
// output, attention, dense and expert FFN), including what depends on
// whether an importance matrix is given, the counters llama-quantize keeps in
// its own tensor order (by layer, then by name), and the shape fallbacks.
// Not modelled: Falcon / 70B / MXFP4 / ternary special cases and the
// per-tensor overrides of llama-quantize's command line.
//
// Thread-safety: pure functions. Failure: ParseLlamaFileType returns
// InvalidArgument naming an unknown type; the rest cannot fail.
#ifndef MOEFLOW_MODEL_QUANT_MIX_H_
#define MOEFLOW_MODEL_QUANT_MIX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formats/ggml_types.h"

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
  kIQ2_XXS = 19,
  kIQ2_XS = 20,
  kQ2_K_S = 21,
  kIQ3_XS = 22,
  kIQ3_XXS = 23,
  kIQ1_S = 24,
  kIQ4_NL = 25,
  kIQ3_S = 26,
  kIQ3_M = 27,
  kIQ2_S = 28,
  kIQ2_M = 29,
  kIQ4_XS = 30,
  kIQ1_M = 31,
  kBF16 = 32,
};

// Names as llama-quantize spells them, case-insensitive: f32, f16, bf16,
// q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q2_k_s, q3_k_s, q3_k_m, q3_k_l,
// q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq1_s, iq1_m, iq2_xxs, iq2_xs,
// iq2_s, iq2_m, iq3_xxs, iq3_xs, iq3_s, iq3_m, iq4_nl, iq4_xs, and its
// aliases q3_k (= q3_k_m), q4_k (= q4_k_m), q5_k (= q5_k_m). InvalidArgument
// naming an unknown one.
absl::StatusOr<LlamaFileType> ParseLlamaFileType(absl::string_view name);
std::string LlamaFileTypeName(LlamaFileType type);  // "Q4_K_M"
std::vector<std::string> LlamaFileTypeNames();      // lower case, for --help
// The type most tensors get (llama_ftype_get_default_type: Q4_K for Q4_K_M,
// IQ2_XS for IQ2_S, IQ2_S for IQ2_M, IQ3_S for IQ3_XS / IQ3_M, ...).
GgmlType DefaultTensorType(LlamaFileType type);

struct QuantMixOptions {
  LlamaFileType file_type = LlamaFileType::kAllF32;
  int64_t n_layers = 0;
  int64_t n_experts = 0;  // routed experts (llama.cpp's n_expert)
  // n_head / n_head_kv as the file's metadata says (deepseek2 files in the
  // absorbed MLA layout store head_count_kv 1, so n_heads).
  int64_t n_gqa = 1;
  bool pure = false;         // llama-quantize --pure: the default type everywhere
  bool has_imatrix = false;  // llama-quantize --imatrix was given
};

// One tensor as llama-quantize sees it (name and ggml ne).
struct TensorShape {
  std::string name;
  std::vector<int64_t> ne;
};

// The type of each of `tensors` (result[i] for tensors[i]; the input may be
// in any order — counters run in llama-quantize's order). Tensors that
// llama-quantize never quantizes (1-D, names not ending in "weight", norms,
// ffn_gate_inp) get F32, as in mkmodel's files.
std::vector<GgmlType> ChooseTensorTypes(const std::vector<TensorShape>& tensors,
                                        const QuantMixOptions& options);

// Whether llama-quantize refuses to make tensor `name` of type `type`
// without an importance matrix (tensor_requires_imatrix: IQ1_S, IQ1_M,
// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, and Q2_K in a Q2_K_S file; never
// token_embd or output).
bool TensorRequiresImatrix(absl::string_view name, GgmlType type, LlamaFileType file_type);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_QUANT_MIX_H_
