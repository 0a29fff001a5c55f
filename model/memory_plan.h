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
// Thread-safety: pure functions. Failure: none; tensors that do not look
// like routed experts are counted under their part and never split.
#ifndef MOEFLOW_MODEL_MEMORY_PLAN_H_
#define MOEFLOW_MODEL_MEMORY_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
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

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_MEMORY_PLAN_H_
