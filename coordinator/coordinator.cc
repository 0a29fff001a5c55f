#include "coordinator/coordinator.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/check.h"
#include "coordinator/dataflow_messages.h"
#include "coordinator/topology.h"
#include "model/deepseek2/reference.h"
#include "model/memory_plan.h"

namespace moeflow {

using dataflow::DataflowOp;
using dataflow::ReplyHeader;
using dataflow::RequestHeader;
using transport::ActivationChannel;
using transport::TransferId;
using transport::UcxEndpoint;

struct Coordinator::Worker {
  int index = 0;  // in workers_; also the transport source index
  std::string name;
  proto::WorkerRole role = proto::WORKER_ROLE_UNSPECIFIED;
  std::string binary;
  proto::ConfigureRequest configure;
  // Process (monitor thread and Start only).
  pid_t pid = -1;
  std::string grpc_address;
  std::unique_ptr<proto::WorkerService::Stub> stub;
  std::atomic<bool> alive{false};
  std::atomic<int> epoch{0};
  int restarts = 0;  // Coordinator::mu_
  // Data plane (dataplane_mu_).
  std::unique_ptr<UcxEndpoint> endpoint;
  std::unique_ptr<ActivationChannel> channel;
  uint32_t seq = 0;
  // Status (Coordinator::mu_).
  proto::WorkerState state = proto::WORKER_STATE_NEW;
  std::string last_error;
  absl::Time last_health = absl::InfinitePast();
};

namespace {

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

void SetDeadline(grpc::ClientContext& context, int ms) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(ms)));
}

uint64_t MemTotalBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  while (in >> key >> kb) {
    if (key == "MemTotal:") return kb * 1024;
    std::string unit;
    in >> unit;
  }
  return 0;
}

