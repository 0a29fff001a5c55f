#include "model/memory_plan.h"

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"
#include "formats/ggml_types.h"
#include "model/deepseek2/kv_b_layout.h"

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

// ---------------------------------------------------------------------------
// GPU memory.

namespace {

// Bytes of `n` values in a type whose blocks hold `block` values in `bytes`
// bytes; partial blocks (a split that does not fall on a block boundary)
// count as whole ones.
uint64_t BlockBytes(int64_t n, int64_t block, int64_t bytes) {
  return static_cast<uint64_t>((n + block - 1) / block) * static_cast<uint64_t>(bytes);
}

// How a tensor is cut for tensor parallelism: which dimension (ggml order),
// and in units of how many entries of it (a head's rows, ...).
struct TensorSplit {
  int dim = -1;  // -1: replicated
  int64_t units = 1;
  int64_t unit_size = 1;
};

TensorSplit SplitOf(absl::string_view name, const std::vector<int64_t>& ne,
                    const Deepseek2Config& c) {
  TensorSplit s;
  auto split = [&](int dim, int64_t units) {
    if (dim < static_cast<int>(ne.size()) && units > 0 && ne[dim] % units == 0) {
      s.dim = dim;
      s.units = units;
      s.unit_size = ne[dim] / units;
    }
  };
  const TensorPart part = PartOf(name);
  if (part == TensorPart::kAttention) {
    if (absl::StrContains(name, ".attn_q.") || absl::StrContains(name, ".attn_q_b.")) {
      split(1, c.n_heads);
    } else if (absl::StrContains(name, ".attn_k_b.") || absl::StrContains(name, ".attn_v_b.")) {
      split(2, c.n_heads);
    } else if (absl::StrContains(name, ".attn_output.")) {
      split(0, c.n_heads);
    }
  } else if ((part == TensorPart::kDenseFfn || part == TensorPart::kSharedExperts) &&
             ne.size() == 2) {
    // gate/up {hidden, ff}: output rows; down {ff, hidden}: input columns.
    split(absl::StrContains(name, "ffn_down") ? 0 : 1,
          absl::StrContains(name, "ffn_down") ? ne[0] : ne[1]);
  } else if ((part == TensorPart::kEmbeddings || part == TensorPart::kOutput) && ne.size() == 2) {
    split(1, ne[1]);
  }
  return s;
}

// "23.60 GiB", "548.2 MiB", "160.0 KiB".
std::string Gib(uint64_t bytes) {
  if (bytes >= (1ull << 30)) {
    return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1ull << 30));
  }
  if (bytes >= (1ull << 20)) {
    return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1ull << 20));
  }
  return absl::StrFormat("%.1f KiB", static_cast<double>(bytes) / (1ull << 10));
}

}  // namespace

uint64_t GpuResidentBytes(absl::string_view name, GgmlType type, const std::vector<int64_t>& ne) {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  if (n <= 0) return 0;
  const int64_t rows = ne.empty() ? 1 : n / ne[0];
  const int64_t row = ne.empty() ? 1 : ne[0];
  if (ne.size() <= 1 || absl::StrContains(name, "ffn_gate_inp")) {
    return static_cast<uint64_t>(n) * 4;
  }
  switch (type) {
    case GgmlType::kQ4_K:
      return static_cast<uint64_t>(rows) * BlockBytes(row, 256, 148);
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return static_cast<uint64_t>(n) * 2;
    default:  // Q8_0 as is, every other quant requantized to it
      return static_cast<uint64_t>(rows) * BlockBytes(row, 32, 34);
  }
}

uint64_t GpuMemoryPlan::max_device_bytes() const {
  uint64_t most = 0;
  for (const GpuDevicePlan& d : devices) most = std::max(most, d.total());
  return most;
}

