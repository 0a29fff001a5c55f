// `moeflow launch TOPOLOGY.yaml`: starts the coordinator and the worker
// processes a topology file describes, or attaches to expert workers started
// by hand on other hosts (coordinator/coordinator.h), serves
// the gRPC ControlService (`moeflowctl`) and stays in the foreground until
// SIGINT/SIGTERM or a Shutdown RPC, then stops every worker.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/bearer_auth.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/http_api.h"
#include "cli/pem_file.h"
#include "coordinator/control_service.h"
#include "coordinator/coordinator.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/topology.h"
#include "kernels/cpu/numa.h"
#include "server/batching_scheduler.h"
#include "server/metrics.h"
#include "tokenizer/bpe_tokenizer.h"

ABSL_FLAG(std::string, control_address, "",
          "host:port the control service binds to; empty: the topology's control_address "
          "(port 0 picks a free port, printed as 'CONTROL host:port' on stdout)");
ABSL_FLAG(std::string, control_token, "",
          "token moeflowctl must send (--token); required when control binds to a "
          "non-loopback address");
ABSL_FLAG(std::string, control_tls_cert, "",
          "PEM certificate (chain) of the control service; with --control_tls_key the "
          "control service speaks TLS only");
ABSL_FLAG(std::string, control_tls_key, "", "PEM private key of --control_tls_cert");
ABSL_FLAG(std::string, gpu_worker_binary, "",
          "gpu_worker executable; empty: the one built beside this binary");
ABSL_FLAG(std::string, overlap_shared_experts, "auto",
          "auto|on|off: compute the shared experts (in-process CPU gpu worker) while the expert "
          "workers compute the routed ones; auto: only when both pools fit this host's cores");
ABSL_FLAG(std::string, expert_worker_binary, "",
          "cpu_expert_worker executable; empty: the one built beside this binary");
ABSL_FLAG(bool, restart_workers, true, "start a worker again when its process exits");
ABSL_FLAG(int64_t, worker_restart_wait_s, 30,
          "launch: an HTTP request whose turn comes while a worker is down waits this many "
          "seconds for it to serve again, then gets 503 with Retry-After");
ABSL_FLAG(std::string, http_address, "",
          "launch: host:port of the OpenAI / Ollama HTTP API (overrides the topology's "
          "http_address; empty in both: no HTTP API). Off loopback it needs --api_key");
// Shared with `serve` (serve_command.cc): requests waiting before 429.
ABSL_DECLARE_FLAG(int64_t, max_queue);
ABSL_DECLARE_FLAG(int32_t, parallel);
ABSL_DECLARE_FLAG(int64_t, chunk_size);
ABSL_DECLARE_FLAG(int64_t, decode_reserve_tokens);
ABSL_DECLARE_FLAG(std::string, api_key);
ABSL_FLAG(bool, validate_only, false,
          "parse and validate the topology, print it, and exit without starting anything");

