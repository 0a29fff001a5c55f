#include "model/deepseek2/config.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {
namespace {

constexpr char kArch[] = "deepseek2";

std::string Key(absl::string_view suffix) { return absl::StrCat(kArch, ".", suffix); }

// Adds the file name to an error from a getter.
absl::Status InFile(const GgufFile& file, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(file.path(), ": ", status.message()));
}

}  // namespace

std::string LayerTensorName(int64_t layer, const char* suffix) {
  return absl::StrCat("blk.", layer, ".", suffix);
}

absl::StatusOr<Deepseek2Config> Deepseek2Config::FromGguf(const GgufFile& file) {
  auto arch = file.GetString("general.architecture");
  if (!arch.ok()) return InFile(file, arch.status());
  if (*arch != kArch) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": architecture '", *arch,
                                                   "' is not supported (expected '", kArch, "')"));
  }
  Deepseek2Config c;
  absl::Status status;
  // Reads an integer key into `dst`; `required` keys must be present.
  auto get_int = [&](absl::string_view suffix, int64_t& dst, bool required) {
    if (!status.ok()) return;
    auto v = required ? file.GetInt(Key(suffix)) : file.GetIntOr(Key(suffix), dst);
    if (!v.ok()) {
      status = InFile(file, v.status());
    } else {
      dst = *v;
    }
  };
  auto get_float = [&](absl::string_view suffix, float& dst, bool required) {
    if (!status.ok()) return;
    auto v = required ? file.GetFloat(Key(suffix)) : file.GetFloatOr(Key(suffix), dst);
    if (!v.ok()) {
      status = InFile(file, v.status());
    } else {
      dst = static_cast<float>(*v);
    }
  };
  c.name = file.GetString("general.name").value_or("");
  get_int("block_count", c.n_layers, true);
  get_int("context_length", c.context_length, true);
  get_int("embedding_length", c.hidden, true);
  get_int("feed_forward_length", c.dense_ff, true);
  get_int("attention.head_count", c.n_heads, true);
  get_int("attention.head_count_kv", c.n_heads_kv, false);
  get_int("attention.q_lora_rank", c.q_lora_rank, false);
  get_int("attention.kv_lora_rank", c.kv_lora_rank, true);
  get_int("rope.dimension_count", c.qk_rope_dim, true);
  int64_t key_length_mla = 0, value_length_mla = 0, key_length = 0, value_length = 0;
  get_int("attention.key_length", key_length, true);
  get_int("attention.value_length", value_length, true);
  get_int("attention.key_length_mla", key_length_mla, false);
  get_int("attention.value_length_mla", value_length_mla, false);
  get_float("attention.layer_norm_rms_epsilon", c.rms_eps, true);
  get_float("rope.freq_base", c.rope_freq_base, false);
  get_int("leading_dense_block_count", c.n_dense_layers, false);
  get_int("expert_count", c.n_experts, true);
  get_int("expert_used_count", c.n_experts_used, true);
  get_int("expert_shared_count", c.n_shared_experts, false);
  get_int("expert_feed_forward_length", c.expert_ff, true);
  int64_t gating = static_cast<int>(ExpertGating::kSoftmax);
  get_int("expert_gating_func", gating, false);
  get_float("expert_weights_scale", c.expert_weights_scale, false);
  get_int("expert_group_count", c.n_expert_groups, false);
  get_int("expert_group_used_count", c.n_expert_groups_used, false);
  get_float("rope.scaling.factor", c.rope_scaling_factor, false);
  get_int("rope.scaling.original_context_length", c.rope_orig_context, false);
  get_float("rope.scaling.yarn_beta_fast", c.yarn_beta_fast, false);
  get_float("rope.scaling.yarn_beta_slow", c.yarn_beta_slow, false);
  get_float("rope.scaling.yarn_log_multiplier", c.yarn_log_multiplier, false);
  if (!status.ok()) return status;

  auto norm = file.GetBoolOr(Key("expert_weights_norm"), false);
  if (!norm.ok()) return InFile(file, norm.status());
  c.expert_weights_norm = *norm;
  if (file.Find(Key("rope.scaling.type")) != nullptr) {
    auto type = file.GetString(Key("rope.scaling.type"));
    if (!type.ok()) return InFile(file, type.status());
    c.rope_scaling_type = *type;
  }
  if (gating != static_cast<int>(ExpertGating::kSoftmax) &&
      gating != static_cast<int>(ExpertGating::kSigmoid)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", Key("expert_gating_func"),
                                                   " = ", gating,
                                                   " is not 1 (softmax) or 2 (sigmoid)"));
  }
  c.gating = static_cast<ExpertGating>(gating);

  // The MLA ("absorbed") layout stores per-head dims in the *_mla keys; older
  // conversions only have key_length = qk_nope + qk_rope and value_length.
  if (key_length_mla > 0) {
    c.qk_nope_dim = key_length_mla - c.qk_rope_dim;
    c.v_head_dim = value_length_mla;
    if (key_length != c.kv_lora_rank + c.qk_rope_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": ", Key("attention.key_length"), " = ", key_length,
          " but the MLA layout needs kv_lora_rank + rope dims = ", c.kv_lora_rank + c.qk_rope_dim));
    }
  } else {
    c.qk_nope_dim = key_length - c.qk_rope_dim;
    c.v_head_dim = value_length;
  }

  // Vocabulary: the explicit key, else the tokenizer's size, else the
  // embedding's second dimension.
  c.vocab_size = file.GetIntOr(Key("vocab_size"), 0).value_or(0);
  if (c.vocab_size == 0) {
    if (const GgufValue* tokens = file.Find("tokenizer.ggml.tokens");
        tokens != nullptr && tokens->type() == GgufType::kArray) {
      c.vocab_size = static_cast<int64_t>(tokens->as_array().size());
    } else if (const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
               embd != nullptr && embd->ne.size() == 2) {
      c.vocab_size = embd->ne[1];
    }
  }
  if (absl::Status s = c.Validate(); !s.ok()) return InFile(file, s);
  return c;
}

