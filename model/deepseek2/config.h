// DeepSeek V2/V3/R1 hyper-parameters, as llama.cpp's `deepseek2` GGUF keys
// name them, and the tensor names of each layer.
//
// Role in the data flow: read once from the model file by whoever loads it
// (engine, workers, `moeflow inspect`), and written by `moeflow mkmodel`; it
// is the one place that knows the key names. Thread-safe (plain value type).
// Failure: FromGguf returns InvalidArgument naming the missing or malformed
// key, or an inconsistency between keys (e.g. key_length != kv_lora + rope).
#ifndef MOEFLOW_MODEL_DEEPSEEK2_CONFIG_H_
#define MOEFLOW_MODEL_DEEPSEEK2_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gguf.h"

namespace moeflow {

// llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE values.
enum class ExpertGating : int { kSoftmax = 1, kSigmoid = 2 };

struct Deepseek2Config {
  std::string name;      // general.name
  int64_t n_layers = 0;  // block_count
  int64_t context_length = 0;
  int64_t hidden = 0;       // embedding_length
  int64_t dense_ff = 0;     // feed_forward_length (dense layers)
  int64_t n_heads = 0;      // attention.head_count
  int64_t n_heads_kv = 1;   // attention.head_count_kv (1 in the MLA layout)
  int64_t q_lora_rank = 0;  // 0: plain attn_q (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_dim = 0;  // key_length_mla - rope dims
  int64_t qk_rope_dim = 0;  // rope.dimension_count
  int64_t v_head_dim = 0;   // value_length_mla
  float rms_eps = 1e-6f;
  float rope_freq_base = 10000.f;
  // YaRN (rope.scaling.*); factor 1 / type "none" disables it.
  std::string rope_scaling_type = "none";
  float rope_scaling_factor = 1.f;
  int64_t rope_orig_context = 0;
  float yarn_beta_fast = 32.f;
  float yarn_beta_slow = 1.f;
  float yarn_log_multiplier = 0.f;  // 0.1 * mscale_all_dim
  // MoE.
  int64_t n_dense_layers = 0;    // leading_dense_block_count
  int64_t n_experts = 0;         // expert_count
  int64_t n_experts_used = 0;    // expert_used_count (top-k)
  int64_t n_shared_experts = 0;  // expert_shared_count
  int64_t expert_ff = 0;         // expert_feed_forward_length
  ExpertGating gating = ExpertGating::kSoftmax;
  bool expert_weights_norm = false;
  float expert_weights_scale = 1.f;
  int64_t n_expert_groups = 1;       // expert_group_count
  int64_t n_expert_groups_used = 1;  // expert_group_used_count
  int64_t vocab_size = 0;

  bool is_moe_layer(int64_t layer) const { return layer >= n_dense_layers; }
  int64_t qk_head_dim() const { return qk_nope_dim + qk_rope_dim; }

  // Reads and validates every key of an `deepseek2` file.
  static absl::StatusOr<Deepseek2Config> FromGguf(const GgufFile& file);
  // Appends this config's keys (in llama.cpp's names) to a writer.
  void AddToGguf(GgufWriter& writer) const;
  // Checks internal consistency (positive sizes, top-k <= experts, groups
  // divide experts, ...). InvalidArgument naming the field.
  absl::Status Validate() const;
};

// Tensor names, as llama.cpp's converter writes them.
std::string LayerTensorName(int64_t layer, const char* suffix);  // "blk.3.attn_norm.weight"

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_DEEPSEEK2_CONFIG_H_
