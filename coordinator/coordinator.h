// The coordinator: starts the worker processes of a topology, connects their
// data plane, and drives every forward pass layer by layer:
//
//   gpu_worker: embed ─► per layer: attention + norm + router (part 0)
//                                    ├─► cpu_expert_workers: (token, expert) pairs
//                                    └─► gpu_worker: shared experts (part 1, overlapped)
//               coordinator: y·w summed per token in the engine's j order,
//               + shared + residual (Combine) ─► next layer ─► gpu_worker: output head
//
// A CPU-backend gpu worker runs inside the coordinator process unless the
// topology says separate_process: its Handle is called directly and the
// expert requests are posted from its part-0 reply (before it computes the
// shared experts), so a MoE layer costs two UCX messages (request, reply) and
// one wake-up of each expert worker instead of five messages. A CUDA (or
// separate_process) gpu worker is its own process, reached over UCX.
//
// Expert workers are started by the coordinator, or, when the topology gives
// their address (workers on other hosts), attached to: the coordinator
// Configures, Loads and Connects a worker started by hand, and re-attaches
// (every reattach_interval_ms) when it is lost.
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
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "dataflow/worker_process.h"
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

  // The KV cache holds one sequence, so its users take turns: whoever runs
  // Forward holds kv_mutex() for as long as it needs the cache to stay its
  // own (the control service for a whole request; the HTTP API's
  // CoordinatorSequenceModel for one step), and records itself with
  // SwapKvUser, which returns the previous user: a caller that finds
  // another one there knows the cached positions are no longer its own.
  absl::Mutex& kv_mutex() ABSL_LOCK_RETURNED(kv_mu_) { return kv_mu_; }
  const void* SwapKvUser(const void* user) ABSL_EXCLUSIVE_LOCKS_REQUIRED(kv_mu_) {
    const void* previous = kv_user_;
    kv_user_ = user;
    return previous;
  }

  // Workers and their states; state SERVING when every worker serves.
  void FillStatus(proto::StatusResponse* status);
  bool AllServing();
  // Per-worker per-layer counters (Stats RPCs) plus the coordinator's own
  // ("coordinator": transport_time_us is the expert round trip of a MoE layer
  // — staging the pairs, sends, the expert workers' compute, replies; with
  // the gpu worker in the coordinator it overlaps the shared experts, so it
  // is at least their time — and minus the workers' compute_time_us it is
  // the data-plane overhead; compute_time_us is the weighted sum + combine).
  // A gpu worker running in the coordinator reports as "gpu0" with its
  // compute_time_us (attention, router, shared experts, output head).
  void FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset);
  // Step time percentiles (us) over the recent steps.
  void StepTimePercentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50);
  // Histogram of the same steps' times (MetricsResponse's
  // step_time_bucket_le_us / step_time_bucket_count).
  void StepTimeHistogram(std::vector<int64_t>* le_us, std::vector<int64_t>* counts);

  // Router top-k from the next pass on. INVALID_ARGUMENT outside [0, model's].
  absl::StatusOr<int> SetActiveExperts(int k);
  int active_experts() const { return k_.load(); }

  // Stops the monitor, asks every worker to shut down, reaps them (SIGKILL
  // after a grace period). Idempotent.
  void Shutdown();

 private:
  struct Worker;
  Coordinator() = default;

  // Starts (or, with an address, attaches to) the worker process and
  // Configures and Loads it; for the in-process gpu worker, loads it here.
  absl::Status SpawnAndLoad(Worker& w);
  absl::Status LoadInProcess(Worker& w);
  // Forks and execs the worker binary; reads the gRPC port it prints.
  absl::Status SpawnProcess(Worker& w);
  absl::Status ConnectWorker(Worker& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  void MonitorLoop();
  void KillProcess(Worker& w);
  absl::Status RunChunk(absl::Span<const int32_t> tokens, int64_t start_pos, bool want_logits,
                        bool last_only, float* logits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // One request to the gpu worker (in-process or over UCX). `on_part0` runs
  // as soon as reply part 0 is in gpu_recv_ (it posts the expert requests);
  // with want_part1 the shared experts' part 1 is there too on return.
  absl::Status CallGpu(const dataflow::RequestHeader& header, size_t payload_bytes,
                       size_t expect0, absl::FunctionRef<absl::Status()> on_part0,
                       bool want_part1, size_t expect1, proto::LayerStats& stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // Stages and posts the kExperts request of every expert worker for the
  // router output in gpu_recv_ (layer `il`, n tokens, top-k).
  absl::Status DispatchExperts(int64_t il, int64_t n, int64_t k, proto::LayerStats& ls)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // Releases the expert transfers still posted (error paths).
  void ReleaseExpertTransfers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // Awaits the expert requests DispatchExperts posted and their replies.
  absl::Status AwaitExperts(int64_t h, proto::LayerStats& ls)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  absl::StatusOr<size_t> Await(Worker& w, transport::TransferId id, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  absl::Status CheckReply(Worker& w, const uint8_t* reply, size_t bytes, size_t expected_payload);
  void SetWorkerError(Worker& w, const std::string& error);
  // Deadline `ms` from now and the worker token.
  void PrepareCall(grpc::ClientContext& context, int ms) const;

  CoordinatorOptions options_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  std::string model_name_;
  absl::Mutex kv_mu_;
  const void* kv_user_ ABSL_GUARDED_BY(kv_mu_) = nullptr;
  // Sent on every worker call (auth/bearer_auth.h): the topology's
  // worker_token_file, else a random one given to the workers spawned here.
  std::string worker_token_;
  proto::ExpertPlacement placement_ = proto::EXPERT_PLACEMENT_REPLICATE;
  // See OverlapSharedExperts in coordinator.cc; set in Start.
  bool overlap_shared_experts_ = true;
  int64_t max_batch_ = 64;
  std::atomic<int> k_{0};
  absl::Time start_time_;

  absl::Mutex dataplane_mu_;
  std::unique_ptr<transport::UcxContext> ucx_context_;
  std::unique_ptr<transport::UcxWorker> ucx_worker_ ABSL_GUARDED_BY(dataplane_mu_);
  std::vector<std::unique_ptr<Worker>> workers_;  // [0] gpu_worker, then expert workers
  std::vector<int> expert_owner_;                 // expert id -> index in workers_ (not slice)
  // The gpu worker when it runs in this process (CPU backend, not
  // separate_process), with its request and reply buffers laid out as the
  // UCX channel's would be.
  std::unique_ptr<dataflow::WorkerCompute> local_gpu_;
  std::thread::id local_gpu_caller_;  // the thread local_gpu_->PinCaller() last pinned
  std::vector<uint8_t> local_send_, local_recv_;
  // The gpu worker's request / reply buffers (channel's or local_*_) and the
  // offset of reply part 1 in gpu_recv_; set before each pass.
  uint8_t* gpu_send_ = nullptr;
  uint8_t* gpu_recv_ = nullptr;
  size_t gpu_part1_offset_ = 0;
  // Scratch of the pass (sized at Start): no step allocates.
  std::vector<float> x_, routed_, ysum_;
  std::vector<int32_t> row_of_token_, pair_worker_, pair_pos_, n_pairs_;
  // Rows of each expert worker's reply this layer: its pairs, or its tokens
  // when it was asked for a kExpertsCombine reply.
  std::vector<int32_t> reply_rows_;
  // The expert worker asked for a kExpertsCombine reply this layer (it holds
  // every pair), or 0 when the replies are per pair.
  int combined_worker_ = 0;
  std::vector<transport::TransferId> expert_send_ids_, expert_recv_ids_;
  std::vector<proto::LayerStats> step_stats_, local_gpu_step_stats_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> step_times_us_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> step_batches_ ABSL_GUARDED_BY(mu_);
  std::vector<proto::LayerStats> layer_stats_ ABSL_GUARDED_BY(mu_);
  std::vector<proto::LayerStats> local_gpu_stats_ ABSL_GUARDED_BY(mu_);
  std::thread monitor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_COORDINATOR_H_
