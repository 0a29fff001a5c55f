#include "coordinator/worker_supervisor.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/bearer_auth.h"
#include "base/check.h"
#include "base/read_line.h"
#include "coordinator/placement.h"
#include "dataflow/wire.h"

namespace moeflow {

using transport::ActivationChannel;
using transport::UcxEndpoint;

struct WorkerSupervisor::Worker final : public dataflow::WorkerLiveness {
  int index = 0;  // in workers_; also the transport source index
  WorkerSpec spec;
  absl::Time last_attach_try = absl::InfinitePast();  // monitor thread
  // Process (monitor thread and Start only).
  pid_t pid = -1;
  std::string grpc_address;
  // Replaced by the monitor when it restarts or re-attaches the worker:
  // written under mu_; other threads copy it under mu_ (StubOf).
  std::shared_ptr<proto::WorkerService::Stub> stub;
  std::atomic<bool> alive_flag{false};
  std::atomic<int> epoch{0};
  std::atomic<int64_t> connects{0};
  absl::Mutex* mu = nullptr;  // the supervisor's
  // Data plane (dataplane_mu_).
  std::unique_ptr<UcxEndpoint> endpoint;
  std::unique_ptr<ActivationChannel> channel;
  std::unique_ptr<dataflow::UcxClient> client;
  // Status (mu).
  int restarts = 0;
  proto::WorkerState state = proto::WORKER_STATE_NEW;
  std::string last_error;  // what keeps it from serving
  absl::Time last_error_time = absl::InfinitePast();
  std::string recovered_error;  // the last error it recovered from
  absl::Time last_health = absl::InfinitePast();
  // Under mu.
  void RecordError(std::string error) {
    last_error = std::move(error);
    last_error_time = absl::Now();
  }
  void Recovered() {
    if (!last_error.empty()) recovered_error = std::move(last_error);
    last_error.clear();
  }

  bool alive() const override { return alive_flag.load(); }
  std::string why_lost() const override {
    absl::MutexLock lock(mu);
    return last_error;
  }
  void MarkLost(const std::string& why) override {
    alive_flag.store(false);
    absl::MutexLock lock(mu);
    RecordError(why);
  }
  bool attached() const { return !spec.attach_address.empty(); }
};

namespace {

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

std::string ExitDescription(int wstatus) {
  if (WIFSIGNALED(wstatus)) return absl::StrCat("killed by signal ", WTERMSIG(wstatus));
  return absl::StrCat("exited with status ", WEXITSTATUS(wstatus));
}

}  // namespace

WorkerSupervisor::WorkerSupervisor(SupervisorOptions options, std::vector<WorkerSpec> workers)
    : options_(std::move(options)) {
  for (size_t i = 0; i < workers.size(); ++i) {
    auto w = std::make_unique<Worker>();
    w->index = static_cast<int>(i);
    w->spec = std::move(workers[i]);
    w->mu = &mu_;
    workers_.push_back(std::move(w));
  }
}

WorkerSupervisor::~WorkerSupervisor() { Shutdown(); }

void WorkerSupervisor::PrepareCall(grpc::ClientContext& context, int ms) const {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(ms)));
  context.AddMetadata("authorization", "Bearer " + options_.worker_token);
}

std::shared_ptr<proto::WorkerService::Stub> WorkerSupervisor::StubOf(const Worker& w) {
  absl::MutexLock lock(&mu_);
  return w.stub;
}

absl::Status WorkerSupervisor::Start() {
  transport::TransportConfig tc;
  tc.tls = options_.ucx_tls;
  tc.net_devices = options_.ucx_net_devices;
  MOEFLOW_ASSIGN_OR_RETURN(ucx_context_, transport::UcxContext::Create(tc));
  {
    absl::MutexLock lock(&dataplane_mu_);
    MOEFLOW_ASSIGN_OR_RETURN(ucx_worker_, transport::UcxWorker::Create(*ucx_context_));
  }
  for (auto& w : workers_) {
    if (w->spec.in_process != nullptr) {
      w->grpc_address = "(in coordinator)";
      w->alive_flag.store(true);
      w->connects.fetch_add(1);
      absl::MutexLock lock(&mu_);
      w->state = proto::WORKER_STATE_SERVING;
      w->last_health = absl::Now();
      continue;
    }
    MOEFLOW_RETURN_IF_ERROR(SpawnAndLoad(*w));
  }
  {
    absl::MutexLock lock(&dataplane_mu_);
    for (auto& w : workers_) {
      if (w->spec.in_process == nullptr) MOEFLOW_RETURN_IF_ERROR(ConnectWorker(*w));
    }
  }
  monitor_ = std::thread([this] { MonitorLoop(); });
  return absl::OkStatus();
}