namespace moeflow {
namespace {

std::string SelfDir() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

std::string FindWorkerBinary(const std::string& flag, const std::string& dir_name) {
  if (!flag.empty()) return flag;
  const std::string self = SelfDir();
  for (const std::string& candidate :
       {absl::StrCat(self, "/../", dir_name, "/", dir_name),
        absl::StrCat(self, "/moeflow.runfiles/moeflow/", dir_name, "/", dir_name),
        absl::StrCat(self, "/", dir_name)}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::StrCat(self, "/../", dir_name, "/", dir_name);
}

// The control service's TLS files, read (and checked) before anything
// starts: nullopt for plaintext, else the key and certificate PEM. The gRPC
// credentials are built from them only after the signals are blocked (gRPC
// starts threads on first use, and they would inherit an open signal mask).
struct ControlTls {
  std::string key_pem, cert_pem;
};

absl::StatusOr<std::optional<ControlTls>> ReadControlTls() {
  const std::string cert = absl::GetFlag(FLAGS_control_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_control_tls_key);
  if (cert.empty() && key.empty()) return std::optional<ControlTls>();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError(
        "--control_tls_cert and --control_tls_key go together (give both or neither)");
  }
  absl::StatusOr<std::string> cert_pem = ReadPemFile("control_tls_cert", cert);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadPemFile("control_tls_key", key);
  if (!key_pem.ok()) return key_pem.status();
  return std::optional<ControlTls>(ControlTls{*key_pem, *cert_pem});
}

std::shared_ptr<grpc::ServerCredentials> ControlCredentials(const std::optional<ControlTls>& tls) {
  if (!tls.has_value()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({tls->key_pem, tls->cert_pem});
  return grpc::SslServerCredentials(options);
}

int RunLaunch(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "moeflow launch: expected one topology file (got %zu arguments)\n",
                 args.size());
    return kExitUsage;
  }
  // Checked against this host before anything starts (and by
  // --validate-only): the local workers' NUMA nodes and the files it opens.
  TopologyHostChecks checks;
  if (absl::StatusOr<std::unique_ptr<NumaTopology>> numa = NumaTopology::Load(); numa.ok()) {
    checks.numa_nodes = (*numa)->num_nodes();
    checks.numa_source = (*numa)->is_this_system() ? "hwloc" : "hwloc, simulated";
  }
  const std::string model_flag = absl::GetFlag(FLAGS_model);
  checks.check_model_path = model_flag.empty();
  checks.check_files = true;
  if (!model_flag.empty() && access(model_flag.c_str(), R_OK) != 0) {
    std::fprintf(stderr, "moeflow launch: --model=%s: %s\n", model_flag.c_str(),
                 std::strerror(errno));
    return kExitUsage;
  }
  auto topology = LoadTopologyFile(args[0], checks);
  if (!topology.ok()) {
    std::fprintf(stderr, "moeflow launch: %s\n", std::string(topology.status().message()).c_str());
    return kExitUsage;
  }
  if (!absl::GetFlag(FLAGS_model).empty()) topology->set_model_path(absl::GetFlag(FLAGS_model));
  if (!absl::GetFlag(FLAGS_control_address).empty()) {
    topology->set_control_address(absl::GetFlag(FLAGS_control_address));
  }
  const std::string token = absl::GetFlag(FLAGS_control_token);
  if (!dataflow::IsLoopbackAddress(topology->control_address()) && token.empty()) {
    std::fprintf(stderr,
                 "moeflow launch: control_address %s is not a loopback address: give "
                 "--control_token so that only holders of the token can control it\n",
                 topology->control_address().c_str());
    return kExitUsage;
  }
  std::string http_address = absl::GetFlag(FLAGS_http_address);
  if (http_address.empty()) http_address = topology->http_address();
  HttpApiConfig http_config;
  if (!http_address.empty()) {
    const size_t colon = http_address.rfind(':');
    int port = -1;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(http_address.substr(colon + 1), &port) || port < 0 || port > 65535) {
      std::fprintf(stderr, "moeflow launch: --http_address=%s: not host:port\n",
                   http_address.c_str());
      return kExitUsage;
    }
    http_config.host = http_address.substr(0, colon);
    if (absl::StartsWith(http_config.host, "[") && absl::EndsWith(http_config.host, "]")) {
      http_config.host = http_config.host.substr(1, http_config.host.size() - 2);
    }
    http_config.port = port;
    if (absl::Status s = CheckHttpApiFlags(http_config.host, "http_address"); !s.ok()) {
      std::fprintf(stderr, "moeflow launch: %s\n", std::string(s.message()).c_str());
      return kExitUsage;
    }
    if (absl::GetFlag(FLAGS_max_queue) < 0) {
      std::fprintf(stderr, "moeflow launch: --max-queue must be >= 0\n");
      return kExitUsage;
    }
  }
  absl::StatusOr<std::optional<ControlTls>> tls = ReadControlTls();
  if (!tls.ok()) {
    std::fprintf(stderr, "moeflow launch: %s\n", std::string(tls.status().message()).c_str());
    return kExitUsage;
  }
  if (absl::GetFlag(FLAGS_validate_only)) {
    std::printf("%s", topology->DebugString().c_str());
    return kExitOk;
  }

