// Every tensor of a `deepseek2` GGUF file, dequantized to float32.
//
// Role in the data flow: the reference forward pass (reference.h) and the
// tests that check optimized kernels against it read their weights from here.
// Load checks that each tensor llama.cpp's `deepseek2` loader requires is
// present with the shape it expects (ggml `ne` order, see the field comments)
// and converts it to float with kernels/cpu Dequantize, so this is the one
// place that knows the tensor layout of the model. Memory is 4 bytes per
// weight: meant for tiny test models and for slices, not for a 671B model.
//
// Thread-safety: immutable after Load; any thread may read it.
// Failure: Load returns InvalidArgument naming the tensor that is missing,
// mis-shaped or of a type moeflow cannot dequantize.
#ifndef MOEFLOW_MODEL_DEEPSEEK2_WEIGHTS_H_
#define MOEFLOW_MODEL_DEEPSEEK2_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"

namespace moeflow {

// A 2-D ggml tensor {in, out} is stored as `out` rows of `in` floats:
// y[o] = sum_i w[o * in + i] * x[i]. Shapes below are in ggml `ne` order.
struct Deepseek2LayerWeights {
  std::vector<float> attn_norm;  // {hidden}
  // Query: either attn_q (q_lora_rank == 0) or attn_q_a -> attn_q_a_norm -> attn_q_b.
  std::vector<float> attn_q;          // {hidden, n_heads * qk_head_dim}
  std::vector<float> attn_q_a;        // {hidden, q_lora_rank}
  std::vector<float> attn_q_a_norm;   // {q_lora_rank}
  std::vector<float> attn_q_b;        // {q_lora_rank, n_heads * qk_head_dim}
  std::vector<float> attn_kv_a_mqa;   // {hidden, kv_lora_rank + qk_rope_dim}
  std::vector<float> attn_kv_a_norm;  // {kv_lora_rank}
  std::vector<float> attn_k_b;        // {qk_nope_dim, kv_lora_rank, n_heads}
  std::vector<float> attn_v_b;        // {kv_lora_rank, v_head_dim, n_heads}
  std::vector<float> attn_output;     // {n_heads * v_head_dim, hidden}
  std::vector<float> ffn_norm;        // {hidden}
  // Dense layers (layer < n_dense_layers).
  std::vector<float> ffn_gate;  // {hidden, dense_ff}
  std::vector<float> ffn_up;    // {hidden, dense_ff}
  std::vector<float> ffn_down;  // {dense_ff, hidden}
  // MoE layers.
  std::vector<float> ffn_gate_inp;    // {hidden, n_experts}
  std::vector<float> exp_probs_b;     // {n_experts}; empty when the file has none (V2)
  std::vector<float> ffn_gate_exps;   // {hidden, expert_ff, n_experts}
  std::vector<float> ffn_up_exps;     // {hidden, expert_ff, n_experts}
  std::vector<float> ffn_down_exps;   // {expert_ff, hidden, n_experts}
  std::vector<float> ffn_gate_shexp;  // {hidden, expert_ff * n_shared_experts}
  std::vector<float> ffn_up_shexp;    // {hidden, expert_ff * n_shared_experts}
  std::vector<float> ffn_down_shexp;  // {expert_ff * n_shared_experts, hidden}
};

struct Deepseek2Weights {
  std::vector<float> token_embd;   // {hidden, vocab}
  std::vector<float> output_norm;  // {hidden}
  // {hidden, vocab}; a copy of token_embd when the file has no output.weight
  // (tied embeddings, as llama.cpp falls back).
  std::vector<float> output;
  std::vector<Deepseek2LayerWeights> layers;

  // Reads and dequantizes every tensor `config` calls for. Tensors the file
  // has beyond those are ignored (e.g. NextN/MTP layers).
  static absl::StatusOr<Deepseek2Weights> Load(const GgufFile& file, const Deepseek2Config& config);
};

// Dequantizes one tensor after checking that it exists and has shape
// `expected_ne` (ggml order). Exposed for loaders of partial models (a worker
// that holds only some experts). InvalidArgument names the tensor.
absl::StatusOr<std::vector<float>> LoadTensorAsFloat(const GgufFile& file, const std::string& name,
                                                     const std::vector<int64_t>& expected_ne);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_DEEPSEEK2_WEIGHTS_H_