std::vector<dataflow::WorkerClient*> WorkerSupervisor::clients() {
  std::vector<dataflow::WorkerClient*> out;
  for (auto& w : workers_) {
    out.push_back(w->spec.in_process != nullptr
                      ? static_cast<dataflow::WorkerClient*>(w->spec.in_process)
                      : w->client.get());
  }
  return out;
}

int64_t WorkerSupervisor::connects(int index) const {
  return workers_[static_cast<size_t>(index)]->connects.load();
}

absl::Status WorkerSupervisor::SpawnProcess(Worker& w) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  const std::string listen = "--listen=127.0.0.1:0";
  std::vector<char*> argv = {const_cast<char*>(w.spec.binary.c_str()),
                             const_cast<char*>(listen.c_str()), nullptr};
  // The token travels in the environment (not argv, which `ps` shows):
  // this process's environment without any MOEFLOW_WORKER_TOKEN, plus ours.
  const std::string token_var = absl::StrCat(dataflow::kWorkerTokenEnv, "=", options_.worker_token);
  const std::string token_prefix = absl::StrCat(dataflow::kWorkerTokenEnv, "=");
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, token_prefix)) envp.push_back(*e);
  }
  envp.push_back(const_cast<char*>(token_var.c_str()));
  envp.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", std::strerror(errno)));
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(fds[1], STDOUT_FILENO);
    // Nothing else of ours reaches the worker (our sockets, UCX's event
    // fds): a worker holding them would keep, e.g., the HTTP port bound
    // after the coordinator exits. (Not the fix for the restart hang:
    // RenewDataPlane is; closing these alone did not stop it.)
    close_range(3, ~0U, 0);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(fds[1]);
  w.pid = pid;
  // The worker prints "PORT <n>" once its gRPC server listens.
  const std::string line = ReadLineWithDeadline(fds[0], 30000, "PORT ");
  close(fds[0]);
  int port = 0;
  if (std::sscanf(line.c_str(), "PORT %d", &port) != 1) {
    KillProcess(w);
    return absl::UnavailableError(absl::StrCat(w.spec.name, ": ", w.spec.binary,
                                               " did not report its gRPC port (did it start?)"));
  }
  w.grpc_address = absl::StrCat("127.0.0.1:", port);
  return absl::OkStatus();
}

absl::Status WorkerSupervisor::SpawnAndLoad(Worker& w) {
  w.epoch.fetch_add(1);
  w.spec.configure.set_transport_source(dataflow::SourceByte(w.index, w.epoch.load()));
  if (w.attached()) {
    w.grpc_address = w.spec.attach_address;
  } else {
    MOEFLOW_RETURN_IF_ERROR(SpawnProcess(w));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<proto::WorkerService::Stub> stub = proto::WorkerService::NewStub(
      grpc::CreateCustomChannel(w.grpc_address, grpc::InsecureChannelCredentials(), args));
  {
    absl::MutexLock lock(&mu_);
    w.stub = stub;
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.rpc_timeout_ms);
    proto::ConfigureResponse response;
    grpc::Status s = stub->Configure(&ctx, w.spec.configure, &response);
    if (!s.ok()) {
      KillProcess(w);
      return FromGrpc(s,
                      absl::StrCat(w.spec.name, " (", w.attached() ? w.grpc_address : w.spec.binary,
                                   "): Configure"));
    }
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.load_timeout_ms);
    auto reader = stub->Load(&ctx, proto::LoadRequest());
    proto::LoadProgress progress;
    while (reader->Read(&progress)) {
      options_.log(absl::StrCat(w.spec.name, ": load ", proto::LoadPhase_Name(progress.phase()),
                                " ", FormatBytes(static_cast<double>(progress.bytes_done())), " / ",
                                FormatBytes(static_cast<double>(progress.bytes_total())), " (",
                                progress.elapsed_ms(), " ms)"));
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) {
      KillProcess(w);
      return FromGrpc(s, absl::StrCat(w.spec.name, ": Load"));
    }
  }
  absl::MutexLock lock(&mu_);
  w.state = proto::WORKER_STATE_LOADED;
  w.last_health = absl::Now();
  return absl::OkStatus();
}