GpuMemoryPlan PlanGpuMemory(const Deepseek2Config& c, const std::vector<GgufTensorInfo>& tensors,
                            const GpuPlanOptions& options) {
  MOEFLOW_CHECK(options.n_devices >= 1);
  MOEFLOW_CHECK(options.context_tokens >= 0 && options.max_batch_tokens >= 1);
  const int n = options.n_devices;
  GpuMemoryPlan plan;
  plan.options = options;
  plan.devices.resize(n);

  // Older-layout files: the gpu worker holds attn_k_b / attn_v_b derived
  // from attn_kv_b, not attn_kv_b (model/deepseek2/kv_b_layout.h).
  for (const GgufTensorInfo& t : WithDerivedMlaTensors(tensors, c)) {
    const TensorPart part = PartOf(t.name);
    if (part == TensorPart::kRoutedExperts) continue;
    const TensorSplit split = SplitOf(t.name, t.ne, c);
    for (int i = 0; i < n; ++i) {
      std::vector<int64_t> ne = t.ne;
      if (split.dim >= 0) ne[split.dim] = ShareOf(split.units, n, i) * split.unit_size;
      const uint64_t bytes = GpuResidentBytes(t.name, t.type, ne);
      plan.devices[i].weight_bytes_by_part[static_cast<int>(part)] += bytes;
      plan.devices[i].weight_bytes += bytes;
    }
  }

  const int64_t pages = (options.context_tokens + kGpuKvPageTokens - 1) / kGpuKvPageTokens;
  plan.kv_cache_positions = pages * kGpuKvPageTokens;
  plan.kv_bytes_per_token = static_cast<uint64_t>(c.n_layers) *
                            static_cast<uint64_t>(c.kv_lora_rank + c.qk_rope_dim) *
                            static_cast<uint64_t>(options.kv_bytes_per_value);
  const int64_t m = options.max_batch_tokens;
  const int64_t widest_ff =
      std::max(c.n_dense_layers > 0 ? c.dense_ff : 0, c.expert_ff * c.n_shared_experts);
  for (int i = 0; i < n; ++i) {
    GpuDevicePlan& d = plan.devices[i];
    d.kv_cache_bytes = static_cast<uint64_t>(plan.kv_cache_positions) * plan.kv_bytes_per_token;
    const int64_t h = ShareOf(c.n_heads, n, i);
    const int64_t row_dim = c.kv_lora_rank + c.qk_rope_dim;
    const int64_t floats = 3 * m * c.hidden + m * h * (c.qk_head_dim() + row_dim) +
                           m * h * (c.kv_lora_rank + c.v_head_dim) +
                           3 * m * ShareOf(widest_ff, n, i) + m * ShareOf(c.vocab_size, n, i) +
                           m * h * 16 * (c.kv_lora_rank + 2);
    d.activation_bytes = static_cast<uint64_t>(floats) * 4;
    d.workspace_bytes = d.activation_bytes + kCublasWorkspaceBytes + kCudaRuntimeReserveBytes;
  }
  return plan;
}

absl::Status CheckGpuMemoryFits(const GpuMemoryPlan& plan, uint64_t capacity_bytes,
                                absl::string_view worker_name, const std::vector<int>& device_ids) {
  if (capacity_bytes == 0) return absl::OkStatus();
  for (size_t i = 0; i < plan.devices.size(); ++i) {
    const GpuDevicePlan& d = plan.devices[i];
    if (d.total() <= capacity_bytes) continue;
    const int id = i < device_ids.size() ? device_ids[i] : static_cast<int>(i);
    return absl::FailedPreconditionError(absl::StrCat(
        worker_name, " device ", id, ": needs ", Gib(d.total()), " (weights ", Gib(d.weight_bytes),
        " as 1/", plan.devices.size(), " tensor-parallel share, KV cache ", Gib(d.kv_cache_bytes),
        " for ", plan.kv_cache_positions, " tokens, workspace ", Gib(d.workspace_bytes),
        ") but has ", Gib(capacity_bytes), " (vram_gib)"));
  }
  return absl::OkStatus();
}

}  // namespace moeflow