std::string ExitDescription(int wstatus) {
  if (WIFSIGNALED(wstatus)) return absl::StrCat("killed by signal ", WTERMSIG(wstatus));
  return absl::StrCat("exited with status ", WEXITSTATUS(wstatus));
}

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", bytes, units[u]);
  return buf;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator());
  c->options_ = std::move(options);
  c->start_time_ = absl::Now();
  const proto::Topology& topo = c->options_.topology;
  if (topo.model_path().empty()) {
    return absl::InvalidArgumentError("model_path: empty (set it in the topology or --model)");
  }
  if (topo.gpu_workers_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gpu_workers: this coordinator drives exactly one gpu worker, the topology has ",
        topo.gpu_workers_size()));
  }
  for (int i = 0; i < topo.expert_workers_size(); ++i) {
    const std::string& host = topo.expert_workers(i).host();
    if (!host.empty() && host != "localhost" && host != "127.0.0.1") {
      return absl::UnimplementedError(absl::StrCat(
          "expert_workers[", i, "].host: ", host,
          ": launching workers on other hosts is not implemented (start them there and "
          "give their address)"));
    }
  }
  MOEFLOW_ASSIGN_OR_RETURN(c->file_, GgufFile::Open(topo.model_path()));
  MOEFLOW_ASSIGN_OR_RETURN(c->config_, Deepseek2Config::FromGguf(*c->file_));
  c->model_name_ = c->file_->GetString("general.name").value_or("");
  const Deepseek2Config& cfg = c->config_;
  c->k_ = static_cast<int>(cfg.n_experts_used);
  c->max_batch_ = topo.max_batch_tokens() > 0 ? topo.max_batch_tokens() : 64;
  const int n_experts_workers = topo.expert_workers_size();

  // Placement and the memory plan.
  const uint64_t mem_total = MemTotalBytes();
  const uint64_t per_node = mem_total / static_cast<uint64_t>(std::max(1, n_experts_workers));
  auto plan_for = [&](proto::ExpertPlacement p) {
    const ExpertPlacement mp = p == proto::EXPERT_PLACEMENT_SHARD   ? ExpertPlacement::kShard
                               : p == proto::EXPERT_PLACEMENT_SLICE ? ExpertPlacement::kSlice
                                                                    : ExpertPlacement::kReplicate;
    return PlanExpertPlacement(c->file_->tensors(), mp, n_experts_workers);
  };
  c->placement_ = topo.placement();
  if (c->placement_ == proto::EXPERT_PLACEMENT_AUTO ||
      c->placement_ == proto::EXPERT_PLACEMENT_UNSPECIFIED) {
    c->placement_ = plan_for(proto::EXPERT_PLACEMENT_REPLICATE).max_node_bytes() <= per_node
                        ? proto::EXPERT_PLACEMENT_REPLICATE
                        : proto::EXPERT_PLACEMENT_SLICE;
  }
  const PlacementPlan plan = plan_for(c->placement_);
  const ModelBytes bytes = CountModelBytes(c->file_->tensors());
  c->options_.log(absl::StrCat("memory plan (placement ", ExpertPlacementYamlName(c->placement_),
                               "): gpu0 non-expert weights ", Human(bytes.non_expert())));
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    c->options_.log(absl::StrCat("  expert", i, " (numa ", topo.expert_workers(i).numa_node(),
                                 "): ", plan.nodes[i].experts, " experts, ",
                                 Human(plan.nodes[i].expert_bytes), " of routed experts"));
  }
  if (mem_total > 0 && plan.max_node_bytes() > per_node) {
    return absl::FailedPreconditionError(absl::StrCat(
        "memory plan: placement ", ExpertPlacementYamlName(c->placement_), " needs ",
        Human(plan.max_node_bytes()), " of routed experts on one node, more than its share ",
        Human(per_node), " of ", Human(mem_total), " (use slice or shard)"));
  }

  // Workers.
  auto transport = [&] {
    proto::TransportSpec t;
    t.set_tls(topo.ucx_transports());
    t.set_net_devices(topo.ucx_net_devices());
    return t;
  }();
  {
    auto w = std::make_unique<Worker>();
    w->index = 0;
    w->name = "gpu0";
    w->role = proto::WORKER_ROLE_GPU;
    w->binary = c->options_.gpu_worker_binary;
    proto::ConfigureRequest& r = w->configure;
    const proto::GpuWorkerSpec& g = topo.gpu_workers(0);
    r.set_backend(g.backend() == proto::GPU_BACKEND_CUDA ? "cuda" : "cpu");
    r.set_kv_cache_tokens(g.kv_cache_tokens());
    r.set_compute_threads(g.threads());
    r.set_numa_node(-1);
    r.mutable_shard()->mutable_layers()->set_end_layer(static_cast<int32_t>(cfg.n_layers));
    c->workers_.push_back(std::move(w));
  }
  const int64_t per_worker = (cfg.n_experts + n_experts_workers - 1) / n_experts_workers;
  c->expert_owner_.assign(static_cast<size_t>(cfg.n_experts), -1);
  for (int i = 0; i < n_experts_workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->index = i + 1;
    w->name = absl::StrCat("expert", i);
    w->role = proto::WORKER_ROLE_CPU_EXPERT;
    w->binary = c->options_.expert_worker_binary;
    proto::ConfigureRequest& r = w->configure;
    const proto::ExpertWorkerSpec& e = topo.expert_workers(i);
    r.set_compute_threads(e.threads());
    r.set_numa_node(e.numa_node());
    proto::ShardSpec* shard = r.mutable_shard();
    shard->mutable_layers()->set_first_layer(static_cast<int32_t>(cfg.n_dense_layers));
    shard->mutable_layers()->set_end_layer(static_cast<int32_t>(cfg.n_layers));
    if (c->placement_ == proto::EXPERT_PLACEMENT_SHARD) {
      for (int64_t x = i * per_worker; x < std::min<int64_t>(cfg.n_experts, (i + 1) * per_worker);
           ++x) {
        shard->add_expert_ids(static_cast<int32_t>(x));
        c->expert_owner_[static_cast<size_t>(x)] = i + 1;
      }
    } else if (c->placement_ == proto::EXPERT_PLACEMENT_SLICE) {
      shard->set_slice_index(i);
      shard->set_slice_count(n_experts_workers);
    }
    c->workers_.push_back(std::move(w));
  }
  if (c->placement_ == proto::EXPERT_PLACEMENT_REPLICATE) {
    // Whole experts per worker (e mod n), so each expert's batch of tokens is
    // one matmul as in the single-process engine.
    for (int64_t x = 0; x < cfg.n_experts; ++x) {
      c->expert_owner_[static_cast<size_t>(x)] = static_cast<int>(x % n_experts_workers) + 1;
    }
  }
  for (auto& w : c->workers_) {
    w->configure.set_model_path(topo.model_path());
    w->configure.set_role(w->role);
    w->configure.set_max_batch_tokens(static_cast<int32_t>(c->max_batch_));
    *w->configure.mutable_transport() = transport;
    w->configure.set_worker_name(w->name);
  }

  transport::TransportConfig tc;
  tc.tls = topo.ucx_transports();
  tc.net_devices = topo.ucx_net_devices();
  MOEFLOW_ASSIGN_OR_RETURN(c->ucx_context_, transport::UcxContext::Create(tc));
  {
    absl::MutexLock lock(&c->dataplane_mu_);
    MOEFLOW_ASSIGN_OR_RETURN(c->ucx_worker_, transport::UcxWorker::Create(*c->ucx_context_));
  }
  for (auto& w : c->workers_) {
    if (absl::Status s = c->SpawnAndLoad(*w); !s.ok()) {
      c->Shutdown();
      return s;
    }
  }
  {
    absl::MutexLock lock(&c->dataplane_mu_);
    for (auto& w : c->workers_) {
      if (absl::Status s = c->ConnectWorker(*w); !s.ok()) {
        c->dataplane_mu_.Unlock();
        c->Shutdown();
        c->dataplane_mu_.Lock();
        return s;
      }
    }
  }
  const size_t h = static_cast<size_t>(cfg.hidden);
  const size_t pairs = static_cast<size_t>(c->max_batch_ * cfg.n_experts_used);
  c->x_.resize(static_cast<size_t>(c->max_batch_) * h);
  c->routed_.resize(static_cast<size_t>(c->max_batch_) * h);
  c->ysum_.resize(pairs * h);
  c->row_of_token_.resize(static_cast<size_t>(c->max_batch_));
  c->pair_worker_.resize(pairs);
  c->pair_pos_.resize(pairs);
  {
    absl::MutexLock lock(&c->mu_);
    c->layer_stats_.resize(static_cast<size_t>(cfg.n_layers));
  }
  c->monitor_ = std::thread([p = c.get()] { p->MonitorLoop(); });
  return c;
}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::SpawnAndLoad(Worker& w) {
  w.epoch.fetch_add(1);
  w.configure.set_transport_source(dataflow::SourceByte(w.index, w.epoch.load()));
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  const std::string listen = "--listen=127.0.0.1:0";
  std::vector<char*> argv = {const_cast<char*>(w.binary.c_str()), const_cast<char*>(listen.c_str()),
                             nullptr};
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
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  w.pid = pid;
  // The worker prints "PORT <n>" once its gRPC server listens.
  std::string line;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (line.find('\n') == std::string::npos) {
    pollfd p{fds[0], POLLIN, 0};
    const int left = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (left <= 0 || poll(&p, 1, left) <= 0) break;
    char buf[64];
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int port = 0;
  if (std::sscanf(line.c_str(), "PORT %d", &port) != 1) {
    KillProcess(w);
    return absl::UnavailableError(absl::StrCat(w.name, ": ", w.binary,
                                               " did not report its gRPC port (did it start?)"));
  }
  w.grpc_address = absl::StrCat("127.0.0.1:", port);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  w.stub = proto::WorkerService::NewStub(
      grpc::CreateCustomChannel(w.grpc_address, grpc::InsecureChannelCredentials(), args));
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, options_.rpc_timeout_ms);
    proto::ConfigureResponse response;
    grpc::Status s = w.stub->Configure(&ctx, w.configure, &response);
    if (!s.ok()) {
      KillProcess(w);
      return FromGrpc(s, absl::StrCat(w.name, " (", w.binary, "): Configure"));
    }
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, options_.load_timeout_ms);
    auto reader = w.stub->Load(&ctx, proto::LoadRequest());
    proto::LoadProgress progress;
    while (reader->Read(&progress)) {
      options_.log(absl::StrCat(w.name, ": load ", proto::LoadPhase_Name(progress.phase()), " ",
                                Human(static_cast<double>(progress.bytes_done())), " / ",
                                Human(static_cast<double>(progress.bytes_total())), " (",
                                progress.elapsed_ms(), " ms)"));
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) {
      KillProcess(w);
      return FromGrpc(s, absl::StrCat(w.name, ": Load"));
    }
  }
  absl::MutexLock lock(&mu_);
  w.state = proto::WORKER_STATE_LOADED;
  w.last_health = absl::Now();
  return absl::OkStatus();
}

