// cpu_expert_worker's compute: the routed experts of one NUMA node, for the
// (token, expert) pairs the coordinator sends it.
//
// Role in the data flow: Load maps the GGUF — of a split model only the
// shards holding routed-expert tensors — and keeps the node's part of
// every MoE layer's routed experts — placement replicate (all experts),
// shard (ShardSpec.expert_ids), or slice (ShardSpec.slice_index of
// slice_count parts of every expert's intermediate dimension: gate/up rows
// and the matching columns of down, repacked into memory first touched by
// this process, i.e. on its node). Each kExperts request is computed with
// the engine's EngineRoutedExperts with one pair per row and weight 1, which
// yields each pair's unweighted expert output; the coordinator weights and
// sums them in the engine's order, so replicate/shard results are
// bit-identical to the single-process topology (slice: equal up to float
// summation).
// A kExpertsCombine request (this worker holds every pair of the step) is
// the engine's own call — the rows, their k experts and weights — and the
// reply is the weighted sum per row, k times smaller.
//
// NUMA: when the hwloc topology is the real machine, the process binds its
// threads and memory to the node; HWLOC_SYNTHETIC topologies are only
// simulated (nothing is bound).
//
// Thread-safety: as WorkerCompute. Failure: Configure INVALID_ARGUMENT names
// the bad ShardSpec field; Load INVALID_ARGUMENT for expert ids outside the
// model or a slice that does not fall on quant-block boundaries; Handle
// INVALID_ARGUMENT for a pair whose expert this shard does not hold, a
// payload whose size does not match n_rows / n_pairs / flags, unknown flags,
// or a kExpertsCombine request whose pairs are not k per row in row order.
#ifndef MOEFLOW_CPU_EXPERT_WORKER_EXPERT_SHARD_H_
#define MOEFLOW_CPU_EXPERT_WORKER_EXPERT_SHARD_H_

#include <memory>
#include <string>
#include <vector>

#include "base/aligned_allocator.h"
#include "dataflow/worker_compute.h"
#include "engine/engine.h"
#include "kernels/cpu/numa.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/weight_memory.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"

namespace moeflow {

class ExpertShard final : public dataflow::WorkerCompute {
 public:
  // `shared_pool` (may be null; must outlive the shard): compute on it
  // instead of a pool pinned to the node (the single-process topology).
  explicit ExpertShard(ThreadPool* shared_pool = nullptr) : shared_pool_(shared_pool) {}

  absl::Status Configure(const proto::ConfigureRequest& request) override;
  // Makes Load use `file` (the request's model_path, opened by the caller,
  // every shard mapped) instead of opening and parsing the file again: the
  // single-process topology gives its one GgufFile to both of its components.
  void UseOpenFile(std::shared_ptr<const GgufFile> file) { open_file_ = std::move(file); }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override;
  size_t MaxRequestBytes() const override;
  size_t MaxReplyBytes() const override;
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override;
  int64_t ShardBytes() const override { return shard_bytes_; }
  // The model as Load opened it (null before): a split model's shards
  // without routed experts are unmapped (GgufShard::mapped()), unless the
  // file came from UseOpenFile (then it is the caller's, as it opened it).
  const GgufFile* file() const { return file_.get(); }
  void Idle() override {
    if (own_pool_ != nullptr) own_pool_->Rest();
  }
  void Busy() override {
    if (own_pool_ != nullptr) own_pool_->Wake();
  }
  void PinCaller() override {
    if (own_pool_ != nullptr) (void)PinCallerThread(caller_cpu_);
  }

  // Binds the process to `numa_node` when hwloc describes the real machine.
  // Returns a line for the log saying what was done.
  static std::string BindToNode(int numa_node, int* node_cores);

 private:
  // Whether Load copies the held experts into this process's memory (a
  // NodeBuffer per tensor): expert memory "node", or "auto" — bound to the
  // node on a machine with more than one NUMA node, else a huge-page copy
  // (kernels/cpu/weight_memory.h) unless MOEFLOW_HUGEPAGES=0 or the copy
  // would take more than 80 % of the available memory. Sets numa_ when it
  // does. FAILED_PRECONDITION when "node" cannot be had.
  // `held_bytes`: the held experts' bytes (what a copy takes).
  absl::StatusOr<bool> CopyExpertsToNode(int64_t held_bytes);

  proto::ConfigureRequest request_;
  std::shared_ptr<const GgufFile> open_file_;  // UseOpenFile's
  std::shared_ptr<const GgufFile> file_;
  Deepseek2Config config_;        // the file's
  Deepseek2Config shard_config_;  // expert_ff divided by slice_count
  Deepseek2RopeParams rope_;
  EngineWeights weights_;
  // Slice placement: per layer, the repacked gate/up/down of this slice.
  std::vector<WeightBuffer> slice_bytes_;
  // memory "node" (replicate, shard): the held experts copied into memory
  // bound to the worker's node, one buffer per expert tensor, laid out as
  // the file's tensor (the experts not held are never touched, so they take
  // no memory). numa_ outlives the buffers (declared first).
  std::unique_ptr<NumaTopology> numa_;
  std::vector<NodeBuffer> node_buffers_;
  // The same without a node (numa_node -1, the single-process topology):
  // one huge-page buffer for every expert tensor, each at a 4 KiB boundary.
  WeightBuffer plain_buffer_;
  // The held experts in the layout this CPU's kernels want, when they were
  // mapped from the file (RepackRoutedExperts; copies are repacked in place).
  std::vector<std::unique_ptr<uint8_t[]>> repacked_;
  std::vector<EngineLayerWeights> shard_layers_;
  std::vector<uint8_t> holds_expert_;
  ThreadPool* const shared_pool_;
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool* pool_ = nullptr;
  int caller_cpu_ = -1;  // PinReport::caller_cpu of pool_
  EngineScratch scratch_;
  EngineContext ctx_;
  int64_t max_rows_ = 0, max_pairs_ = 0;
  int64_t shard_bytes_ = 0;
  int node_cores_ = 0;
  // expanded_: written row by row by each pairs request before it is read
  // (ScratchVector: resident only once a pairs request has used it; a
  // kExpertsCombine request never does).
  ScratchVector<float> expanded_;
  std::vector<float> ones_;
};

}  // namespace moeflow

#endif  // MOEFLOW_CPU_EXPERT_WORKER_EXPERT_SHARD_H_
