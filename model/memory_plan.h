// How much memory a model's weights take, by part, and how the routed
// experts spread over NUMA nodes under each placement mode.
//
// Role in the data flow: `moeflow inspect` prints these numbers; the
// launcher and the cpu_expert_workers use the same arithmetic to decide
// what each node maps. Works from the tensor table alone (names and byte
// sizes), so it applies to any file with llama.cpp's MoE tensor names.
//
// Placement modes (one cpu_expert_worker per NUMA node):
//   replicate: every node holds every expert (bandwidth of all nodes for
//              every token, n× the memory);
//   slice:     every node holds a slice of every expert's intermediate
//              dimension (gate/up rows and the matching down columns, cut at
//              the down tensor's quant block), so each node reads 1/n of
//              each expert;
//   shard:     node i holds whole experts [i·k, (i+1)·k), k = ceil(E / n).
//
// GPU plan (PlanGpuMemory): what one gpu_worker needs in VRAM on each of its
// 1..N cards, tensor parallel: everything but the routed experts, held as the
// CUDA kernels keep it (kernels/cuda/weight_only_gemm.h):
//   Q4_K          → int4 repack, 148 B per 256 weights (4.625 bits: the 4-bit
//                   values plus the block's two f16 scales and its eight
//                   6-bit sub-scales/mins unpacked to bytes; exact);
//   Q8_0          → int8 repack, 34 B per 32 (same bytes as the file; exact);
//   BF16, F16 and F32 matrices → BF16 for cuBLAS (2 B);
//   other quants (Q6_K, Q5_K, Q5_0, ...) → requantized to int8 at load (34 B
//                   per 32; not exact: int8 of the dequantized values);
//   1-D tensors (norms, exp_probs_b) and the router (ffn_gate_inp) → F32.
// A file in the older MLA layout is planned with the attn_k_b / attn_v_b
// derived at load from each attn_kv_b (model/deepseek2/kv_b_layout.h) in
// place of attn_kv_b.
// Tensor parallel over n cards (card i gets share i, the first ones one
// more when it does not divide):
//   split by attention head: attn_q / attn_q_b (output rows), attn_k_b and
//     attn_v_b (per-head matrices), attn_output (input columns);
//   split by FFN row: the dense FFN and the shared experts (gate/up output
//     rows, down input columns);
//   split by vocabulary row: token_embd and output (vocab-parallel embedding
//     and lm_head, all-reduced / all-gathered);
//   replicated: attn_q_a, attn_kv_a_mqa (the low-rank projections every head
//     needs), the norms and the router.
// The MLA cache is one compressed row per position and layer (kv_lora_rank +
// qk_rope_dim values, BF16) shared by all heads, so every card holds all of
// it; positions are allocated in pages of kGpuKvPageTokens.
//
// Thread-safety: pure functions. Failure: none for the plans; tensors that do
// not look like routed experts are counted under their part and never split.
// CheckGpuMemoryFits returns FAILED_PRECONDITION naming the device, the need
// and the capacity.
#ifndef MOEFLOW_MODEL_MEMORY_PLAN_H_
#define MOEFLOW_MODEL_MEMORY_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/deepseek2/config.h"
#include "formats/ggml_types.h"
#include "model/gguf.h"

namespace moeflow {

// What a tensor is for, by its llama.cpp name.
enum class TensorPart {
  kRoutedExperts,  // blk.N.ffn_{gate,up,down}_exps
  kSharedExperts,  // blk.N.ffn_{gate,up,down}_shexp
  kAttention,      // blk.N.attn_* (projections and their norms)
  kDenseFfn,       // blk.N.ffn_{gate,up,down} of the dense layers
  kRouter,         // blk.N.ffn_gate_inp, blk.N.exp_probs_b
  kNorms,          // other norms (ffn_norm, output_norm)
  kEmbeddings,     // token_embd
  kOutput,         // output (lm_head)
  kOther,
};
constexpr int kNumTensorParts = 9;
TensorPart PartOf(absl::string_view tensor_name);
absl::string_view TensorPartName(TensorPart part);  // "routed_experts", ...

struct ModelBytes {
  uint64_t by_part[kNumTensorParts] = {};
  int64_t tensors_by_part[kNumTensorParts] = {};
  int64_t n_experts = 0;          // routed experts per MoE layer (ne[2], the largest seen)
  int64_t n_moe_layers = 0;       // layers with routed experts
  uint64_t bytes_per_expert = 0;  // one expert, summed over all MoE layers