absl::Status Coordinator::ConnectWorker(Worker& w) {
  proto::GetTransportAddressResponse address;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, options_.rpc_timeout_ms);
    MOEFLOW_RETURN_IF_ERROR(
        FromGrpc(w.stub->GetTransportAddress(&ctx, {}, &address), w.name + ": GetTransportAddress"));
  }
  w.channel.reset();
  w.endpoint.reset();
  MOEFLOW_ASSIGN_OR_RETURN(w.endpoint,
                           UcxEndpoint::Create(*ucx_worker_, address.ucx_worker_address(), w.name));
  const size_t h = static_cast<size_t>(config_.hidden);
  const size_t n = static_cast<size_t>(max_batch_);
  const size_t k = static_cast<size_t>(config_.n_experts_used);
  transport::ActivationChannelOptions options;
  if (w.role == proto::WORKER_ROLE_GPU) {
    options.send_buffer_bytes =
        static_cast<int64_t>(dataflow::AlignUp(sizeof(RequestHeader) + n * h * sizeof(float)));
    const size_t part0 =
        std::max(n * static_cast<size_t>(config_.vocab_size), n * (2 * h + 2 * k)) * sizeof(float);
    options.recv_buffer_bytes = static_cast<int64_t>(
        dataflow::AlignUp(sizeof(ReplyHeader) + part0 + 4096) +
        dataflow::AlignUp(sizeof(ReplyHeader) + n * h * sizeof(float) + 4096));
  } else {
    options.send_buffer_bytes = static_cast<int64_t>(dataflow::AlignUp(
        sizeof(RequestHeader) + n * h * sizeof(float) + 2 * n * k * sizeof(int32_t)));
    options.recv_buffer_bytes =
        static_cast<int64_t>(dataflow::AlignUp(sizeof(ReplyHeader) + n * k * h * sizeof(float) + 4096));
  }
  MOEFLOW_ASSIGN_OR_RETURN(w.channel, ActivationChannel::Create(*w.endpoint, options));
  w.seq = 0;
  proto::ConnectRequest request;
  proto::PeerAddress* peer = request.add_peers();
  peer->set_peer_name("coordinator");
  peer->set_ucx_worker_address(ucx_worker_->address());
  proto::ConnectResponse response;
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout_ms);
  MOEFLOW_RETURN_IF_ERROR(FromGrpc(w.stub->Connect(&ctx, request, &response), w.name + ": Connect"));
  w.alive.store(true);
  absl::MutexLock lock(&mu_);
  w.state = proto::WORKER_STATE_SERVING;
  return absl::OkStatus();
}

