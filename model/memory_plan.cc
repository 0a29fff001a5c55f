#include "model/memory_plan.h"

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "base/check.h"
#include "model/ggml_types.h"

namespace moeflow {
namespace {

int64_t LayerOf(absl::string_view name) {
  if (!absl::StartsWith(name, "blk.")) return -1;
  int64_t layer = 0;
  size_t i = 4;
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9')
    layer = layer * 10 + (name[i++] - '0');
  return layer;
}

bool IsExpertTensor(const GgufTensorInfo& t) {
  return PartOf(t.name) == TensorPart::kRoutedExperts && t.ne.size() == 3 && t.ne[2] > 0;
}

// Share i of `total` units split over n as evenly as possible (the first
// total % n shares get one more).
int64_t ShareOf(int64_t total, int n, int i) { return total / n + (i < total % n ? 1 : 0); }

}  // namespace

TensorPart PartOf(absl::string_view name) {
  if (absl::StrContains(name, "_exps.")) return TensorPart::kRoutedExperts;
  if (absl::StrContains(name, "_shexp.")) return TensorPart::kSharedExperts;
  if (absl::StrContains(name, "ffn_gate_inp") || absl::StrContains(name, "exp_probs_b")) {
    return TensorPart::kRouter;
  }
  if (absl::StartsWith(name, "blk.") && absl::StrContains(name, ".attn_")) {
    return TensorPart::kAttention;
  }
  if (absl::StrContains(name, ".ffn_gate.") || absl::StrContains(name, ".ffn_up.") ||
      absl::StrContains(name, ".ffn_down.")) {
    return TensorPart::kDenseFfn;
  }
  if (absl::EndsWith(name, "_norm.weight")) return TensorPart::kNorms;
  if (name == "token_embd.weight") return TensorPart::kEmbeddings;
  if (name == "output.weight") return TensorPart::kOutput;
  return TensorPart::kOther;
}

absl::string_view TensorPartName(TensorPart part) {
  switch (part) {
    case TensorPart::kRoutedExperts:
      return "routed_experts";
    case TensorPart::kSharedExperts:
      return "shared_experts";
    case TensorPart::kAttention:
      return "attention";
    case TensorPart::kDenseFfn:
      return "dense_ffn";
    case TensorPart::kRouter:
      return "router";
    case TensorPart::kNorms:
      return "norms";
    case TensorPart::kEmbeddings:
      return "embeddings";
    case TensorPart::kOutput:
      return "output";
    case TensorPart::kOther:
      return "other";
  }
  return "other";
}

uint64_t ModelBytes::total() const {
  uint64_t sum = 0;
  for (uint64_t b : by_part) sum += b;
  return sum;
}

ModelBytes CountModelBytes(const std::vector<GgufTensorInfo>& tensors) {
  ModelBytes bytes;
  std::map<int64_t, bool> moe_layers;
  for (const GgufTensorInfo& t : tensors) {
    const int part = static_cast<int>(PartOf(t.name));
    bytes.by_part[part] += t.n_bytes;
    ++bytes.tensors_by_part[part];
    if (IsExpertTensor(t)) {
      bytes.n_experts = std::max(bytes.n_experts, t.ne[2]);
      bytes.bytes_per_expert += t.n_bytes / t.ne[2];
      moe_layers[LayerOf(t.name)] = true;
    }
  }
  bytes.n_moe_layers = static_cast<int64_t>(moe_layers.size());
  return bytes;
}

absl::string_view ExpertPlacementName(ExpertPlacement placement) {
  switch (placement) {
    case ExpertPlacement::kReplicate:
      return "replicate";
    case ExpertPlacement::kSlice:
      return "slice";
    case ExpertPlacement::kShard:
      return "shard";
  }
  return "replicate";
}

uint64_t PlacementPlan::total_expert_bytes() const {
  uint64_t sum = 0;
  for (const NodeExperts& n : nodes) sum += n.expert_bytes;
  return sum;
}

uint64_t PlacementPlan::max_node_bytes() const {
  uint64_t most = 0;
  for (const NodeExperts& n : nodes) most = std::max(most, n.expert_bytes);
  return most;
}

PlacementPlan PlanExpertPlacement(const std::vector<GgufTensorInfo>& tensors,
                                  ExpertPlacement placement, int n_nodes) {
  MOEFLOW_CHECK(n_nodes >= 1);
  PlacementPlan plan;
  plan.placement = placement;
  plan.nodes.resize(n_nodes);
  const ModelBytes bytes = CountModelBytes(tensors);
  const int64_t n_experts = bytes.n_experts;

  switch (placement) {
    case ExpertPlacement::kReplicate:
      for (NodeExperts& node : plan.nodes) {
        node.experts = n_experts;
        node.expert_bytes = bytes.routed_experts();
      }
      break;

    case ExpertPlacement::kShard: {
      auto count_on = [n_nodes](int64_t experts, int node) {
        const int64_t per_node = (experts + n_nodes - 1) / n_nodes;
        return std::clamp<int64_t>(experts - node * per_node, 0, per_node);
      };
      for (int i = 0; i < n_nodes; ++i) plan.nodes[i].experts = count_on(n_experts, i);
      for (const GgufTensorInfo& t : tensors) {
        if (PartOf(t.name) != TensorPart::kRoutedExperts) continue;
        if (!IsExpertTensor(t)) {
          plan.nodes[0].expert_bytes += t.n_bytes;  // not splittable: node 0 keeps it
          continue;
        }
        for (int i = 0; i < n_nodes; ++i) {
          plan.nodes[i].expert_bytes += count_on(t.ne[2], i) * (t.n_bytes / t.ne[2]);
        }
      }
      break;
    }

    case ExpertPlacement::kSlice: {
      for (NodeExperts& node : plan.nodes) node.experts = n_experts;
      // The cut is in units of the down projection's quant block, so that
      // node i's gate/up rows are exactly the columns of its down slice.
      std::map<int64_t, const GgufTensorInfo*> down_of_layer;
      for (const GgufTensorInfo& t : tensors) {
        if (IsExpertTensor(t) && absl::StrContains(t.name, "ffn_down_exps")) {
          down_of_layer[LayerOf(t.name)] = &t;
        }
      }
      for (const GgufTensorInfo& t : tensors) {
        if (PartOf(t.name) != TensorPart::kRoutedExperts) continue;
        auto it = down_of_layer.find(LayerOf(t.name));
        const GgufTensorInfo* down = it == down_of_layer.end() ? nullptr : it->second;
        const bool is_down = down == &t;
        const bool pairs = down != nullptr && IsExpertTensor(t) &&
                           (is_down || (t.ne[1] == down->ne[0] && t.ne[2] == down->ne[2]));
        if (!pairs) {
          for (int i = 0; i < n_nodes; ++i) {
            plan.nodes[i].expert_bytes += ShareOf(t.n_bytes, n_nodes, i);
          }
          continue;
        }
        const GgmlTypeTraits& down_traits = Traits(down->type);
        const int64_t unit = down_traits.block_size;
        const int64_t units = down->ne[0] / unit;
        for (int i = 0; i < n_nodes; ++i) {
          const int64_t my_units = ShareOf(units, n_nodes, i);
          if (is_down) {
            plan.nodes[i].expert_bytes += my_units * down_traits.type_size * t.ne[1] * t.ne[2];
          } else {
            const uint64_t row_bytes = t.n_bytes / (t.ne[1] * t.ne[2]);
            plan.nodes[i].expert_bytes += my_units * unit * row_bytes * t.ne[2];
          }
        }
      }
      break;
    }
  }
  return plan;
}

}  // namespace moeflow
