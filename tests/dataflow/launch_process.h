// A `moeflow launch` child process for end-to-end tests: writes a topology
// file, starts the launcher (with a simulated 2-NUMA hwloc topology), reads
// the control address it prints, and stops it (SIGTERM, then SIGKILL) on
// destruction. Also finds the launcher's worker children by /proc.
#ifndef MOEFLOW_TESTS_DATAFLOW_LAUNCH_PROCESS_H_
#define MOEFLOW_TESTS_DATAFLOW_LAUNCH_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "proto/control.grpc.pb.h"
#include "proto/worker.grpc.pb.h"

namespace moeflow::testing {

// Path of a data dependency (e.g. "cpu_expert_worker/cpu_expert_worker") in
// the test's runfiles.
std::string Runfile(const std::string& path);

// Writes `text` to a file `name` (prefixed with this process's id) in
// $TEST_TMPDIR (else /tmp); returns its path.
std::string WriteTempFile(const std::string& name, const std::string& text);

// Runs a shell command to its exit, stdout discarded: its exit code (-1 if
// killed) and everything it wrote on stderr.
struct CommandExit {
  int code = -1;
  std::string stderr_text;
};
CommandExit RunToExit(const std::string& command);

// A plaintext WorkerService stub for a worker's gRPC address ("host:port").
std::unique_ptr<proto::WorkerService::Stub> WorkerStub(const std::string& address);

struct LaunchSpec {
  std::string model_path;
  std::string placement = "replicate";
  int expert_workers = 2;
  int max_batch_tokens = 64;
  int kv_cache_tokens = 512;
  std::string ucx_transports = "sm,self";
  // ucx_net_devices of the topology; empty: not written.
  std::string ucx_net_devices;
  std::string control_address = "127.0.0.1:0";
  // Run the CPU-backend gpu worker in a process of its own (the path a CUDA
  // gpu worker takes) instead of inside the coordinator.
  bool gpu_separate_process = false;
  // Per expert worker: host:port of a worker started by hand to attach to;
  // empty (or missing): the launcher starts it.
  std::vector<std::string> expert_addresses;
  std::vector<std::string> extra_flags;
  // memory: of every expert worker (auto, mapped, node); empty: not written.
  std::string expert_memory;
  // worker_token_file of the topology; empty: not written.
  std::string worker_token_file;
  // http_address of the topology (the OpenAI API; "127.0.0.1:0": any free
  // port); empty: not written.
  std::string http_address;
};

// A cpu_expert_worker started by hand, as on another host: listens on
// `listen` (port 0: any free port) and is killed (SIGKILL) on destruction.
// Every worker needs a token: without --token_file in `extra_args` it gets
// a test token file of its own (token_file(); the topology's
// worker_token_file must name it).
class HandStartedWorker {
 public:
  // `wrapper` goes before the worker's command line (e.g. {"ip", "netns",
  // "exec", "ns1"} to start it in another network namespace); `extra_args`
  // after --listen (e.g. --token_file=PATH).
  explicit HandStartedWorker(const std::string& listen = "127.0.0.1:0",
                             const std::vector<std::string>& wrapper = {},
                             const std::vector<std::string>& extra_args = {});
  ~HandStartedWorker();
  bool ok() const { return port_ > 0; }
  const std::string& error() const { return error_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& token_file() const { return token_file_; }
  // Adds the worker's token to a call of its WorkerService.
  void Authorize(grpc::ClientContext& context) const;
  // SIGKILL and reap.
  void Kill();

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string token_file_;
  std::string token_;
  std::string error_;
};

class LaunchProcess {
 public:
  // Starts the launcher; check ok() (and error()) before use.
  explicit LaunchProcess(const LaunchSpec& spec);
  ~LaunchProcess();

  bool ok() const { return stub_ != nullptr; }
  const std::string& error() const { return error_; }
  const std::string& address() const { return address_; }
  // Port of the HTTP API (spec.http_address), 0 without one.
  int http_port() const { return http_port_; }
  proto::ControlService::Stub& stub() { return *stub_; }
  pid_t pid() const { return pid_; }

  // Pids of the launcher's children whose command line contains `name`.
  std::vector<pid_t> Children(const std::string& name) const;
  // Polls Status until every worker serves (true) or timeout_ms passes.
  bool WaitServing(int timeout_ms);
  // SIGTERM and wait; returns the exit status (or -1 after SIGKILL).
  int Stop(int timeout_ms);

 private:
  pid_t pid_ = -1;
  int http_port_ = 0;
  std::string address_;
  std::string error_;
  std::unique_ptr<proto::ControlService::Stub> stub_;
};

}  // namespace moeflow::testing

#endif  // MOEFLOW_TESTS_DATAFLOW_LAUNCH_PROCESS_H_