void Coordinator::KillProcess(Worker& w) {
  if (w.pid <= 0) return;
  kill(w.pid, SIGKILL);
  int status = 0;
  waitpid(w.pid, &status, 0);
  w.pid = -1;
  w.alive.store(false);
}

void Coordinator::SetWorkerError(Worker& w, const std::string& error) {
  absl::MutexLock lock(&mu_);
  w.last_error = error;
}

void Coordinator::MonitorLoop() {
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
      if (w.pid > 0) {
        int status = 0;
        if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
          w.pid = -1;
          w.alive.store(false);
          const std::string why = absl::StrCat("process ", ExitDescription(status));
          options_.log(absl::StrCat(w.name, ": ", why));
          absl::MutexLock lock(&mu_);
          w.state = proto::WORKER_STATE_FAILED;
          w.last_error = why;
        }
      }
      if (w.pid <= 0 && options_.restart_workers) {
        {
          absl::MutexLock lock(&mu_);
          if (stopping_) return;
        }
        options_.log(absl::StrCat(w.name, ": restarting"));
        absl::Status s = SpawnAndLoad(w);
        if (s.ok()) {
          absl::MutexLock lock(&dataplane_mu_);
          s = ConnectWorker(w);
        }
        if (!s.ok()) {
          options_.log(absl::StrCat(w.name, ": restart failed: ", s.message()));
          SetWorkerError(w, std::string(s.message()));
          KillProcess(w);
        } else {
          options_.log(absl::StrCat(w.name, ": serving again"));
          absl::MutexLock lock(&mu_);
          ++w.restarts;
        }
      }
    }
    if (absl::Now() - last_health > absl::Milliseconds(500)) {
      last_health = absl::Now();
      for (auto& wp : workers_) {
        Worker& w = *wp;
        if (!w.alive.load() || w.stub == nullptr) continue;
        grpc::ClientContext ctx;
        SetDeadline(ctx, 1000);
        proto::HealthResponse health;
        grpc::Status s = w.stub->Health(&ctx, proto::HealthRequest(), &health);
        absl::MutexLock lock(&mu_);
        if (s.ok()) {
          w.last_health = absl::Now();
          w.state = health.state();
          if (health.state() == proto::WORKER_STATE_FAILED) w.last_error = health.message();
        }
      }
    }
  }
}

void Coordinator::Shutdown() {
  if (shut_down_.exchange(true)) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  for (auto& wp : workers_) {
    Worker& w = *wp;
    if (w.pid > 0 && w.stub != nullptr) {
      grpc::ClientContext ctx;
      SetDeadline(ctx, 1000);
      proto::WorkerShutdownRequest request;
      request.set_reason("coordinator shutting down");
      proto::WorkerShutdownResponse response;
      (void)w.stub->Shutdown(&ctx, request, &response);
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
    w.alive.store(false);
  }
  absl::MutexLock lock(&dataplane_mu_);
  for (auto& wp : workers_) {
    wp->channel.reset();
    if (wp->endpoint != nullptr) (void)wp->endpoint->Close(100);
    wp->endpoint.reset();
  }
  ucx_worker_.reset();
}

absl::StatusOr<size_t> Coordinator::Await(Worker& w, TransferId id, const char* what) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(options_.step_timeout_ms);
  while (true) {
    absl::StatusOr<size_t> r = w.channel->Wait(id, 50);
    if (r.ok()) return r;
    if (r.status().code() != absl::StatusCode::kDeadlineExceeded) {
      w.alive.store(false);
      SetWorkerError(w, std::string(r.status().message()));
      return absl::UnavailableError(
          absl::StrCat("worker ", w.name, " is unavailable (", what, "): ", r.status().message()));
    }
    if (!w.alive.load()) {
      w.channel->Release(id);
      std::string why;
      {
        absl::MutexLock lock(&mu_);
        why = w.last_error;
      }
      return absl::UnavailableError(
          absl::StrCat("worker ", w.name, " is unavailable (", what, "): ", why));
    }
    if (absl::Now() > deadline) {
      w.channel->Release(id);
      return absl::DeadlineExceededError(absl::StrCat("worker ", w.name, ": no reply to ", what,
                                                      " within ", options_.step_timeout_ms,
                                                      " ms"));
    }
  }
}

