// The older MLA layout: files that store each layer's `attn_kv_b` instead of
// `attn_k_b` + `attn_v_b`, and what the absorbed kernels need derived from it.
//
// Role in the data flow: llama.cpp's converter wrote DeepSeek-V2/V3/R1 as
// `attn_kv_b` {kv_lora_rank, n_heads · (qk_nope + v_head)} until its MLA
// change (spring 2025; the first wave of R1/V3 GGUFs); newer conversions
// split it into attn_k_b {qk_nope, kv_lora_rank, n_heads} and attn_v_b
// {kv_lora_rank, v_head, n_heads} (convert_hf_to_gguf.py: per head, k_b is
// the transpose of kv_b's first qk_nope rows and v_b its last v_head rows).
// Older files also lack attention.key_length_mla / value_length_mla, carry
// key_length = qk_nope + qk_rope, value_length = v_head and head_count_kv =
// n_heads (Deepseek2Config::FromGguf reads both). llama.cpp v0.5.0 loads
// such a file as it is and runs its non-absorbed ("MHA") graph: K and V per
// head = attn_kv_b · norm(kv_cmpr), cached per head. moeflow runs the
// absorbed graph on every file, so the engine, the gpu worker and the
// reference derive attn_k_b and attn_v_b at load from attn_kv_b (the same
// products, associated differently):
//   - attn_v_b: kv_b's own rows, bytes copied (exact, same type);
//   - attn_k_b: kv_b's k rows transposed. F32 / F16 / BF16 element by
//     element (exact, same type); a block-quantized kv_b is dequantized
//     (exactly, as ggml does) and each transposed row quantized to Q8_0 (F32
//     when qk_nope is not a multiple of 32), the one rounding this adds.
// The memory plan (model/memory_plan.h) and `moeflow inspect` count the
// derived tensors instead of attn_kv_b.
//
// Thread-safety: pure functions. Failure: InvalidArgument naming the file
// and tensor when attn_kv_b has the wrong shape or a type moeflow cannot
// dequantize.
#ifndef MOEFLOW_MODEL_DEEPSEEK2_KV_B_LAYOUT_H_
#define MOEFLOW_MODEL_DEEPSEEK2_KV_B_LAYOUT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"

namespace moeflow {

// Whether `layer` of `file` is in the older layout: attn_kv_b present,
// attn_k_b and attn_v_b absent.
bool StoresKvB(const GgufFile& file, int64_t layer);

// The type of the derived attn_k_b for an attn_kv_b of `kv_b_type`.
GgmlType DerivedKbType(GgmlType kv_b_type, int64_t qk_nope_dim);

// The derived tensors' infos (name "blk.N.attn_k_b.weight" / "attn_v_b",
// ggml shape, type, n_bytes; no data) for an attn_kv_b tensor info.
// InvalidArgument when kv_b's shape does not fit `config`.
absl::StatusOr<std::vector<GgufTensorInfo>> DerivedMlaTensorInfos(const GgufTensorInfo& kv_b,
                                                                  const Deepseek2Config& config);

// `tensors` with every attn_kv_b replaced by the two tensors derived from
// it (tensors that do not fit `config` are kept as they are).
std::vector<GgufTensorInfo> WithDerivedMlaTensors(const std::vector<GgufTensorInfo>& tensors,
                                                  const Deepseek2Config& config);

struct DerivedMlaMatrix {
  GgmlType type = GgmlType::kF32;
  int64_t cols = 0;  // ne[0]
  int64_t rows = 0;  // ne[1] · ne[2]
  std::vector<uint8_t> bytes;
};
struct DerivedMla {
  DerivedMlaMatrix k_b;  // {qk_nope, kv_lora_rank, n_heads}
  DerivedMlaMatrix v_b;  // {kv_lora_rank, v_head, n_heads}
};

// attn_k_b and attn_v_b of `layer`, derived from its attn_kv_b as above.
// The file's pages of attn_kv_b are released afterwards (read once).
absl::StatusOr<DerivedMla> DeriveMlaFromKvB(const GgufFile& file, const Deepseek2Config& config,
                                            int64_t layer);

// The float32 form (the reference pass): kv_b's values, dequantized, cut
// into k_b {qk_nope, kv_lora, n_heads} and v_b {kv_lora, v_head, n_heads}.
absl::Status SplitKvBFloat(const std::vector<float>& kv_b, const Deepseek2Config& config,
                           std::vector<float>* k_b, std::vector<float>* v_b);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_DEEPSEEK2_KV_B_LAYOUT_H_