absl::Status WorkerSupervisor::ConnectWorker(Worker& w) {
  std::shared_ptr<proto::WorkerService::Stub> stub = StubOf(w);
  proto::GetTransportAddressResponse address;
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.rpc_timeout_ms);
    MOEFLOW_RETURN_IF_ERROR(FromGrpc(stub->GetTransportAddress(&ctx, {}, &address),
                                     w.spec.name + ": GetTransportAddress"));
  }
  // The old data plane goes only after the worker took the new one (locals
  // die in reverse order: client, channel, endpoint): a live worker whose
  // endpoint closed before its Connect would take the close for a lost
  // coordinator and exit.
  std::unique_ptr<UcxEndpoint> old_endpoint = std::move(w.endpoint);
  std::unique_ptr<ActivationChannel> old_channel = std::move(w.channel);
  std::unique_ptr<dataflow::UcxClient> old_client = std::move(w.client);
  MOEFLOW_ASSIGN_OR_RETURN(
      w.endpoint, UcxEndpoint::Create(*ucx_worker_, address.ucx_worker_address(), w.spec.name));
  transport::ActivationChannelOptions options;
  options.yield_before_sleep_us = dataflow::DataflowYieldMicros();
  options.send_buffer_bytes = static_cast<int64_t>(
      dataflow::AlignUp(sizeof(dataflow::RequestHeader) + w.spec.max_request_bytes));
  // Room for an error reply's message too.
  options.recv_buffer_bytes = static_cast<int64_t>(
      dataflow::AlignUp(sizeof(dataflow::ReplyHeader) + w.spec.max_reply_bytes + 4096));
  MOEFLOW_ASSIGN_OR_RETURN(w.channel, ActivationChannel::Create(*w.endpoint, options));
  proto::ConnectRequest request;
  proto::PeerAddress* peer = request.add_peers();
  peer->set_peer_name("coordinator");
  peer->set_ucx_worker_address(ucx_worker_->address());
  proto::ConnectResponse response;
  grpc::ClientContext ctx;
  PrepareCall(ctx, options_.rpc_timeout_ms);
  MOEFLOW_RETURN_IF_ERROR(
      FromGrpc(stub->Connect(&ctx, request, &response), w.spec.name + ": Connect"));
  w.client = std::make_unique<dataflow::UcxClient>(
      w.spec.name, w.channel.get(), static_cast<uint8_t>(w.spec.configure.transport_source()), &w,
      options_.step_timeout_ms);
  w.alive_flag.store(true);
  w.connects.fetch_add(1);
  absl::MutexLock lock(&mu_);
  w.state = proto::WORKER_STATE_SERVING;
  return absl::OkStatus();
}

void WorkerSupervisor::DropDataPlane(Worker& w) {
  w.client.reset();
  w.channel.reset();
  w.endpoint.reset();
}

absl::Status WorkerSupervisor::RenewDataPlane(Worker& restarted) {
  // A peer killed while it wrote into this process's shared-memory receive
  // FIFO (UCX "sm") leaves an element that is never completed, and every
  // message behind it, from any peer, waits for good (seen: a live expert
  // worker's reply never arriving after its sibling was SIGKILLed). So the
  // data plane starts over: a new UCX worker, every live worker connected
  // to it again (ConnectWorker; the worker keeps its state), the old one
  // released after every endpoint on it.
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<transport::UcxWorker> fresh,
                           transport::UcxWorker::Create(*ucx_context_));
  std::unique_ptr<transport::UcxWorker> old = std::move(ucx_worker_);
  ucx_worker_ = std::move(fresh);
  for (auto& wp : workers_) {
    Worker& x = *wp;
    if (x.spec.in_process != nullptr || &x == &restarted) continue;
    if (x.alive()) {
      absl::Status s = ConnectWorker(x);
      if (s.ok()) continue;
      options_.log(absl::StrCat(x.spec.name, ": reconnecting after ", restarted.spec.name,
                                "'s restart failed: ", s.message()));
      x.MarkLost(std::string(s.message()));
      KillProcess(x);  // the monitor restarts it
    }
    DropDataPlane(x);
  }
  DropDataPlane(restarted);
  old.reset();
  // The restarted worker last: once it serves, every worker does.
  return ConnectWorker(restarted);
}