absl::Status Coordinator::CheckReply(Worker& w, const uint8_t* reply, size_t bytes,
                                     size_t expected_payload) {
  ReplyHeader header;
  if (bytes < sizeof(header)) {
    return absl::InternalError(absl::StrCat(w.name, ": reply of ", bytes, " bytes"));
  }
  std::memcpy(&header, reply, sizeof(header));
  if (header.code != 0) {
    const size_t len = std::min<size_t>(static_cast<size_t>(header.message_bytes),
                                        bytes - sizeof(header));
    return absl::Status(static_cast<absl::StatusCode>(header.code),
                        absl::StrCat(w.name, ": ",
                                     std::string(reinterpret_cast<const char*>(reply) +
                                                     sizeof(header),
                                                 len)));
  }
  if (static_cast<size_t>(header.payload_bytes) != expected_payload ||
      bytes != sizeof(header) + expected_payload) {
    return absl::InternalError(absl::StrCat(w.name, ": reply payload of ", header.payload_bytes,
                                            " bytes, expected ", expected_payload));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Forward(absl::Span<const int32_t> tokens, int64_t start_pos,
                                  bool last_only, std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("Forward: empty batch of tokens");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is out of range [0, ", config_.vocab_size,
                                                     ")"));
    }
  }
  absl::MutexLock lock(&dataplane_mu_);
  if (ucx_worker_ == nullptr) return absl::UnavailableError("coordinator is shut down");
  for (auto& w : workers_) {
    if (!w->alive.load()) {
      std::string why;
      {
        absl::MutexLock l(&mu_);
        why = w->last_error;
      }
      return absl::UnavailableError(absl::StrCat("worker ", w->name, " is down: ", why));
    }
  }
  const int64_t vocab = config_.vocab_size;
  logits->resize(static_cast<size_t>((last_only ? 1 : n) * vocab));
  for (int64_t c0 = 0; c0 < n; c0 += max_batch_) {
    const int64_t m = std::min(max_batch_, n - c0);
    const bool last_chunk = c0 + m == n;
    const absl::Time t0 = absl::Now();
    MOEFLOW_RETURN_IF_ERROR(RunChunk(tokens.subspan(static_cast<size_t>(c0), static_cast<size_t>(m)),
                                     start_pos + c0, !last_only || last_chunk, last_only,
                                     logits->data() + (last_only ? 0 : c0 * vocab)));
    absl::MutexLock l(&mu_);
    if (step_times_us_.size() >= 4096) {
      step_times_us_.erase(step_times_us_.begin(), step_times_us_.begin() + 2048);
      step_batches_.erase(step_batches_.begin(), step_batches_.begin() + 2048);
    }
    step_times_us_.push_back(absl::ToInt64Microseconds(absl::Now() - t0));
    step_batches_.push_back(static_cast<int32_t>(m));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::RunChunk(absl::Span<const int32_t> tokens, int64_t start_pos,
                                   bool want_logits, bool last_only, float* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = config_.hidden;
  const int64_t k = k_.load();
  const size_t x_bytes = static_cast<size_t>(n * h) * sizeof(float);
  Worker& gpu = *workers_[0];
  const int n_expert_workers = static_cast<int>(workers_.size()) - 1;
  const bool slice = placement_ == proto::EXPERT_PLACEMENT_SLICE;
  const uint8_t gpu_source = static_cast<uint8_t>(gpu.configure.transport_source());
  uint8_t* gpu_send = gpu.channel->send_buffer().data();
  uint8_t* gpu_recv = gpu.channel->recv_buffer().data();
  const size_t gpu_part1_offset = gpu.channel->recv_buffer().size() -
                                  dataflow::AlignUp(sizeof(ReplyHeader) + max_batch_ * h * sizeof(float) + 4096);
  std::vector<proto::LayerStats> stats(static_cast<size_t>(config_.n_layers));

  // One request to the gpu_worker; `recv1` also receives part 1.
  auto gpu_call = [&](const RequestHeader& header, size_t payload, size_t expect0, bool recv1,
                      TransferId* id1) -> absl::Status {
    std::memcpy(gpu_send, &header, sizeof(header));
    const uint32_t seq = gpu.seq++;
    TransferId r0 = gpu.channel->PostRecv(
        dataflow::ReplyTag(seq, 0, gpu_source),
        absl::MakeSpan(gpu_recv, gpu_part1_offset));
    if (recv1) {
      *id1 = gpu.channel->PostRecv(
          dataflow::ReplyTag(seq, 1, gpu_source),
          absl::MakeSpan(gpu_recv + gpu_part1_offset, gpu.channel->recv_buffer().size() - gpu_part1_offset));
    }
    TransferId s = gpu.channel->PostSend(dataflow::RequestTag(seq),
                                         absl::MakeConstSpan(gpu_send, sizeof(header) + payload));
    absl::StatusOr<size_t> sent = Await(gpu, s, "send");
    if (!sent.ok()) {
      gpu.channel->Release(r0);
      if (recv1) gpu.channel->Release(*id1);
      return sent.status();
    }
    absl::StatusOr<size_t> got = Await(gpu, r0, "attention/router reply");
    if (!got.ok()) {
      if (recv1) gpu.channel->Release(*id1);
      return got.status();
    }
    absl::Status s0 = CheckReply(gpu, gpu_recv, *got, expect0);
    if (!s0.ok() && recv1) gpu.channel->Release(*id1);
    return s0;
  };

  // Embeddings.
  RequestHeader header;
  header.op = static_cast<uint32_t>(DataflowOp::kEmbed);
  header.layer = -1;  // counted apart from the layers in Stats
  header.n_tokens = static_cast<int32_t>(n);
  header.start_pos = static_cast<int32_t>(start_pos);
  std::memcpy(gpu_send + sizeof(header), tokens.data(), tokens.size() * sizeof(int32_t));
  MOEFLOW_RETURN_IF_ERROR(gpu_call(header, tokens.size() * sizeof(int32_t), x_bytes, false, nullptr));
  std::memcpy(x_.data(), gpu_recv + sizeof(ReplyHeader), x_bytes);

  for (int64_t il = 0; il < config_.n_layers; ++il) {
    proto::LayerStats& ls = stats[static_cast<size_t>(il)];
    ls.set_layer(static_cast<int32_t>(il));
    ls.set_steps(1);
    header = RequestHeader();
    header.op = static_cast<uint32_t>(DataflowOp::kLayer);
    header.layer = static_cast<int32_t>(il);
    header.n_tokens = static_cast<int32_t>(n);
    header.start_pos = static_cast<int32_t>(start_pos);
    header.k = static_cast<int32_t>(k);
    std::memcpy(gpu_send + sizeof(header), x_.data(), x_bytes);
    const bool moe = config_.is_moe_layer(il);
    const bool has_shared = moe && config_.n_shared_experts > 0;
    TransferId shared_id;
    const size_t expect0 = moe ? (2 * n * h + 2 * n * k) * sizeof(float) : x_bytes;
    MOEFLOW_RETURN_IF_ERROR(gpu_call(header, x_bytes, expect0, has_shared, &shared_id));
    const float* reply0 = reinterpret_cast<const float*>(gpu_recv + sizeof(ReplyHeader));
    if (!moe) {
      std::memcpy(x_.data(), reply0, x_bytes);
      continue;
    }
    const float* ffn_inp = reply0;
    const float* x_norm = reply0 + n * h;
    const int32_t* ids = reinterpret_cast<const int32_t*>(reply0 + 2 * n * h);
    const float* weights = reinterpret_cast<const float*>(ids + n * k);
    const absl::Time dispatch_start = absl::Now();

    // Dispatch the (token, expert) pairs.
    std::vector<TransferId> recv_ids(workers_.size()), send_ids(workers_.size());
    std::vector<int32_t> n_pairs(workers_.size(), 0);
    auto release_all = [&] {
      for (size_t wi = 1; wi < workers_.size(); ++wi) {
        if (workers_[wi]->channel != nullptr) {
          workers_[wi]->channel->Release(recv_ids[wi]);
          workers_[wi]->channel->Release(send_ids[wi]);
        }
      }
      if (has_shared) gpu.channel->Release(shared_id);
    };
    for (int wi = 1; wi <= n_expert_workers; ++wi) {
      Worker& w = *workers_[static_cast<size_t>(wi)];
      uint8_t* send = w.channel->send_buffer().data();
      std::fill(row_of_token_.begin(), row_of_token_.begin() + n, -1);
      int32_t rows = 0, pairs = 0;
      float* row_out = reinterpret_cast<float*>(send + sizeof(RequestHeader));
      for (int64_t p = 0; p < n * k; ++p) {
        const int32_t e = ids[p];
        if (!slice && expert_owner_[static_cast<size_t>(e)] != wi) continue;
        const int64_t t = p / k;
        if (row_of_token_[static_cast<size_t>(t)] < 0) {
          row_of_token_[static_cast<size_t>(t)] = rows;
          std::memcpy(row_out + rows * h, x_norm + t * h, static_cast<size_t>(h) * sizeof(float));
          ++rows;
        }
        pair_worker_[static_cast<size_t>(p)] = wi;
        pair_pos_[static_cast<size_t>(p)] = pairs++;
      }
      n_pairs[static_cast<size_t>(wi)] = pairs;
      if (pairs == 0) continue;
      int32_t* row_of_pair = reinterpret_cast<int32_t*>(row_out + rows * h);
      int32_t* expert_of_pair = row_of_pair + pairs;
      int32_t q = 0;
      for (int64_t p = 0; p < n * k; ++p) {
        if (!slice && expert_owner_[static_cast<size_t>(ids[p])] != wi) continue;
        row_of_pair[q] = row_of_token_[static_cast<size_t>(p / k)];
        expert_of_pair[q] = ids[p];
        ++q;
      }
      RequestHeader eh;
      eh.op = static_cast<uint32_t>(DataflowOp::kExperts);
      eh.layer = static_cast<int32_t>(il);
      eh.n_rows = rows;
      eh.n_pairs = pairs;
      std::memcpy(send, &eh, sizeof(eh));
      const size_t bytes = sizeof(eh) + static_cast<size_t>(rows * h) * sizeof(float) +
                           2 * static_cast<size_t>(pairs) * sizeof(int32_t);
      const uint32_t seq = w.seq++;
      recv_ids[static_cast<size_t>(wi)] = w.channel->PostRecv(
          dataflow::ReplyTag(seq, 0, static_cast<uint8_t>(w.configure.transport_source())),
          w.channel->recv_buffer());
      send_ids[static_cast<size_t>(wi)] =
          w.channel->PostSend(dataflow::RequestTag(seq), absl::MakeConstSpan(send, bytes));
      ls.set_bytes_sent(ls.bytes_sent() + static_cast<int64_t>(bytes));
    }
    for (int wi = 1; wi <= n_expert_workers; ++wi) {
      if (n_pairs[static_cast<size_t>(wi)] == 0) continue;
      Worker& w = *workers_[static_cast<size_t>(wi)];
      absl::StatusOr<size_t> sent = Await(w, send_ids[static_cast<size_t>(wi)], "expert request");
      send_ids[static_cast<size_t>(wi)] = TransferId();
      if (!sent.ok()) {
        release_all();
        return sent.status();
      }
    }
    for (int wi = 1; wi <= n_expert_workers; ++wi) {
      const int32_t pairs = n_pairs[static_cast<size_t>(wi)];
      if (pairs == 0) continue;
      Worker& w = *workers_[static_cast<size_t>(wi)];
      absl::StatusOr<size_t> got = Await(w, recv_ids[static_cast<size_t>(wi)], "expert reply");
      recv_ids[static_cast<size_t>(wi)] = TransferId();
      if (!got.ok()) {
        release_all();
        return got.status();
      }
      absl::Status s = CheckReply(w, w.channel->recv_buffer().data(), *got,
                                  static_cast<size_t>(pairs * h) * sizeof(float));
      if (!s.ok()) {
        release_all();
        return s;
      }
      ls.set_bytes_received(ls.bytes_received() + static_cast<int64_t>(*got));
      ls.set_rows_computed(ls.rows_computed() + pairs);
    }
    // Expert round trip: staging, sends, the workers' compute, replies.
    ls.set_transport_time_us(absl::ToInt64Microseconds(absl::Now() - dispatch_start));
    const absl::Time combine_start = absl::Now();
    const float* shared = nullptr;
    if (has_shared) {
      absl::StatusOr<size_t> got = Await(gpu, shared_id, "shared experts reply");
      if (!got.ok()) {
        release_all();
        return got.status();
      }
      MOEFLOW_RETURN_IF_ERROR(CheckReply(gpu, gpu_recv + gpu_part1_offset, *got, x_bytes));
      shared = reinterpret_cast<const float*>(gpu_recv + gpu_part1_offset + sizeof(ReplyHeader));
    }

    // y of pair p: its owner's reply row, or the sum of the slices in node order.
    auto y_of = [&](int64_t p) -> const float* {
      const Worker& w = *workers_[static_cast<size_t>(pair_worker_[static_cast<size_t>(p)])];
      return reinterpret_cast<const float*>(w.channel->recv_buffer().data() + sizeof(ReplyHeader)) +
             static_cast<int64_t>(pair_pos_[static_cast<size_t>(p)]) * h;
    };
    if (slice) {
      for (int64_t p = 0; p < n * k; ++p) {
        float* y = ysum_.data() + p * h;
        for (int wi = 1; wi <= n_expert_workers; ++wi) {
          const float* part =
              reinterpret_cast<const float*>(workers_[static_cast<size_t>(wi)]->channel->recv_buffer().data() +
                                             sizeof(ReplyHeader)) + p * h;
          if (wi == 1) {
            std::memcpy(y, part, static_cast<size_t>(h) * sizeof(float));
          } else {
            for (int64_t i = 0; i < h; ++i) y[i] += part[i];
          }
        }
      }
    }
    // out[t] = Σ_j w[t, j] · y[t, j], in j order: EngineRoutedExperts' sum.
    for (int64_t t = 0; t < n; ++t) {
      float* o = routed_.data() + t * h;
      std::fill(o, o + h, 0.f);
      for (int64_t j = 0; j < k; ++j) {
        const float w = weights[t * k + j];
        const float* yr = slice ? ysum_.data() + (t * k + j) * h : y_of(t * k + j);
        for (int64_t i = 0; i < h; ++i) o[i] += yr[i] * w;
      }
    }
    Combine(ffn_inp, routed_.data(), shared, n, h, x_.data());
    ls.set_compute_time_us(absl::ToInt64Microseconds(absl::Now() - combine_start));
  }
  {
    absl::MutexLock l(&mu_);
    for (size_t i = 0; i < stats.size(); ++i) {
      proto::LayerStats& total = layer_stats_[i];
      total.set_layer(static_cast<int32_t>(i));
      total.set_steps(total.steps() + stats[i].steps());
      total.set_transport_time_us(total.transport_time_us() + stats[i].transport_time_us());
      total.set_compute_time_us(total.compute_time_us() + stats[i].compute_time_us());
      total.set_bytes_sent(total.bytes_sent() + stats[i].bytes_sent());
      total.set_bytes_received(total.bytes_received() + stats[i].bytes_received());
      total.set_rows_computed(total.rows_computed() + stats[i].rows_computed());
    }
  }
  if (!want_logits) return absl::OkStatus();
  const int64_t rows = last_only ? 1 : n;
  header = RequestHeader();
  header.op = static_cast<uint32_t>(DataflowOp::kOutput);
  header.layer = static_cast<int32_t>(config_.n_layers);  // the output head, in Stats
  header.n_tokens = static_cast<int32_t>(rows);
  std::memcpy(gpu_send + sizeof(header), x_.data() + (n - rows) * h,
              static_cast<size_t>(rows * h) * sizeof(float));
  const size_t logits_bytes = static_cast<size_t>(rows * config_.vocab_size) * sizeof(float);
  MOEFLOW_RETURN_IF_ERROR(gpu_call(header, static_cast<size_t>(rows * h) * sizeof(float),
                                   logits_bytes, false, nullptr));
  std::memcpy(logits, gpu_recv + sizeof(ReplyHeader), logits_bytes);
  return absl::OkStatus();
}

void Coordinator::FillStatus(proto::StatusResponse* status) {
  absl::MutexLock lock(&mu_);
  status->set_model_name(model_name_);
  status->set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - start_time_));
  for (auto& wp : workers_) {
    const Worker& w = *wp;
    proto::WorkerStatus* s = status->add_workers();
    s->set_worker_name(w.name);
    s->set_role(w.role);
    s->set_grpc_address(w.grpc_address);
    s->set_state(w.alive.load() ? w.state : (w.state == proto::WORKER_STATE_SERVING
                                                 ? proto::WORKER_STATE_FAILED
                                                 : w.state));
    *s->mutable_shard() = w.configure.shard();
    s->set_last_health_age_ms(w.last_health == absl::InfinitePast()
                                  ? -1
                                  : absl::ToInt64Milliseconds(absl::Now() - w.last_health));
    s->set_last_error(w.last_error);
    s->set_restarts(w.restarts);
  }
}

