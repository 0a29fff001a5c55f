#include "model/model_presets.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moeflow {
namespace {

// Hyper-parameters shared by the presets: YaRN as DeepSeek's config.json
// sets it (factor 40 over the original 4096 context, β 32 / 1).
Deepseek2Config BaseConfig() {
  Deepseek2Config c;
  c.context_length = 163840;
  c.n_heads_kv = 1;
  c.rms_eps = 1e-6f;
  c.rope_freq_base = 10000.f;
  c.rope_scaling_type = "yarn";
  c.rope_scaling_factor = 40.f;
  c.rope_orig_context = 4096;
  c.yarn_beta_fast = 32.f;
  c.yarn_beta_slow = 1.f;
  return c;
}

// The tiny shapes of tests/data/llamacpp (tiny-v2 / tiny-v3).
Deepseek2Config TinyConfig(bool v3) {
  Deepseek2Config c = BaseConfig();
  c.name = v3 ? "moeflow-random-tiny-v3" : "moeflow-random-tiny";
  c.n_layers = 4;
  c.hidden = 256;
  c.dense_ff = 512;
  c.n_heads = 4;
  c.q_lora_rank = v3 ? 128 : 0;
  c.kv_lora_rank = 128;
  c.qk_nope_dim = 32;
  c.qk_rope_dim = 32;
  c.v_head_dim = 32;
  c.n_dense_layers = 1;
  c.n_experts = 16;
  c.n_experts_used = 4;
  c.n_shared_experts = 1;
  c.expert_ff = 64;
  c.vocab_size = 2048;
  if (v3) {
    c.yarn_log_multiplier = 0.1f;  // 0.1 * mscale_all_dim 1.0
    c.gating = ExpertGating::kSigmoid;
    c.expert_weights_norm = true;
    c.expert_weights_scale = 2.5f;
    c.n_expert_groups = 4;
    c.n_expert_groups_used = 2;
  } else {
    c.yarn_log_multiplier = 0.0707f;  // 0.1 * mscale_all_dim 0.707
  }
  return c;
}

// DeepSeek-V2-Lite's config.json.
Deepseek2Config V2LiteConfig() {
  Deepseek2Config c = BaseConfig();
  c.name = "moeflow-random-v2-lite";
  c.n_layers = 27;
  c.hidden = 2048;
  c.dense_ff = 10944;
  c.n_heads = 16;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_dim = 128;
  c.qk_rope_dim = 64;
  c.v_head_dim = 128;
  c.yarn_log_multiplier = 0.0707f;
  c.n_dense_layers = 1;
  c.n_experts = 64;
  c.n_experts_used = 6;
  c.n_shared_experts = 2;
  c.expert_ff = 1408;
  c.vocab_size = 102400;
  return c;
}

// DeepSeek-V3's config.json.
Deepseek2Config V3Config() {
  Deepseek2Config c = BaseConfig();
  c.name = "moeflow-random-v3";
  c.n_layers = 61;
  c.hidden = 7168;
  c.dense_ff = 18432;
  c.n_heads = 128;
  c.q_lora_rank = 1536;
  c.kv_lora_rank = 512;
  c.qk_nope_dim = 128;
  c.qk_rope_dim = 64;
  c.v_head_dim = 128;
  c.yarn_log_multiplier = 0.1f;
  c.n_dense_layers = 3;
  c.n_experts = 256;
  c.n_experts_used = 8;
  c.n_shared_experts = 1;
  c.expert_ff = 2048;
  c.gating = ExpertGating::kSigmoid;
  c.expert_weights_norm = true;
  c.expert_weights_scale = 2.5f;
  c.n_expert_groups = 8;
  c.n_expert_groups_used = 4;
  c.vocab_size = 129280;
  return c;
}

// DeepSeek-V3.1 and DeepSeek-R1-0528: their config.json gives every
// hyper-parameter llama.cpp reads the values of V3's (same layers, widths,
// heads, experts, routing, YaRN and vocabulary; the checkpoints differ in
// weights, FP8 scale format and chat template, none of which a random-weight
// file carries). So the shape is V3's under its own name.
Deepseek2Config V31Config() {
  Deepseek2Config c = V3Config();
  c.name = "moeflow-random-v3.1";
  return c;
}

// Kimi-K2 (moonshotai/Kimi-K2-Instruct config.json, July 2025: a DeepSeek-V3
// architecture, `deepseek2` in llama.cpp): 384 routed experts, top-8, one
// expert group, 64 heads, one leading dense layer, routed_scaling_factor
// 2.827, rope_theta 50000, YaRN factor 32 over 4096 positions with β 1 / 1
// and mscale_all_dim 1.0 (yarn_log_multiplier 0.1), 131072 positions,
// vocabulary 163840.
Deepseek2Config KimiK2Config() {
  Deepseek2Config c = BaseConfig();
  c.name = "moeflow-random-kimi-k2";
  c.context_length = 131072;
  c.rope_freq_base = 50000.f;
  c.rope_scaling_factor = 32.f;
  c.rope_orig_context = 4096;
  c.yarn_beta_fast = 1.f;
  c.yarn_beta_slow = 1.f;
  c.yarn_log_multiplier = 0.1f;
  c.n_layers = 61;
  c.hidden = 7168;
  c.dense_ff = 18432;
  c.n_heads = 64;
  c.q_lora_rank = 1536;
  c.kv_lora_rank = 512;
  c.qk_nope_dim = 128;
  c.qk_rope_dim = 64;
  c.v_head_dim = 128;
  c.n_dense_layers = 1;
  c.n_experts = 384;
  c.n_experts_used = 8;
  c.n_shared_experts = 1;
  c.expert_ff = 2048;
  c.gating = ExpertGating::kSigmoid;
  c.expert_weights_norm = true;
  c.expert_weights_scale = 2.827f;
  c.n_expert_groups = 1;
  c.n_expert_groups_used = 1;
  c.vocab_size = 163840;
  return c;
}

// A real shape at the tiny fixtures' widths: `real`'s structure (head
// count, leading dense layers, routed experts, top-k, shared experts, expert
// groups and groups used, gating, weight normalization and scale, RoPE /
// YaRN, context) with TinyConfig's widths (hidden 256, dense ff 512, expert
// ff 64, q_lora 128 when `real` has one, kv_lora 128, head dims 32 / 32 / 32,
// vocabulary 2048), and its leading dense layers + 2 MoE layers. So the test
// suite runs the engine and launch on Kimi-K2's 384 experts in one group and
// 64 heads, or V3.1's 128 heads and 8 groups, in seconds.
Deepseek2Config AtTinyWidths(const Deepseek2Config& real, const std::string& name) {
  const Deepseek2Config tiny = TinyConfig(/*v3=*/true);
  Deepseek2Config c = real;
  c.name = name;
  c.n_layers = real.n_dense_layers + 2;
  c.hidden = tiny.hidden;
  c.dense_ff = tiny.dense_ff;
  c.expert_ff = tiny.expert_ff;
  c.q_lora_rank = real.q_lora_rank > 0 ? tiny.q_lora_rank : 0;
  c.kv_lora_rank = tiny.kv_lora_rank;
  c.qk_nope_dim = tiny.qk_nope_dim;
  c.qk_rope_dim = tiny.qk_rope_dim;
  c.v_head_dim = tiny.v_head_dim;
  c.vocab_size = tiny.vocab_size;
  return c;
}

}  // namespace

const std::vector<std::string>& ModelPresetNames() {
  static const std::vector<std::string>* names = new std::vector<std::string>{
      "tiny", "tiny-v3", "tiny-v3.1", "tiny-k2", "v2-lite", "v3", "v3.1", "kimi-k2"};
  return *names;
}

absl::StatusOr<Deepseek2Config> PresetConfig(absl::string_view preset) {
  if (preset == "tiny") return TinyConfig(/*v3=*/false);
  if (preset == "tiny-v3") return TinyConfig(/*v3=*/true);
  if (preset == "tiny-v3.1") return AtTinyWidths(V31Config(), "moeflow-random-tiny-v3.1");
  if (preset == "tiny-k2") return AtTinyWidths(KimiK2Config(), "moeflow-random-tiny-k2");
  if (preset == "v2-lite") return V2LiteConfig();
  if (preset == "v3") return V3Config();
  if (preset == "v3.1") return V31Config();
  if (preset == "kimi-k2") return KimiK2Config();
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown preset \"", preset, "\" (known: ", absl::StrJoin(ModelPresetNames(), ", "), ")"));
}

}  // namespace moeflow