  // Signals are taken by sigwait below; block them before any thread starts
  // (children unblock them before exec).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  CoordinatorOptions options;
  options.topology = *topology;
  options.gpu_worker_binary =
      FindWorkerBinary(absl::GetFlag(FLAGS_gpu_worker_binary), "gpu_worker");
  options.expert_worker_binary =
      FindWorkerBinary(absl::GetFlag(FLAGS_expert_worker_binary), "cpu_expert_worker");
  options.restart_workers = absl::GetFlag(FLAGS_restart_workers);
  options.max_sequences = absl::GetFlag(FLAGS_parallel);
  if (options.max_sequences < 1) {
    std::fprintf(stderr, "moeflow launch: --parallel must be >= 1\n");
    return kExitUsage;
  }
  const std::string overlap = absl::GetFlag(FLAGS_overlap_shared_experts);
  if (overlap == "on") {
    options.overlap_shared_experts = CoordinatorOptions::Overlap::kOn;
  } else if (overlap == "off") {
    options.overlap_shared_experts = CoordinatorOptions::Overlap::kOff;
  } else if (overlap != "auto") {
    std::fprintf(stderr, "moeflow launch: --overlap_shared_experts: '%s' is not auto, on or off\n",
                 overlap.c_str());
    return kExitUsage;
  }
  options.log = [](const std::string& line) {
    std::fprintf(stderr, "moeflow launch: %s\n", line.c_str());
  };
  const absl::Time start = absl::Now();
  auto coordinator = Coordinator::Start(options);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "moeflow launch: %s\n",
                 std::string(coordinator.status().message()).c_str());
    return kExitFailure;
  }
  Coordinator& c = **coordinator;
  // One scheduler for every front end (the HTTP API and moeflowctl
  // generate): continuous batching over the dataflow (dataflow_batch_model.h).
  std::unique_ptr<BpeTokenizer> tokenizer;
  if (auto opened = BpeTokenizer::FromGguf(c.model_file()); opened.ok()) {
    tokenizer = std::move(*opened);
  } else if (!http_address.empty()) {
    std::fprintf(stderr, "moeflow launch: HTTP API: the model has no usable tokenizer: %s\n",
                 std::string(opened.status().message()).c_str());
    c.Shutdown();
    return kExitFailure;
  }
  DataflowBatchModel batch_model(&c, tokenizer.get());
  server::ServerMetrics metrics;
  server::BatchingSchedulerOptions scheduler_options;
  scheduler_options.max_queue = absl::GetFlag(FLAGS_max_queue);
  scheduler_options.max_running = c.limits().max_sequences;
  scheduler_options.max_batch_tokens = c.limits().max_tokens;
  scheduler_options.chunk_tokens = std::min(absl::GetFlag(FLAGS_chunk_size), c.limits().max_tokens);
  scheduler_options.decode_reserve_tokens = absl::GetFlag(FLAGS_decode_reserve_tokens);
  scheduler_options.ready_wait_ms = absl::GetFlag(FLAGS_worker_restart_wait_s) * 1000;
  server::BatchingScheduler scheduler(&batch_model, scheduler_options, &metrics);
  ControlServiceImpl service(c, &scheduler, &batch_model, tokenizer.get(), token,
                             [] { kill(getpid(), SIGTERM); });
  std::optional<HttpApi> http;
  if (!http_address.empty()) {
    http_config.model_path = topology->model_path();
    // /health: 503 "degraded" while a worker is down, "draining" once
    // moeflowctl drain ran.
    http_config.health = [&service]() -> std::string {
      switch (service.State()) {
        case proto::COORDINATOR_STATE_SERVING:
          return "";
        case proto::COORDINATOR_STATE_DRAINING:
        case proto::COORDINATOR_STATE_DRAINED:
        case proto::COORDINATOR_STATE_STOPPING:
          return "draining";
        default:
          return "degraded";
      }
    };
    const GgufFile& file = c.model_file();
    if (file.Find("tokenizer.chat_template") != nullptr) {
      http_config.chat_template = file.GetString("tokenizer.chat_template").value_or("");
    }
    absl::StatusOr<HttpApi> started =
        StartHttpApi(http_config, tokenizer.get(), &scheduler, &metrics);
    if (!started.ok()) {
      std::fprintf(stderr, "moeflow launch: HTTP API: %s\n",
                   std::string(started.status().message()).c_str());
      scheduler.Shutdown();
      c.Shutdown();
      return kExitFailure;
    }
    http = std::move(*started);
    std::fprintf(stderr, "moeflow launch: OpenAI / Ollama API on http://%s:%d (model %s)\n",
                 http_address.substr(0, http_address.rfind(':')).c_str(), http->http->port(),
                 http->model_name.c_str());
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(topology->control_address(), ControlCredentials(*tls), &port);
  builder.RegisterService(&service);
  builder.SetMaxSendMessageSize(256 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "moeflow launch: cannot bind the control service to %s\n",
                 topology->control_address().c_str());
    scheduler.Shutdown();
    (*coordinator)->Shutdown();
    return kExitFailure;
  }
  const std::string host =
      topology->control_address().substr(0, topology->control_address().rfind(':'));
  // One line for whoever started us: the control address, then the HTTP
  // address when there is one.
  if (http) {
    std::printf("CONTROL %s:%d HTTP %s:%d\n", host.c_str(), port,
                http_address.substr(0, http_address.rfind(':')).c_str(), http->http->port());
  } else {
    std::printf("CONTROL %s:%d\n", host.c_str(), port);
  }
  std::fflush(stdout);
  std::fprintf(stderr, "moeflow launch: serving %s on %s:%d (ready in %.1f s); Ctrl-C stops\n",
               (*coordinator)->model_name().c_str(), host.c_str(), port,
               absl::ToDoubleSeconds(absl::Now() - start));
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "moeflow launch: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (http) {
    // Stop accepting; running requests get --shutdown_grace_s to finish,
    // what is left ends ("cancelled") before the workers go.
    DrainForShutdown(*http, scheduler, signals, [](const std::string& line) {
      std::fprintf(stderr, "moeflow launch: %s\n", line.c_str());
    });
  }
  scheduler.Shutdown();
  if (http) http->http->Stop();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  (*coordinator)->Shutdown();
  std::fprintf(stderr, "moeflow launch: stopped\n");
  return kExitOk;
}

}  // namespace

