// The coordinator: starts the worker processes of a topology, connects their
// data plane, and drives every forward pass layer by layer:
//
//   gpu_worker: embed ─► per layer: attention + norm + router (part 0)
//                                    ├─► cpu_expert_workers: (token, expert) pairs
//                                    └─► gpu_worker: shared experts (part 1, overlapped)
//               coordinator: y·w summed per token in the engine's j order,
//               + shared + residual (Combine) ─► next layer ─► gpu_worker: output head
//
// Routed-expert outputs come back unweighted per (token, expert) pair and are
// weighted and summed here in the single-process engine's order, so with
// placement replicate or shard the logits are bit-identical to
// Deepseek2Engine's; slice adds the partial outputs of the nodes first (in
// node order: deterministic, equal up to float summation).
//
// Worker lifecycle as seen from here:
//
//   spawn ─► Configure ─► Load (progress) ─► Connect ─► SERVING
//     ▲                                                   │ (process exits / peer lost)
//     └──────────── restart (if restart_workers) ◄── FAILED (requests: UNAVAILABLE)
//
// Thread-safety: all public methods are thread-safe. Forward calls are
// serialized (one data-plane user at a time, as UCX's single-thread worker
// requires); a monitor thread reaps exited children (waitpid every
// monitor_interval_ms), health-checks the workers and restarts lost ones.
// Failure: Start returns INVALID_ARGUMENT (topology/model), FAILED_PRECONDITION
// (a worker refused its configuration, e.g. backend cuda in a CPU-only
// build; a memory plan that does not fit), UNAVAILABLE (a worker did not start).
// Forward returns UNAVAILABLE naming the worker when one is down or dies
// during the pass (within ~100 ms of its exit), INVALID_ARGUMENT for bad
// tokens, DEADLINE_EXCEEDED if a reply takes longer than step_timeout_ms.
#ifndef MOEFLOW_COORDINATOR_COORDINATOR_H_
#define MOEFLOW_COORDINATOR_COORDINATOR_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "proto/control.pb.h"
#include "proto/topology.pb.h"
#include "proto/worker.grpc.pb.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

namespace moeflow {

struct CoordinatorOptions {
  proto::Topology topology;
  // Paths of the worker executables.
  std::string gpu_worker_binary;
  std::string expert_worker_binary;
  // Deadline of one control RPC (Configure, Connect, Health, ...).
  int rpc_timeout_ms = 10000;
  // Deadline of one worker's whole Load stream.
  int load_timeout_ms = 600000;
  // Longest wait for one reply of one layer before the pass fails.
  int step_timeout_ms = 60000;
  // Period of child reaping and liveness checks.
  int monitor_interval_ms = 100;
  // Start a worker again when its process exits.
  bool restart_workers = true;
  // Where progress lines go (load progress, memory plan, restarts).
  std::function<void(const std::string&)> log = [](const std::string&) {};
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator();

  // Runs `tokens` at positions start_pos.. (the gpu_worker's KV cache must
  // hold positions < start_pos). `logits` gets [n × vocab], or [vocab] of the
  // last position when last_only.
  absl::Status Forward(absl::Span<const int32_t> tokens, int64_t start_pos, bool last_only,
                       std::vector<float>* logits);

  const Deepseek2Config& config() const { return config_; }
  // Positions one sequence may use: the gpu_worker's KV cache capacity.
  int64_t context_tokens() const {
    const int64_t kv = options_.topology.gpu_workers(0).kv_cache_tokens();
    return kv > 0 ? std::min(kv, config_.context_length) : config_.context_length;
  }
  const GgufFile& model_file() const { return *file_; }
  std::string model_name() const { return model_name_; }

  // Workers and their states; state SERVING when every worker serves.
  void FillStatus(proto::StatusResponse* status);
  bool AllServing();
  // Per-worker per-layer counters (Stats RPCs) plus the coordinator's own
  // ("coordinator": transport_time_us is the expert round trip of a MoE layer
  // — staging the pairs, sends, the expert workers' compute, replies — so
  // minus the workers' compute_time_us it is the data-plane overhead;
  // compute_time_us is the wait for the shared experts' tail plus combine).
  void FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset);
  // Step time percentiles (us) over the recent steps.
  void StepTimePercentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50);

  // Router top-k from the next pass on. INVALID_ARGUMENT outside [0, model's].
  absl::StatusOr<int> SetActiveExperts(int k);
  int active_experts() const { return k_.load(); }

  // Stops the monitor, asks every worker to shut down, reaps them (SIGKILL
  // after a grace period). Idempotent.
  void Shutdown();

 private:
  struct Worker;
  Coordinator() = default;

  absl::Status SpawnAndLoad(Worker& w);
  absl::Status ConnectWorker(Worker& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  void MonitorLoop();
  void KillProcess(Worker& w);
  absl::Status RunChunk(absl::Span<const int32_t> tokens, int64_t start_pos, bool want_logits,
                        bool last_only, float* logits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  absl::StatusOr<size_t> Await(Worker& w, transport::TransferId id, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  absl::Status CheckReply(Worker& w, const uint8_t* reply, size_t bytes, size_t expected_payload);
  void SetWorkerError(Worker& w, const std::string& error);

  CoordinatorOptions options_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  std::string model_name_;
  proto::ExpertPlacement placement_ = proto::EXPERT_PLACEMENT_REPLICATE;
  int64_t max_batch_ = 64;
  std::atomic<int> k_{0};
  absl::Time start_time_;

  absl::Mutex dataplane_mu_;
  std::unique_ptr<transport::UcxContext> ucx_context_;
  std::unique_ptr<transport::UcxWorker> ucx_worker_ ABSL_GUARDED_BY(dataplane_mu_);
  std::vector<std::unique_ptr<Worker>> workers_;  // [0] gpu_worker, then expert workers
  std::vector<int> expert_owner_;                 // expert id -> index in workers_ (not slice)
  // Scratch of the pass (sized at Start).
  std::vector<float> x_, routed_, ysum_;
  std::vector<int32_t> row_of_token_, pair_worker_, pair_pos_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> step_times_us_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> step_batches_ ABSL_GUARDED_BY(mu_);
  std::vector<proto::LayerStats> layer_stats_ ABSL_GUARDED_BY(mu_);
  std::thread monitor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_COORDINATOR_H_
