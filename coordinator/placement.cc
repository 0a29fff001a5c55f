#include "coordinator/placement.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "coordinator/topology.h"
#include "model/memory_plan.h"

namespace moeflow {

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", bytes, units[u]);
  return buf;
}

ExpertPlan MakeExpertPlan(const Deepseek2Config& cfg, proto::ExpertPlacement placement,
                          int n_workers) {
  ExpertPlan plan;
  plan.placement = placement;
  plan.n_workers = n_workers;
  plan.owner.assign(static_cast<size_t>(cfg.n_experts), -1);
  plan.shards.resize(static_cast<size_t>(n_workers));
  const int64_t per_worker = (cfg.n_experts + n_workers - 1) / n_workers;
  for (int i = 0; i < n_workers; ++i) {
    proto::ShardSpec& shard = plan.shards[static_cast<size_t>(i)];
    shard.mutable_layers()->set_first_layer(static_cast<int32_t>(cfg.n_dense_layers));
    shard.mutable_layers()->set_end_layer(static_cast<int32_t>(cfg.n_layers));
    if (placement == proto::EXPERT_PLACEMENT_SHARD) {
      for (int64_t x = i * per_worker; x < std::min<int64_t>(cfg.n_experts, (i + 1) * per_worker);
           ++x) {
        shard.add_expert_ids(static_cast<int32_t>(x));
        plan.owner[static_cast<size_t>(x)] = i;
      }
    } else if (placement == proto::EXPERT_PLACEMENT_SLICE) {
      shard.set_slice_index(i);
      shard.set_slice_count(n_workers);
    }
  }
  if (placement == proto::EXPERT_PLACEMENT_REPLICATE) {
    for (int64_t x = 0; x < cfg.n_experts; ++x) {
      plan.owner[static_cast<size_t>(x)] = static_cast<int>(x % n_workers);
    }
  }
  return plan;
}

absl::StatusOr<ExpertPlan> PlanExperts(const Deepseek2Config& cfg,
                                       const std::vector<GgufTensorInfo>& tensors,
                                       const proto::Topology& topo, uint64_t mem_total,
                                       const std::function<void(const std::string&)>& log) {
  const int n = topo.expert_workers_size();
  const uint64_t per_node = mem_total / static_cast<uint64_t>(std::max(1, n));
  auto plan_for = [&](proto::ExpertPlacement p) {
    const ExpertPlacement mp = p == proto::EXPERT_PLACEMENT_SHARD   ? ExpertPlacement::kShard
                               : p == proto::EXPERT_PLACEMENT_SLICE ? ExpertPlacement::kSlice
                                                                    : ExpertPlacement::kReplicate;
    return PlanExpertPlacement(tensors, mp, n);
  };
  proto::ExpertPlacement placement = topo.placement();
  if (placement == proto::EXPERT_PLACEMENT_AUTO ||
      placement == proto::EXPERT_PLACEMENT_UNSPECIFIED) {
    placement =
        mem_total == 0 || plan_for(proto::EXPERT_PLACEMENT_REPLICATE).max_node_bytes() <= per_node
            ? proto::EXPERT_PLACEMENT_REPLICATE
            : proto::EXPERT_PLACEMENT_SLICE;
  }
  const PlacementPlan memory = plan_for(placement);
  const ModelBytes bytes = CountModelBytes(tensors);
  log(absl::StrCat("memory plan (placement ", ExpertPlacementYamlName(placement),
                   "): gpu0 non-expert weights ", FormatBytes(bytes.non_expert())));
  for (size_t i = 0; i < memory.nodes.size(); ++i) {
    log(absl::StrCat("  expert", i, " (numa ", topo.expert_workers(static_cast<int>(i)).numa_node(),
                     "): ", memory.nodes[i].experts, " experts, ",
                     FormatBytes(memory.nodes[i].expert_bytes), " of routed experts"));
  }
  if (mem_total > 0 && memory.max_node_bytes() > per_node) {
    return absl::FailedPreconditionError(
        absl::StrCat("memory plan: placement ", ExpertPlacementYamlName(placement), " needs ",
                     FormatBytes(memory.max_node_bytes()),
                     " of routed experts on one node, more than its share ", FormatBytes(per_node),
                     " of ", FormatBytes(mem_total), " (use slice or shard)"));
  }
  return MakeExpertPlan(cfg, placement, n);
}

}  // namespace moeflow
