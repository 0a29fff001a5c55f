// Where the routed experts go: the placement (replicate, shard, slice; auto
// picks replicate when every node can hold all experts, else slice), which
// expert worker owns which expert, each worker's ShardSpec, and the memory
// plan's check that a node's share fits.
//
// Role in the data flow: Coordinator::Start plans once from the topology and
// the model file; the layer driver's ExpertDispatch (expert_dispatch.h)
// routes each (token, expert) pair by the plan; the single-process topology
// (local_topology.h) uses the one-worker replicate plan.
//
// Thread-safety: plain values. Failure: PlanExperts returns
// FAILED_PRECONDITION when the chosen placement's largest node share does
// not fit that node's part of the host's memory (naming both sizes).
#ifndef MOEFLOW_COORDINATOR_PLACEMENT_H_
#define MOEFLOW_COORDINATOR_PLACEMENT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "proto/topology.pb.h"
#include "proto/worker.pb.h"

namespace moeflow {

struct ExpertPlan {
  proto::ExpertPlacement placement = proto::EXPERT_PLACEMENT_REPLICATE;
  int n_workers = 1;
  // Expert id -> the expert worker (0-based) holding it whole; -1 under slice
  // (every worker holds a slice of every expert).
  std::vector<int> owner;
  // Per expert worker: what it holds.
  std::vector<proto::ShardSpec> shards;

  bool slice() const { return placement == proto::EXPERT_PLACEMENT_SLICE; }
};

// The plan for `n_workers` expert workers under `placement` (not AUTO).
// Replicate: whole experts, worker e mod n computes expert e (each expert's
// batch of tokens is one matmul, as when one process computes everything);
// shard: contiguous ranges; slice: every worker a slice of every expert.
ExpertPlan MakeExpertPlan(const Deepseek2Config& config, proto::ExpertPlacement placement,
                          int n_workers);

// Resolves AUTO, checks the memory plan against `mem_total` bytes (0: not
// checked) split over the workers, and logs it through `log`.
absl::StatusOr<ExpertPlan> PlanExperts(const Deepseek2Config& config,
                                       const std::vector<GgufTensorInfo>& tensors,
                                       const proto::Topology& topology, uint64_t mem_total,
                                       const std::function<void(const std::string&)>& log);

// "12.30 GiB".
std::string FormatBytes(double bytes);

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_PLACEMENT_H_