absl::Status Deepseek2Config::Validate() const {
  auto positive = [](const char* field, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(field, " = ", v, " must be > 0"));
    return absl::OkStatus();
  };
  MOEFLOW_RETURN_IF_ERROR(positive("block_count", n_layers));
  MOEFLOW_RETURN_IF_ERROR(positive("context_length", context_length));
  MOEFLOW_RETURN_IF_ERROR(positive("embedding_length", hidden));
  MOEFLOW_RETURN_IF_ERROR(positive("attention.head_count", n_heads));
  MOEFLOW_RETURN_IF_ERROR(positive("attention.kv_lora_rank", kv_lora_rank));
  MOEFLOW_RETURN_IF_ERROR(positive("rope.dimension_count", qk_rope_dim));
  MOEFLOW_RETURN_IF_ERROR(positive("qk_nope_dim (key_length_mla - rope dims)", qk_nope_dim));
  MOEFLOW_RETURN_IF_ERROR(positive("v_head_dim (value_length_mla)", v_head_dim));
  MOEFLOW_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  if (q_lora_rank < 0) return absl::InvalidArgumentError("attention.q_lora_rank must be >= 0");
  if (qk_rope_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope.dimension_count = ", qk_rope_dim, " must be even"));
  }
  if (n_dense_layers < 0 || n_dense_layers > n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("leading_dense_block_count = ", n_dense_layers,
                                                   " must be in [0, block_count = ", n_layers,
                                                   "]"));
  }
  if (n_dense_layers > 0) MOEFLOW_RETURN_IF_ERROR(positive("feed_forward_length", dense_ff));
  if (n_dense_layers < n_layers) {
    MOEFLOW_RETURN_IF_ERROR(positive("expert_count", n_experts));
    MOEFLOW_RETURN_IF_ERROR(positive("expert_used_count", n_experts_used));
    MOEFLOW_RETURN_IF_ERROR(positive("expert_feed_forward_length", expert_ff));
    if (n_experts_used > n_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert_used_count = ", n_experts_used,
                                                     " exceeds expert_count = ", n_experts));
    }
    if (n_shared_experts < 0) {
      return absl::InvalidArgumentError("expert_shared_count must be >= 0");
    }
    MOEFLOW_RETURN_IF_ERROR(positive("expert_group_count", n_expert_groups));
    if (n_experts % n_expert_groups != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert_count = ", n_experts,
                       " is not a multiple of expert_group_count = ", n_expert_groups));
    }
    if (n_expert_groups_used < 1 || n_expert_groups_used > n_expert_groups) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert_group_used_count = ", n_expert_groups_used, " must be in [1, ",
                       n_expert_groups, "]"));
    }
    if (n_experts_used > n_expert_groups_used * (n_experts / n_expert_groups)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert_used_count = ", n_experts_used, " exceeds the experts in the ",
          n_expert_groups_used, " selected groups (", n_experts / n_expert_groups, " each)"));
    }
  }
  if (!(rms_eps > 0)) return absl::InvalidArgumentError("layer_norm_rms_epsilon must be > 0");
  if (!(rope_freq_base > 0)) return absl::InvalidArgumentError("rope.freq_base must be > 0");
  if (rope_scaling_type == "yarn") {
    if (!(rope_scaling_factor >= 1)) {
      return absl::InvalidArgumentError("rope.scaling.factor must be >= 1 for yarn");
    }
    MOEFLOW_RETURN_IF_ERROR(positive("rope.scaling.original_context_length", rope_orig_context));
  } else if (rope_scaling_type != "none") {
    return absl::InvalidArgumentError(absl::StrCat("rope.scaling.type '", rope_scaling_type,
                                                   "' is not supported (none or yarn)"));
  }
  return absl::OkStatus();
}