void WorkerSupervisor::KillProcess(Worker& w) {
  if (w.pid <= 0) return;
  kill(w.pid, SIGKILL);
  int status = 0;
  waitpid(w.pid, &status, 0);
  w.pid = -1;
  w.alive_flag.store(false);
}

void WorkerSupervisor::SetWorkerError(Worker& w, const std::string& error) {
  absl::MutexLock lock(&mu_);
  w.RecordError(error);
}

void WorkerSupervisor::Restart(Worker& w) {
  options_.log(absl::StrCat(w.spec.name, w.attached() ? ": attaching again" : ": restarting"));
  absl::Status s = SpawnAndLoad(w);
  if (s.ok()) {
    absl::MutexLock lock(&dataplane_mu_);
    s = RenewDataPlane(w);
  }
  if (!s.ok()) {
    options_.log(absl::StrCat(w.spec.name, ": restart failed: ", s.message()));
    SetWorkerError(w, w.attached()
                          ? absl::StrCat("attaching to ", w.spec.attach_address, ": ", s.message())
                          : std::string(s.message()));
    KillProcess(w);
    return;
  }
  options_.log(absl::StrCat(w.spec.name, ": serving again"));
  absl::MutexLock lock(&mu_);
  ++w.restarts;
  w.Recovered();
}

void WorkerSupervisor::MonitorLoop() {
  absl::Time last_health = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                           absl::Milliseconds(options_.monitor_interval_ms));
      if (stopping_) return;
    }
    for (auto& wp : workers_) {
      Worker& w = *wp;
      if (w.spec.in_process != nullptr) continue;
      if (w.attached()) {
        // A hand-started worker that is lost: attach again, at most every
        // reattach_interval_ms (its supervisor may restart it any time).
        if (w.alive() || !options_.restart_workers ||
            absl::Now() - w.last_attach_try < absl::Milliseconds(options_.reattach_interval_ms)) {
          continue;
        }
        w.last_attach_try = absl::Now();
      } else {
        if (w.pid > 0) {
          int status = 0;
          if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
            w.pid = -1;
            const std::string why = absl::StrCat("process ", ExitDescription(status));
            w.MarkLost(why);
            options_.log(absl::StrCat(w.spec.name, ": ", why));
            absl::MutexLock lock(&mu_);
            w.state = proto::WORKER_STATE_FAILED;
          }
        }
        if (w.pid > 0 || !options_.restart_workers) continue;
      }
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
      }
      Restart(w);
    }
    if (absl::Now() - last_health > absl::Milliseconds(500)) {
      last_health = absl::Now();
      HealthChecks();
    }
  }
}

void WorkerSupervisor::HealthChecks() {
  for (auto& wp : workers_) {
    Worker& w = *wp;
    std::shared_ptr<proto::WorkerService::Stub> stub = StubOf(w);
    if (!w.alive() || stub == nullptr) continue;
    grpc::ClientContext ctx;
    PrepareCall(ctx, 1000);
    proto::HealthResponse health;
    grpc::Status s = stub->Health(&ctx, proto::HealthRequest(), &health);
    if (!s.ok() && w.attached() && s.error_code() == grpc::UNAVAILABLE) {
      // No process of ours to reap: an unreachable hand-started worker is lost.
      options_.log(absl::StrCat(w.spec.name, ": ", w.spec.attach_address,
                                " is unreachable: ", s.error_message()));
      w.MarkLost(absl::StrCat(w.spec.attach_address, " unreachable: ", s.error_message()));
      absl::MutexLock lock(&mu_);
      w.state = proto::WORKER_STATE_FAILED;
      continue;
    }
    if (!s.ok()) continue;
    absl::MutexLock lock(&mu_);
    w.last_health = absl::Now();
    w.state = health.state();
    if (health.state() == proto::WORKER_STATE_FAILED) {
      w.RecordError(health.message());
      // A hand-started worker that lost its data plane serves no more.
      if (w.attached()) w.alive_flag.store(false);
    }
  }
}