Command LaunchCommand() {
  return Command{
      "launch",
      "start the coordinator and workers of a topology file; serve moeflowctl",
      "moeflow launch TOPOLOGY.yaml [--model FILE.gguf] [flags]",
      "Starts the gpu worker (a CPU-backend one runs inside this process unless the topology\n"
      "says separate_process: true) and one cpu_expert_worker per expert_workers entry (or\n"
      "attaches to one started by hand when the entry gives its address), prints each\n"
      "worker's load progress and the memory plan, then serves the control service and,\n"
      "with http_address (topology or flag), the OpenAI / Ollama HTTP API of `moeflow serve`\n"
      "(see deploy/topologies/). HTTP and moeflowctl requests share one scheduler: continuous\n"
      "batching of up to --parallel requests over the workers, paged KV cache (the gpu\n"
      "worker's kv_cache_tokens) with prefix reuse and preemption. Stays in the foreground;\n"
      "Ctrl-C stops everything.",
      {"model",
       "control_address",
       "control_token",
       "control_tls_cert",
       "control_tls_key",
       "http_address",
       "api_key",
       "allow_unauthenticated",
       "max_body_bytes",
       "cors_origin",
       "http_workers",
       "model_name",
       "max_queue",
       "parallel",
       "chunk_size",
       "decode_reserve_tokens",
       "max_connections",
       "idle_timeout_s",
       "request_timeout_s",
       "shutdown_grace_s",
       "gpu_worker_binary",
       "expert_worker_binary",
       "restart_workers",
       "worker_restart_wait_s",
       "validate_only",
       "overlap_shared_experts"},
      &RunLaunch,
  };
}

}  // namespace moeflow
