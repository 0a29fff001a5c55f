// The coordinator of `moeflow launch`: reads the topology, plans the
// experts (placement.h), starts or attaches to the worker processes
// (worker_supervisor.h) and runs each step through them with the layer
// driver (layer_driver.h) — the StepEngine the batch model and the one
// scheduler run on (dataflow_batch_model.h, server/batching_scheduler.h).
//
//   attention worker (gpu0): in this process (CPU backend, the default) or
//   its own gpu_worker process (separate_process, CUDA);
//   expert workers: one cpu_expert_worker per topology entry, spawned here
//   or attached to by address (started by hand on another host).
//
// A CPU-backend gpu worker runs inside the coordinator process unless the
// topology says separate_process: its requests are function calls and the
// expert requests leave from inside its reply, before it computes the
// shared experts — which overlap the expert workers' compute only when the
// two pools fit this host's cores together (overlap_shared_experts auto;
// otherwise they would take turns on the cores and a pool thread
// descheduled inside its chunk stalls its whole parallel loop).
//
// Thread-safety: all public methods are thread-safe; Steps are serialized
// (one data-plane user at a time, as UCX's single-thread worker requires).
// Failure: Start returns INVALID_ARGUMENT (topology/model), FAILED_PRECONDITION
// (a worker refused its configuration, e.g. backend cuda in a CPU-only
// build; a memory plan that does not fit), UNAVAILABLE (a worker did not
// start). Step returns UNAVAILABLE naming the worker when one is down or
// dies during the step (within ~100 ms of its exit), DEADLINE_EXCEEDED if a
// reply takes longer than step_timeout_ms.
#ifndef MOEFLOW_COORDINATOR_COORDINATOR_H_
#define MOEFLOW_COORDINATOR_COORDINATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/layer_driver.h"
#include "coordinator/placement.h"
#include "coordinator/step_engine.h"
#include "coordinator/step_metrics.h"
#include "coordinator/worker_supervisor.h"
#include "dataflow/in_process_client.h"
#include "gpu_worker/cpu_backend.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "proto/control.pb.h"
#include "proto/topology.pb.h"

namespace moeflow {

struct CoordinatorOptions {
  proto::Topology topology;
  // Paths of the worker executables.
  std::string gpu_worker_binary;
  std::string expert_worker_binary;
  // Sequences one step may carry (the scheduler's --parallel).
  int64_t max_sequences = 8;
  // Deadline of one control RPC (Configure, Connect, Health, ...).
  int rpc_timeout_ms = 10000;
  // Deadline of one worker's whole Load stream.
  int load_timeout_ms = 600000;
  // Longest wait for one reply of one layer before the step fails.
  int step_timeout_ms = 60000;
  // Period of child reaping and liveness checks.
  int monitor_interval_ms = 100;
  // Start a worker again when its process exits (or attach again to a lost
  // worker that was started by hand).
  bool restart_workers = true;
  // Period of attempts to attach again to a lost hand-started worker.
  int reattach_interval_ms = 1000;
  // Whether the in-process gpu worker computes the shared experts while the
  // expert workers compute the routed ones. kAuto: only when the two pools
  // fit this host's cores together (OverlapSharedExperts in coordinator.cc).
  enum class Overlap { kAuto, kOn, kOff };
  Overlap overlap_shared_experts = Overlap::kAuto;
  // Where progress lines go (load progress, memory plan, restarts).
  std::function<void(const std::string&)> log = [](const std::string&) {};
};

class Coordinator final : public StepEngine {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator() override;

  const Deepseek2Config& config() const override { return config_; }
  const StepLimits& limits() const override { return limits_; }
  absl::Status Step(absl::Span<const StepSegment> segments, bool all_logits,
                    absl::Span<float> logits) override;
  int64_t kv_epoch() const override { return supervisor_->connects(0); }
  // Every worker serves.
  bool ready() const override { return supervisor_->AllServing(); }

  const GgufFile& model_file() const { return *file_; }
  std::string model_name() const { return model_name_; }

  // Workers and their states; SERVING when every worker serves.
  void FillStatus(proto::StatusResponse* status);
  bool AllServing() { return supervisor_->AllServing(); }
  // Per-worker per-layer counters (the workers' Stats, the in-process gpu
  // worker's as "gpu0") and the coordinator's own (step_metrics.h).
  void FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset);
  void StepTimePercentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50) {
    metrics_->Percentiles(p50, p99, batch_p50);
  }
  void StepTimeHistogram(std::vector<int64_t>* le_us, std::vector<int64_t>* counts) {
    metrics_->Histogram(le_us, counts);
  }

  // Router top-k from the next step on. INVALID_ARGUMENT outside [0, model's].
  absl::StatusOr<int> SetActiveExperts(int k);
  int active_experts() const { return k_.load(); }

  // Stops the workers. Idempotent.
  void Shutdown();

 private:
  Coordinator() = default;

  CoordinatorOptions options_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  std::string model_name_;
  absl::Time start_time_;
  ExpertPlan plan_;
  StepLimits limits_;
  std::atomic<int> k_{0};
  // The gpu worker when it runs in this process.
  std::unique_ptr<CpuGpuWorkerBackend> local_gpu_;
  std::unique_ptr<dataflow::InProcessClient> local_gpu_client_;
  std::unique_ptr<WorkerSupervisor> supervisor_;
  std::unique_ptr<LayerDriver> driver_;
  std::unique_ptr<StepMetrics> metrics_;
  std::vector<proto::LayerStats> step_stats_;  // under the supervisor's data-plane mutex
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_COORDINATOR_H_
