// `moeflow launch TOPOLOGY.yaml`: starts the coordinator and the worker
// processes a topology file describes, or attaches to expert workers started
// by hand on other hosts (coordinator/coordinator.h), serves
// the gRPC ControlService (`moeflowctl`) and stays in the foreground until
// SIGINT/SIGTERM or a Shutdown RPC, then stops every worker.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/pem_file.h"
#include "coordinator/control_service.h"
#include "coordinator/coordinator.h"
#include "coordinator/topology.h"

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

bool IsLoopback(const std::string& address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "localhost:") ||
         absl::StartsWith(address, "[::1]:");
}

int RunLaunch(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "moeflow launch: expected one topology file (got %zu arguments)\n",
                 args.size());
    return kExitUsage;
  }
  auto topology = LoadTopologyFile(args[0]);
  if (!topology.ok()) {
    std::fprintf(stderr, "moeflow launch: %s\n", std::string(topology.status().message()).c_str());
    return kExitUsage;
  }
  if (!absl::GetFlag(FLAGS_model).empty()) topology->set_model_path(absl::GetFlag(FLAGS_model));
  if (!absl::GetFlag(FLAGS_control_address).empty()) {
    topology->set_control_address(absl::GetFlag(FLAGS_control_address));
  }
  const std::string token = absl::GetFlag(FLAGS_control_token);
  if (!IsLoopback(topology->control_address()) && token.empty()) {
    std::fprintf(stderr,
                 "moeflow launch: control_address %s is not a loopback address: give "
                 "--control_token so that only holders of the token can control it\n",
                 topology->control_address().c_str());
    return kExitUsage;
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
  ControlServiceImpl service(**coordinator, token, [] { kill(getpid(), SIGTERM); });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(topology->control_address(), ControlCredentials(*tls), &port);
  builder.RegisterService(&service);
  builder.SetMaxSendMessageSize(256 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "moeflow launch: cannot bind the control service to %s\n",
                 topology->control_address().c_str());
    (*coordinator)->Shutdown();
    return kExitFailure;
  }
  const std::string host =
      topology->control_address().substr(0, topology->control_address().rfind(':'));
  std::printf("CONTROL %s:%d\n", host.c_str(), port);
  std::fflush(stdout);
  std::fprintf(stderr, "moeflow launch: serving %s on %s:%d (ready in %.1f s); Ctrl-C stops\n",
               (*coordinator)->model_name().c_str(), host.c_str(), port,
               absl::ToDoubleSeconds(absl::Now() - start));
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "moeflow launch: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
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
      "worker's load progress and the memory plan, then serves the control service\n"
      "(see deploy/topologies/). Stays in the foreground; Ctrl-C stops everything.",
      {"model", "control_address", "control_token", "control_tls_cert", "control_tls_key",
       "gpu_worker_binary", "expert_worker_binary",
       "restart_workers", "validate_only", "overlap_shared_experts"},
      &RunLaunch,
  };
}

}  // namespace moeflow
