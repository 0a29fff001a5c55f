#include "model/deepseek2/weights.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/kv_b_layout.h"

namespace moeflow {
namespace {

std::string ShapeString(const std::vector<int64_t>& ne) {
  return absl::StrCat("{", absl::StrJoin(ne, ", "), "}");
}

}  // namespace

absl::StatusOr<std::vector<float>> LoadTensorAsFloat(const GgufFile& file, const std::string& name,
                                                     const std::vector<int64_t>& expected_ne) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": missing tensor ", name,
                                                   " (expected shape ", ShapeString(expected_ne),
                                                   ")"));
  }
  if (info->ne != expected_ne) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has shape ",
                                                   ShapeString(info->ne), ", expected ",
                                                   ShapeString(expected_ne)));
  }
  if (!CanDequantize(info->type)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has type ",
                                                   Traits(info->type).name,
                                                   ", which moeflow cannot dequantize"));
  }
  std::vector<float> out(static_cast<size_t>(info->n_elements));
  absl::Status status =
      Dequantize(info->type, file.TensorData(*info), out.data(), info->n_elements);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor ", name, ": ", status.message()));
  }
  return out;
}

absl::StatusOr<Deepseek2Weights> Deepseek2Weights::Load(const GgufFile& file,
                                                        const Deepseek2Config& c) {
  const int64_t hidden = c.hidden;
  const int64_t q_dim = c.n_heads * c.qk_head_dim();
  const int64_t shared_ff = c.expert_ff * c.n_shared_experts;

  Deepseek2Weights w;
  MOEFLOW_ASSIGN_OR_RETURN(w.token_embd,
                           LoadTensorAsFloat(file, "token_embd.weight", {hidden, c.vocab_size}));
  MOEFLOW_ASSIGN_OR_RETURN(w.output_norm, LoadTensorAsFloat(file, "output_norm.weight", {hidden}));
  if (file.FindTensor("output.weight") != nullptr) {
    MOEFLOW_ASSIGN_OR_RETURN(w.output,
                             LoadTensorAsFloat(file, "output.weight", {hidden, c.vocab_size}));
  } else {
    w.output = w.token_embd;
  }

  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t il = 0; il < c.n_layers; ++il) {
    Deepseek2LayerWeights& l = w.layers[static_cast<size_t>(il)];
    auto load = [&](const char* suffix, std::vector<int64_t> ne,
                    std::vector<float>& dst) -> absl::Status {
      MOEFLOW_ASSIGN_OR_RETURN(dst, LoadTensorAsFloat(file, LayerTensorName(il, suffix), ne));
      return absl::OkStatus();
    };
    MOEFLOW_RETURN_IF_ERROR(load("attn_norm.weight", {hidden}, l.attn_norm));
    if (c.q_lora_rank > 0) {
      MOEFLOW_RETURN_IF_ERROR(load("attn_q_a.weight", {hidden, c.q_lora_rank}, l.attn_q_a));
      MOEFLOW_RETURN_IF_ERROR(load("attn_q_a_norm.weight", {c.q_lora_rank}, l.attn_q_a_norm));
      MOEFLOW_RETURN_IF_ERROR(load("attn_q_b.weight", {c.q_lora_rank, q_dim}, l.attn_q_b));
    } else {
      MOEFLOW_RETURN_IF_ERROR(load("attn_q.weight", {hidden, q_dim}, l.attn_q));
    }
    MOEFLOW_RETURN_IF_ERROR(
        load("attn_kv_a_mqa.weight", {hidden, c.kv_lora_rank + c.qk_rope_dim}, l.attn_kv_a_mqa));
    MOEFLOW_RETURN_IF_ERROR(load("attn_kv_a_norm.weight", {c.kv_lora_rank}, l.attn_kv_a_norm));
    if (StoresKvB(file, il)) {
      // The older layout (kv_b_layout.h): cut kv_b's values into k_b and v_b.
      std::vector<float> kv_b;
      MOEFLOW_RETURN_IF_ERROR(load(
          "attn_kv_b.weight", {c.kv_lora_rank, c.n_heads * (c.qk_nope_dim + c.v_head_dim)}, kv_b));
      MOEFLOW_RETURN_IF_ERROR(SplitKvBFloat(kv_b, c, &l.attn_k_b, &l.attn_v_b));
    } else {
      MOEFLOW_RETURN_IF_ERROR(
          load("attn_k_b.weight", {c.qk_nope_dim, c.kv_lora_rank, c.n_heads}, l.attn_k_b));
      MOEFLOW_RETURN_IF_ERROR(
          load("attn_v_b.weight", {c.kv_lora_rank, c.v_head_dim, c.n_heads}, l.attn_v_b));
    }
    MOEFLOW_RETURN_IF_ERROR(
        load("attn_output.weight", {c.n_heads * c.v_head_dim, hidden}, l.attn_output));
    MOEFLOW_RETURN_IF_ERROR(load("ffn_norm.weight", {hidden}, l.ffn_norm));
    if (!c.is_moe_layer(il)) {
      MOEFLOW_RETURN_IF_ERROR(load("ffn_gate.weight", {hidden, c.dense_ff}, l.ffn_gate));
      MOEFLOW_RETURN_IF_ERROR(load("ffn_up.weight", {hidden, c.dense_ff}, l.ffn_up));
      MOEFLOW_RETURN_IF_ERROR(load("ffn_down.weight", {c.dense_ff, hidden}, l.ffn_down));
      continue;
    }
    MOEFLOW_RETURN_IF_ERROR(load("ffn_gate_inp.weight", {hidden, c.n_experts}, l.ffn_gate_inp));
    // Optional in llama.cpp: present in V3-style files only.
    if (file.FindTensor(LayerTensorName(il, "exp_probs_b.bias")) != nullptr) {
      MOEFLOW_RETURN_IF_ERROR(load("exp_probs_b.bias", {c.n_experts}, l.exp_probs_b));
    }
    MOEFLOW_RETURN_IF_ERROR(
        load("ffn_gate_exps.weight", {hidden, c.expert_ff, c.n_experts}, l.ffn_gate_exps));
    MOEFLOW_RETURN_IF_ERROR(
        load("ffn_up_exps.weight", {hidden, c.expert_ff, c.n_experts}, l.ffn_up_exps));
    MOEFLOW_RETURN_IF_ERROR(
        load("ffn_down_exps.weight", {c.expert_ff, hidden, c.n_experts}, l.ffn_down_exps));
    if (c.n_shared_experts > 0) {
      MOEFLOW_RETURN_IF_ERROR(load("ffn_gate_shexp.weight", {hidden, shared_ff}, l.ffn_gate_shexp));
      MOEFLOW_RETURN_IF_ERROR(load("ffn_up_shexp.weight", {hidden, shared_ff}, l.ffn_up_shexp));
      MOEFLOW_RETURN_IF_ERROR(load("ffn_down_shexp.weight", {shared_ff, hidden}, l.ffn_down_shexp));
    }
  }
  return w;
}

}  // namespace moeflow