void WorkerSupervisor::Shutdown() {
  if (shut_down_.exchange(true)) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  for (auto& wp : workers_) {
    Worker& w = *wp;
    std::shared_ptr<proto::WorkerService::Stub> stub = StubOf(w);
    if ((w.pid > 0 || (w.attached() && w.alive())) && stub != nullptr) {
      grpc::ClientContext ctx;
      PrepareCall(ctx, 1000);
      proto::WorkerShutdownRequest request;
      request.set_reason("coordinator shutting down");
      proto::WorkerShutdownResponse response;
      (void)stub->Shutdown(&ctx, request, &response);
    }
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  for (auto& wp : workers_) {
    Worker& w = *wp;
    while (w.pid > 0) {
      int status = 0;
      if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
        w.pid = -1;
        break;
      }
      if (absl::Now() > deadline) {
        KillProcess(w);
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    w.alive_flag.store(false);
  }
  absl::MutexLock lock(&dataplane_mu_);
  for (auto& wp : workers_) {
    if (wp->channel != nullptr && wp->channel->late_wakeups() > 0) {
      options_.log(absl::StrCat(wp->spec.name, ": ", wp->channel->LateWakeupsNote()));
    }
    wp->client.reset();
    wp->channel.reset();
    if (wp->endpoint != nullptr) (void)wp->endpoint->Close(100);
    wp->endpoint.reset();
  }
  ucx_worker_.reset();
}

void WorkerSupervisor::FillStatus(proto::StatusResponse* status) {
  absl::MutexLock lock(&mu_);
  for (auto& wp : workers_) {
    const Worker& w = *wp;
    proto::WorkerStatus* s = status->add_workers();
    s->set_worker_name(w.spec.name);
    s->set_role(w.spec.role);
    s->set_grpc_address(w.grpc_address);
    s->set_state(w.alive() ? w.state
                           : (w.state == proto::WORKER_STATE_SERVING ? proto::WORKER_STATE_FAILED
                                                                     : w.state));
    *s->mutable_shard() = w.spec.configure.shard();
    s->set_last_health_age_ms(w.spec.in_process != nullptr ? 0  // its health is ours
                              : w.last_health == absl::InfinitePast()
                                  ? -1
                                  : absl::ToInt64Milliseconds(absl::Now() - w.last_health));
    s->set_last_error(w.last_error);
    s->set_restarts(w.restarts);
    s->set_recovered_error(w.recovered_error);
    if (w.last_error_time != absl::InfinitePast()) {
      s->set_last_error_unix_ms(absl::ToUnixMillis(w.last_error_time));
    }
  }
}

bool WorkerSupervisor::AllServing() {
  absl::MutexLock lock(&mu_);
  for (auto& w : workers_) {
    if (!w->alive() || w->state != proto::WORKER_STATE_SERVING) return false;
  }
  return true;
}

void WorkerSupervisor::FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset) {
  for (auto& wp : workers_) {
    Worker& w = *wp;
    proto::StatsResponse response;
    if (w.spec.in_process != nullptr) {
      w.spec.in_process->stats().Fill(&response, reset);
    } else {
      std::shared_ptr<proto::WorkerService::Stub> stub = StubOf(w);
      if (!w.alive() || stub == nullptr) continue;
      grpc::ClientContext ctx;
      PrepareCall(ctx, options_.rpc_timeout_ms);
      proto::StatsRequest request;
      request.set_reset(reset);
      if (!stub->Stats(&ctx, request, &response).ok()) continue;
    }
    proto::WorkerLayerMetrics* m = metrics->add_workers();
    m->set_worker_name(w.spec.name);
    for (const proto::LayerStats& s : response.layers()) *m->add_layers() = s;
  }
}

}  // namespace moeflow
