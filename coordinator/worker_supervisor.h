// The coordinator's worker processes: starts (or attaches to) each worker,
// drives its lifecycle over gRPC (proto/worker.proto), connects its UCX
// data plane and hands the layer driver a WorkerClient for it; a monitor
// thread reaps exited children, health-checks the workers and restarts (or
// re-attaches to) lost ones.
//
//   spawn ─► Configure ─► Load (progress) ─► Connect ─► SERVING
//     ▲                                                   │ (process exits / peer lost)
//     └──────────── restart (if restart_workers) ◄── FAILED (requests: UNAVAILABLE)
//
// A restart renews the whole data plane (RenewDataPlane): a new UCX worker
// here, every live worker connected to it again (their state kept), because
// a peer killed mid-write leaves UCX's shared-memory receive FIFO blocked
// for every peer behind it.
//
// A worker that runs inside the coordinator (the CPU gpu worker, unless
// separate_process) is registered with its InProcessClient; it has no
// process to supervise.
//
// Thread-safety: all public methods are thread-safe. clients() and
// attention_epoch() are read by the step thread under dataplane_mutex(),
// which the monitor takes to reconnect a restarted worker (so a step never
// sees a half-replaced client). Failure: Start returns UNAVAILABLE (a worker
// did not start or report its port), the worker's own Configure/Load errors
// prefixed with its name (FAILED_PRECONDITION for a backend this build
// lacks, INVALID_ARGUMENT for a bad field).
#ifndef MOEFLOW_COORDINATOR_WORKER_SUPERVISOR_H_
#define MOEFLOW_COORDINATOR_WORKER_SUPERVISOR_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dataflow/in_process_client.h"
#include "dataflow/ucx_client.h"
#include "proto/control.pb.h"
#include "proto/worker.grpc.pb.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

namespace moeflow {

struct WorkerSpec {
  std::string name;
  proto::WorkerRole role = proto::WORKER_ROLE_UNSPECIFIED;
  std::string binary;          // to spawn
  std::string attach_address;  // host:port of a worker started by hand
  proto::ConfigureRequest configure;
  dataflow::InProcessClient* in_process = nullptr;  // runs in this process
  // Data-plane buffers (the largest request and reply payloads).
  size_t max_request_bytes = 0;
  size_t max_reply_bytes = 0;
};

struct SupervisorOptions {
  std::string worker_token;  // sent on every worker call
  std::string ucx_tls, ucx_net_devices;
  int rpc_timeout_ms = 10000;
  int load_timeout_ms = 600000;
  int step_timeout_ms = 60000;
  int monitor_interval_ms = 100;
  bool restart_workers = true;
  int reattach_interval_ms = 1000;
  std::function<void(const std::string&)> log = [](const std::string&) {};
};

class WorkerSupervisor {
 public:
  WorkerSupervisor(SupervisorOptions options, std::vector<WorkerSpec> workers);
  ~WorkerSupervisor();  // Shutdown()s

  // Starts, configures, loads and connects every worker, then the monitor.
  absl::Status Start();
  // Stops the monitor, asks every worker to shut down, reaps them (SIGKILL
  // after a grace period). Idempotent.
  void Shutdown();

  absl::Mutex& dataplane_mutex() ABSL_LOCK_RETURNED(dataplane_mu_) { return dataplane_mu_; }
  // The workers' clients in spec order (null while one is being replaced).
  std::vector<dataflow::WorkerClient*> clients() ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // Times worker `index` was connected anew (its memory is then new).
  int64_t connects(int index) const;

  // Workers and their states; every worker SERVING: AllServing.
  void FillStatus(proto::StatusResponse* status);
  bool AllServing();
  // Stats RPCs of the worker processes (in-process workers: their clients'
  // counters), one entry per worker.
  void FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset);

 private:
  struct Worker;
  absl::Status SpawnAndLoad(Worker& w);
  absl::Status SpawnProcess(Worker& w);
  absl::Status ConnectWorker(Worker& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // After `restarted` came back: a new UCX worker, every live worker and
  // `restarted` connected to it (see the .cc for why). `restarted`'s error.
  absl::Status RenewDataPlane(Worker& restarted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  // Releases w's client, channel and endpoint, in that order.
  void DropDataPlane(Worker& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dataplane_mu_);
  void MonitorLoop();
  void Restart(Worker& w);
  void HealthChecks();
  void KillProcess(Worker& w);
  void SetWorkerError(Worker& w, const std::string& error);
  std::shared_ptr<proto::WorkerService::Stub> StubOf(const Worker& w);
  void PrepareCall(grpc::ClientContext& context, int ms) const;

  const SupervisorOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  absl::Mutex dataplane_mu_;
  std::unique_ptr<transport::UcxContext> ucx_context_;
  std::unique_ptr<transport::UcxWorker> ucx_worker_ ABSL_GUARDED_BY(dataplane_mu_);
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread monitor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_WORKER_SUPERVISOR_H_