  uint64_t routed_experts() const { return by_part[static_cast<int>(TensorPart::kRoutedExperts)]; }
  uint64_t total() const;
  uint64_t non_expert() const { return total() - routed_experts(); }
};
ModelBytes CountModelBytes(const std::vector<GgufTensorInfo>& tensors);

enum class ExpertPlacement { kReplicate, kSlice, kShard };
absl::string_view ExpertPlacementName(ExpertPlacement placement);  // "replicate", ...

struct NodeExperts {
  int64_t experts = 0;        // experts the node holds (whole or a slice of each)
  uint64_t expert_bytes = 0;  // routed-expert bytes mapped on this node
};

struct PlacementPlan {
  ExpertPlacement placement = ExpertPlacement::kReplicate;
  std::vector<NodeExperts> nodes;
  // Routed-expert bytes summed over the nodes (replicate: n × the file's).
  uint64_t total_expert_bytes() const;
  uint64_t max_node_bytes() const;
};

// Plans the routed experts of `tensors` over `n_nodes` (>= 1) nodes.
PlacementPlan PlanExpertPlacement(const std::vector<GgufTensorInfo>& tensors,
                                  ExpertPlacement placement, int n_nodes);

// ---------------------------------------------------------------------------
// GPU memory (see the top of this file for the layout and the split).

// KV cache positions are allocated in pages of this many tokens (the paged
// cache of kernels/cuda/mla_attention.h).
constexpr int64_t kGpuKvPageTokens = 64;
// cuBLAS workspace per device: NVIDIA's recommendation for Hopper (32 MiB,
// cuBLAS docs, cublasSetWorkspace), used for Ada too.
constexpr uint64_t kCublasWorkspaceBytes = uint64_t{32} << 20;
// What the CUDA context, cuBLAS and NCCL handles take per device before any
// allocation of ours: an estimate (a few hundred MiB on recent drivers), not
// a measurement.
constexpr uint64_t kCudaRuntimeReserveBytes = uint64_t{512} << 20;

// Bytes a tensor of `type` and shape `ne` takes on the GPU (rules above).
uint64_t GpuResidentBytes(absl::string_view tensor_name, GgmlType type,
                          const std::vector<int64_t>& ne);

struct GpuPlanOptions {
  int n_devices = 1;               // tensor-parallel cards (>= 1)
  int64_t context_tokens = 4096;   // KV cache positions, all sequences together
  int64_t max_batch_tokens = 64;   // tokens one step carries (prefill chunk)
  int64_t kv_bytes_per_value = 2;  // BF16 cache
};

struct GpuDevicePlan {
  uint64_t weight_bytes_by_part[kNumTensorParts] = {};  // routed experts: always 0
  uint64_t weight_bytes = 0;
  uint64_t kv_cache_bytes = 0;
  uint64_t activation_bytes = 0;  // step buffers (see PlanGpuMemory)
  uint64_t workspace_bytes = 0;   // activations + cuBLAS workspace + runtime reserve
  uint64_t total() const { return weight_bytes + kv_cache_bytes + workspace_bytes; }
};

struct GpuMemoryPlan {
  GpuPlanOptions options;
  int64_t kv_cache_positions = 0;   // context rounded up to whole pages
  uint64_t kv_bytes_per_token = 0;  // all layers, one card
  std::vector<GpuDevicePlan> devices;
  uint64_t max_device_bytes() const;
};

// Plans the gpu_worker part of `tensors` (a file's table, or PlanTensors'
// for a shape) for `config` over options.n_devices cards. Activations per
// card for a step of M = max_batch_tokens tokens (f32): the residual, its
// norm and the attention output (3·M·hidden), the queries and absorbed
// queries (M·h·(qk_head + kv_lora + rope)), the attention context (M·h·
// (kv_lora + v_head)), the FFN intermediate (3·M·ff_i of the widest FFN) and
// the logits (M·vocab_i), with h and ff_i the card's share of heads and FFN
// rows; plus the decode attention's split-K partials (M·h·16·(kv_lora + 2)).
GpuMemoryPlan PlanGpuMemory(const Deepseek2Config& config,
                            const std::vector<GgufTensorInfo>& tensors,
                            const GpuPlanOptions& options);

// OK when every card's share fits `capacity_bytes` (0: unknown, not
// checked). FAILED_PRECONDITION otherwise, e.g. "gpu_workers[0] device 1:
// needs 25.31 GiB (weights 20.10 GiB as 1/2 tensor-parallel share, KV cache
// 4.29 GiB for 65536 tokens, workspace 942.0 MiB) but has 24.00 GiB
// (vram_gib)". `device_ids` names the
// cards (plan.devices.size() of them; empty: 0, 1, ...).
absl::Status CheckGpuMemoryFits(const GpuMemoryPlan& plan, uint64_t capacity_bytes,
                                absl::string_view worker_name, const std::vector<int>& device_ids);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_MEMORY_PLAN_H_