void Deepseek2Config::AddToGguf(GgufWriter& w) const {
  auto u32 = [&](absl::string_view suffix, int64_t v) {
    w.AddMetadata(Key(suffix), GgufValue::Uint(GgufType::kUint32, static_cast<uint64_t>(v)));
  };
  auto f32 = [&](absl::string_view suffix, double v) {
    w.AddMetadata(Key(suffix), GgufValue::Float(GgufType::kFloat32, v));
  };
  w.AddMetadata("general.architecture", GgufValue::String(kArch));
  if (!name.empty()) w.AddMetadata("general.name", GgufValue::String(name));
  u32("block_count", n_layers);
  u32("context_length", context_length);
  u32("embedding_length", hidden);
  u32("feed_forward_length", dense_ff);
  u32("attention.head_count", n_heads);
  u32("attention.head_count_kv", n_heads_kv);
  if (rope_scaling_type != "none") {
    w.AddMetadata(Key("rope.scaling.type"), GgufValue::String(rope_scaling_type));
    f32("rope.scaling.factor", rope_scaling_factor);
    u32("rope.scaling.original_context_length", rope_orig_context);
    f32("rope.scaling.yarn_beta_fast", yarn_beta_fast);
    f32("rope.scaling.yarn_beta_slow", yarn_beta_slow);
    f32("rope.scaling.yarn_log_multiplier", yarn_log_multiplier);
  }
  f32("rope.freq_base", rope_freq_base);
  f32("attention.layer_norm_rms_epsilon", rms_eps);
  u32("expert_count", n_experts);
  u32("expert_used_count", n_experts_used);
  u32("expert_group_count", n_expert_groups);
  u32("expert_group_used_count", n_expert_groups_used);
  u32("expert_gating_func", static_cast<int>(gating));
  w.AddMetadata(Key("expert_weights_norm"),
                GgufValue::Uint(GgufType::kBool, expert_weights_norm ? 1 : 0));
  u32("leading_dense_block_count", n_dense_layers);
  u32("vocab_size", vocab_size);
  // llama.cpp's loader requires the key even when it is 0 (V2-Lite: plain attn_q).
  u32("attention.q_lora_rank", q_lora_rank);
  u32("attention.kv_lora_rank", kv_lora_rank);
  // The absorbed MLA layout: one KV "head" of kv_lora + rope dims.
  u32("attention.key_length", kv_lora_rank + qk_rope_dim);
  u32("attention.value_length", kv_lora_rank);
  u32("attention.key_length_mla", qk_nope_dim + qk_rope_dim);
  u32("attention.value_length_mla", v_head_dim);
  u32("expert_feed_forward_length", expert_ff);
  u32("expert_shared_count", n_shared_experts);
  f32("expert_weights_scale", expert_weights_scale);
  u32("rope.dimension_count", qk_rope_dim);
}

}  // namespace moeflow