bool Coordinator::AllServing() {
  absl::MutexLock lock(&mu_);
  for (auto& w : workers_) {
    if (!w->alive.load() || w->state != proto::WORKER_STATE_SERVING) return false;
  }
  return true;
}

void Coordinator::FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset) {
  {
    absl::MutexLock lock(&mu_);
    proto::WorkerLayerMetrics* own = metrics->add_workers();
    own->set_worker_name("coordinator");
    for (proto::LayerStats& s : layer_stats_) {
      *own->add_layers() = s;
      if (reset) s = proto::LayerStats();
    }
  }
  for (auto& wp : workers_) {
    Worker& w = *wp;
    if (!w.alive.load() || w.stub == nullptr) continue;
    grpc::ClientContext ctx;
    SetDeadline(ctx, options_.rpc_timeout_ms);
    proto::StatsRequest request;
    request.set_reset(reset);
    proto::StatsResponse response;
    if (!w.stub->Stats(&ctx, request, &response).ok()) continue;
    proto::WorkerLayerMetrics* m = metrics->add_workers();
    m->set_worker_name(w.name);
    for (const proto::LayerStats& s : response.layers()) *m->add_layers() = s;
  }
}

void Coordinator::StepTimePercentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50) {
  absl::MutexLock lock(&mu_);
  *p50 = *p99 = 0;
  *batch_p50 = 0;
  if (step_times_us_.empty()) return;
  std::vector<int64_t> t = step_times_us_;
  std::sort(t.begin(), t.end());
  *p50 = t[t.size() / 2];
  *p99 = t[std::min(t.size() - 1, t.size() * 99 / 100)];
  std::vector<int32_t> b = step_batches_;
  std::sort(b.begin(), b.end());
  *batch_p50 = b[b.size() / 2];
}

absl::StatusOr<int> Coordinator::SetActiveExperts(int k) {
  if (k < 0 || k > config_.n_experts_used) {
    return absl::InvalidArgumentError(absl::StrCat("active_experts_per_token ", k,
                                                   " is outside [0, ", config_.n_experts_used,
                                                   "]"));
  }
  const int previous = k_.exchange(k == 0 ? static_cast<int>(config_.n_experts_used) : k);
  return previous;
}

}  // namespace moeflow
