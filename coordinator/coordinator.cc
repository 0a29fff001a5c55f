#include "coordinator/coordinator.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/check.h"
#include "base/knobs.h"
#include "base/read_line.h"
#include "auth/bearer_auth.h"
#include "dataflow/wire.h"
#include "coordinator/topology.h"
#include "gpu_worker/cpu_backend.h"
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
  // The gpu worker's CPU backend running in this process (local_gpu_).
  bool in_process = false;
  // host:port of a worker started by hand that the coordinator attaches to
  // instead of spawning; empty: spawned here.
  std::string attach_address;
  absl::Time last_attach_try = absl::InfinitePast();  // monitor thread
  // Process (monitor thread and Start only).
  pid_t pid = -1;
  std::string grpc_address;
  // Replaced by the monitor thread when it restarts or re-attaches the
  // worker: written under Coordinator::mu_; other threads than the monitor
  // (and Start, before it runs) copy it under mu_ (StubOf).
  std::shared_ptr<proto::WorkerService::Stub> stub;
  std::atomic<bool> alive{false};
  std::atomic<int> epoch{0};
  int restarts = 0;  // Coordinator::mu_
  // The error that keeps it from serving and when it was seen; once it
  // serves again the error moves to recovered_error (Coordinator::mu_).
  void RecordError(std::string error) {
    last_error = std::move(error);
    last_error_time = absl::Now();
  }
  void Recovered() {
    if (!last_error.empty()) recovered_error = std::move(last_error);
    last_error.clear();
  }
  absl::Time last_error_time = absl::InfinitePast();
  std::string recovered_error;
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

// Whether the in-process gpu worker computes the shared experts while the
// expert workers compute the routed ones. Not when a spawned expert worker's
// pool and the gpu worker's CPU pool would together want more threads than
// this host has cores: the overlapped pools then take turns on the cores, and
// a pool thread descheduled inside its chunk stalls its whole parallel loop
// for a scheduler time slice (the 50-120 ms p99 steps measured on 2 cores).
// Serialized, each pool has every core while the other process sleeps.
bool OverlapSharedExperts(const proto::Topology& topo) {
  const proto::GpuWorkerSpec& g = topo.gpu_workers(0);
  if (g.backend() != proto::GPU_BACKEND_CPU) return true;
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  auto want = [cores](int threads) { return threads <= 0 ? cores : std::min(threads, cores); };
  int threads = want(g.threads());
  for (const proto::ExpertWorkerSpec& e : topo.expert_workers()) {
    if (!e.address().empty()) continue;  // on another host (or started by hand)
    threads += want(e.threads());
  }
  return threads <= cores;
}

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
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
  if (topo.gpu_workers_size() != kMaxGpuWorkers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gpu_workers: this coordinator drives ", kMaxGpuWorkers, " gpu worker, the topology has ",
        topo.gpu_workers_size()));
  }
  for (int i = 0; i < topo.expert_workers_size(); ++i) {
    const proto::ExpertWorkerSpec& e = topo.expert_workers(i);
    if (!IsLocalHost(e.host()) && e.address().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert_workers[", i, "].address: required for a worker on host ", e.host(),
          " (start it there with cpu_expert_worker --listen=0.0.0.0:PORT)"));
    }
    if (!e.address().empty() && !HasNetworkTransport(topo.ucx_transports())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ucx_transports: '", topo.ucx_transports(), "' cannot reach expert_workers[", i,
          "] at ", e.address(), " (add tcp)"));
    }
  }
  if (!topo.gpu_workers(0).address().empty()) {
    return absl::UnimplementedError(
        "gpu_workers[0].address: attaching to a gpu worker started by hand is not implemented "
        "(leave address empty: the launcher starts it)");
  }
  MOEFLOW_ASSIGN_OR_RETURN(c->file_, GgufFile::Open(topo.model_path()));
  MOEFLOW_ASSIGN_OR_RETURN(c->config_, Deepseek2Config::FromGguf(*c->file_));
  c->model_name_ = c->file_->GetString("general.name").value_or("");
  if (!topo.worker_token_file().empty()) {
    absl::StatusOr<std::string> token = dataflow::ReadTokenFile(topo.worker_token_file());
    if (!token.ok()) {
      return absl::Status(token.status().code(),
                          absl::StrCat("worker_token_file: ", token.status().message()));
    }
    c->worker_token_ = *std::move(token);
  } else {
    MOEFLOW_ASSIGN_OR_RETURN(c->worker_token_, dataflow::NewRandomToken());
  }
  const Deepseek2Config& cfg = c->config_;
  c->k_ = static_cast<int>(cfg.n_experts_used);
  c->max_batch_ = topo.max_batch_tokens() > 0 ? topo.max_batch_tokens() : 64;
  const int n_experts_workers = topo.expert_workers_size();

  // VRAM: each card's tensor-parallel share must fit its vram_gib (0: not checked).
  for (int i = 0; i < topo.gpu_workers_size(); ++i) {
    const proto::GpuWorkerSpec& g = topo.gpu_workers(i);
    if (g.vram_gib() <= 0) continue;
    GpuPlanOptions gpu;
    gpu.n_devices = std::max(1, g.device_ids_size());
    gpu.context_tokens = g.kv_cache_tokens() > 0
                             ? std::min<int64_t>(g.kv_cache_tokens(), cfg.context_length)
                             : cfg.context_length;
    gpu.max_batch_tokens = c->max_batch_;
    const GpuMemoryPlan gpu_plan = PlanGpuMemory(cfg, c->file_->tensors(), gpu);
    MOEFLOW_RETURN_IF_ERROR(CheckGpuMemoryFits(
        gpu_plan, static_cast<uint64_t>(g.vram_gib() * static_cast<double>(uint64_t{1} << 30)),
        absl::StrCat("gpu_workers[", i, "]"),
        std::vector<int>(g.device_ids().begin(), g.device_ids().end())));
  }

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
    w->in_process = g.backend() == proto::GPU_BACKEND_CPU && !g.separate_process();
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
    r.set_expert_memory(e.memory());
    w->attach_address = e.address();
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
  switch (c->options_.overlap_shared_experts) {
    case CoordinatorOptions::Overlap::kAuto:
      c->overlap_shared_experts_ = OverlapSharedExperts(topo);
      break;
    case CoordinatorOptions::Overlap::kOn:
      c->overlap_shared_experts_ = true;
      break;
    case CoordinatorOptions::Overlap::kOff:
      c->overlap_shared_experts_ = false;
      break;
  }
  c->options_.log(c->overlap_shared_experts_
                      ? "shared experts: computed while the expert workers compute"
                      : "shared experts: computed after the expert replies (the pools would "
                        "share this host's cores)");
  if (c->placement_ == proto::EXPERT_PLACEMENT_REPLICATE) {
    // Whole experts per worker (e mod n), so each expert's batch of tokens is
    // one matmul as in the single-process engine.
    for (int64_t x = 0; x < cfg.n_experts; ++x) {
      c->expert_owner_[static_cast<size_t>(x)] = static_cast<int>(x % n_experts_workers) + 1;
    }
  }
  const std::map<std::string, std::string> knobs = KnobValues();
  for (auto& w : c->workers_) {
    w->configure.mutable_knobs()->insert(knobs.begin(), knobs.end());
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
      if (w->in_process) continue;
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
  c->n_pairs_.resize(c->workers_.size());
  c->reply_rows_.resize(c->workers_.size());
  c->expert_send_ids_.resize(c->workers_.size());
  c->expert_recv_ids_.resize(c->workers_.size());
  // Layers, plus the embedding (index n_layers) and output head (n_layers + 1)
  // for the in-process gpu worker's counters.
  c->step_stats_.resize(static_cast<size_t>(cfg.n_layers));
  c->local_gpu_step_stats_.resize(static_cast<size_t>(cfg.n_layers + 2));
  {
    absl::MutexLock lock(&c->mu_);
    c->layer_stats_.resize(static_cast<size_t>(cfg.n_layers));
    c->local_gpu_stats_.resize(static_cast<size_t>(cfg.n_layers + 2));
  }
  c->monitor_ = std::thread([p = c.get()] { p->MonitorLoop(); });
  return c;
}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::LoadInProcess(Worker& w) {
  auto backend = std::make_unique<CpuGpuWorkerBackend>();
  MOEFLOW_RETURN_IF_ERROR(backend->Configure(w.configure));
  MOEFLOW_RETURN_IF_ERROR(backend->Load([&](const proto::LoadProgress& progress) {
    options_.log(absl::StrCat(w.name, " (in coordinator): load ",
                              proto::LoadPhase_Name(progress.phase()), " ",
                              Human(static_cast<double>(progress.bytes_done())), " / ",
                              Human(static_cast<double>(progress.bytes_total()))));
  }));
  // The layout of the UCX channel's buffers (ConnectWorker), so RunChunk reads
  // replies the same way from both.
  const size_t part0 = backend->ReplyPartBytes()[0];
  const size_t part1 = backend->ReplyPartBytes()[1];
  local_send_.assign(sizeof(RequestHeader) + backend->MaxRequestBytes(), 0);
  local_recv_.assign(dataflow::AlignUp(sizeof(ReplyHeader) + part0 + 4096) +
                         dataflow::AlignUp(sizeof(ReplyHeader) + part1 + 4096),
                     0);
  local_gpu_ = std::move(backend);
  w.grpc_address = "(in coordinator)";
  w.alive.store(true);
  absl::MutexLock lock(&mu_);
  w.state = proto::WORKER_STATE_SERVING;
  w.last_health = absl::Now();
  return absl::OkStatus();
}

void Coordinator::PrepareCall(grpc::ClientContext& context, int ms) const {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(ms)));
  context.AddMetadata("authorization", "Bearer " + worker_token_);
}

absl::Status Coordinator::SpawnProcess(Worker& w) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  const std::string listen = "--listen=127.0.0.1:0";
  std::vector<char*> argv = {const_cast<char*>(w.binary.c_str()), const_cast<char*>(listen.c_str()),
                             nullptr};
  // The token travels in the environment (not argv, which `ps` shows):
  // this process's environment without any MOEFLOW_WORKER_TOKEN, plus ours.
  const std::string token_var = absl::StrCat(dataflow::kWorkerTokenEnv, "=", worker_token_);
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
    return absl::UnavailableError(absl::StrCat(w.name, ": ", w.binary,
                                               " did not report its gRPC port (did it start?)"));
  }
  w.grpc_address = absl::StrCat("127.0.0.1:", port);
  return absl::OkStatus();
}

absl::Status Coordinator::SpawnAndLoad(Worker& w) {
  if (w.in_process) return LoadInProcess(w);
  w.epoch.fetch_add(1);
  w.configure.set_transport_source(dataflow::SourceByte(w.index, w.epoch.load()));
  if (!w.attach_address.empty()) {
    w.grpc_address = w.attach_address;
  } else {
    MOEFLOW_RETURN_IF_ERROR(SpawnProcess(w));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  {
    std::shared_ptr<proto::WorkerService::Stub> stub = proto::WorkerService::NewStub(
        grpc::CreateCustomChannel(w.grpc_address, grpc::InsecureChannelCredentials(), args));
    absl::MutexLock lock(&mu_);
    w.stub = std::move(stub);
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.rpc_timeout_ms);
    proto::ConfigureResponse response;
    grpc::Status s = w.stub->Configure(&ctx, w.configure, &response);
    if (!s.ok()) {
      KillProcess(w);
      return FromGrpc(s, absl::StrCat(w.name, " (", w.attach_address.empty() ? w.binary : w.grpc_address,
                                      "): Configure"));
    }
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.load_timeout_ms);
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
    PrepareCall(ctx, options_.rpc_timeout_ms);
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
  options.yield_before_sleep_us = dataflow::DataflowYieldMicros();
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
        sizeof(RequestHeader) + n * h * sizeof(float) + 2 * n * k * sizeof(int32_t) +
        n * k * sizeof(float)));  // kExpertsCombine's weights
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
  PrepareCall(ctx, options_.rpc_timeout_ms);
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
  w.RecordError(error);
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
      if (w.in_process) continue;
      const bool attached = !w.attach_address.empty();
      if (attached) {
        // A hand-started worker that is lost: attach again, at most every
        // reattach_interval_ms (its supervisor may restart it any time).
        if (w.alive.load() || !options_.restart_workers ||
            absl::Now() - w.last_attach_try < absl::Milliseconds(options_.reattach_interval_ms)) {
          continue;
        }
        {
          absl::MutexLock lock(&mu_);
          if (stopping_) return;
        }
        w.last_attach_try = absl::Now();
        absl::Status s = SpawnAndLoad(w);
        if (s.ok()) {
          absl::MutexLock lock(&dataplane_mu_);
          s = ConnectWorker(w);
        }
        if (!s.ok()) {
          SetWorkerError(w, absl::StrCat("attaching to ", w.attach_address, ": ", s.message()));
        } else {
          options_.log(absl::StrCat(w.name, ": attached again at ", w.attach_address));
          absl::MutexLock lock(&mu_);
          ++w.restarts;
          w.Recovered();
        }
        continue;
      }
      if (w.pid > 0) {
        int status = 0;
        if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
          w.pid = -1;
          w.alive.store(false);
          const std::string why = absl::StrCat("process ", ExitDescription(status));
          options_.log(absl::StrCat(w.name, ": ", why));
          absl::MutexLock lock(&mu_);
          w.state = proto::WORKER_STATE_FAILED;
          w.RecordError(why);
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
          w.Recovered();
        }
      }
    }
    if (absl::Now() - last_health > absl::Milliseconds(500)) {
      last_health = absl::Now();
      for (auto& wp : workers_) {
        Worker& w = *wp;
        if (!w.alive.load() || w.stub == nullptr) continue;
        grpc::ClientContext ctx;
        PrepareCall(ctx, 1000);
        proto::HealthResponse health;
        grpc::Status s = w.stub->Health(&ctx, proto::HealthRequest(), &health);
        if (!s.ok() && !w.attach_address.empty() && s.error_code() == grpc::UNAVAILABLE) {
          // No process of ours to reap: an unreachable hand-started worker is lost.
          options_.log(absl::StrCat(w.name, ": ", w.attach_address, " is unreachable: ",
                                    s.error_message()));
          w.alive.store(false);
          absl::MutexLock lock(&mu_);
          w.state = proto::WORKER_STATE_FAILED;
          w.RecordError(absl::StrCat(w.attach_address, " unreachable: ", s.error_message()));
          continue;
        }
        absl::MutexLock lock(&mu_);
        if (s.ok()) {
          w.last_health = absl::Now();
          w.state = health.state();
          if (health.state() == proto::WORKER_STATE_FAILED) {
            w.RecordError(health.message());
            // A hand-started worker that lost its data plane serves no more.
            if (!w.attach_address.empty()) w.alive.store(false);
          }
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
    if ((w.pid > 0 || (!w.attach_address.empty() && w.alive.load())) && w.stub != nullptr) {
      grpc::ClientContext ctx;
      PrepareCall(ctx, 1000);
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
    if (wp->channel != nullptr && wp->channel->late_wakeups() > 0) {
      options_.log(absl::StrCat(wp->name, ": ", wp->channel->LateWakeupsNote()));
    }
    wp->channel.reset();
    if (wp->endpoint != nullptr) (void)wp->endpoint->Close(100);
    wp->endpoint.reset();
  }
  ucx_worker_.reset();
  local_gpu_.reset();
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

namespace {

// Reply parts of the in-process gpu worker: written into local_recv_ in the
// channel's layout; Send(0) runs the caller's on_part0 (posting the expert
// requests) before the backend goes on with the shared experts.
class LocalReplyWriter final : public dataflow::ReplyWriter {
 public:
  LocalReplyWriter(uint8_t* part0, uint8_t* part1, absl::FunctionRef<absl::Status()> on_part0)
      : base_{part0, part1}, on_part0_(on_part0) {}
  uint8_t* Payload(int part) override { return base_[part] + sizeof(ReplyHeader); }
  absl::Status Send(int part, size_t payload_bytes) override {
    ReplyHeader header;
    header.payload_bytes = static_cast<int64_t>(payload_bytes);
    std::memcpy(base_[part], &header, sizeof(header));
    bytes_[part] = sizeof(header) + payload_bytes;
    return part == 0 ? on_part0_() : absl::OkStatus();
  }
  size_t bytes(int part) const { return bytes_[part]; }

 private:
  uint8_t* base_[2];
  size_t bytes_[2] = {0, 0};
  absl::FunctionRef<absl::Status()> on_part0_;
};

absl::Status NoPart0Action() { return absl::OkStatus(); }

}  // namespace

absl::Status Coordinator::CallGpu(const RequestHeader& header, size_t payload_bytes,
                                  size_t expect0, absl::FunctionRef<absl::Status()> on_part0,
                                  bool want_part1, size_t expect1, proto::LayerStats& stats) {
  Worker& gpu = *workers_[0];
  std::memcpy(gpu_send_, &header, sizeof(header));
  if (gpu.in_process) {
    const absl::Time t0 = absl::Now();
    LocalReplyWriter writer(gpu_recv_, gpu_recv_ + gpu_part1_offset_, on_part0);
    MOEFLOW_RETURN_IF_ERROR(local_gpu_->Handle(
        header, absl::MakeConstSpan(gpu_send_ + sizeof(header), payload_bytes), writer, stats));
    stats.set_compute_time_us(stats.compute_time_us() +
                              absl::ToInt64Microseconds(absl::Now() - t0));
    stats.set_steps(stats.steps() + 1);
    MOEFLOW_RETURN_IF_ERROR(CheckReply(gpu, gpu_recv_, writer.bytes(0), expect0));
    if (want_part1) {
      MOEFLOW_RETURN_IF_ERROR(
          CheckReply(gpu, gpu_recv_ + gpu_part1_offset_, writer.bytes(1), expect1));
    }
    return absl::OkStatus();
  }
  const uint8_t source = static_cast<uint8_t>(gpu.configure.transport_source());
  const uint32_t seq = gpu.seq++;
  TransferId r0 = gpu.channel->PostRecv(dataflow::ReplyTag(seq, 0, source),
                                        absl::MakeSpan(gpu_recv_, gpu_part1_offset_));
  TransferId r1;
  if (want_part1) {
    r1 = gpu.channel->PostRecv(
        dataflow::ReplyTag(seq, 1, source),
        absl::MakeSpan(gpu_recv_ + gpu_part1_offset_,
                       gpu.channel->recv_buffer().size() - gpu_part1_offset_));
  }
  TransferId sent_id = gpu.channel->PostSend(
      dataflow::RequestTag(seq), absl::MakeConstSpan(gpu_send_, sizeof(header) + payload_bytes));
  absl::StatusOr<size_t> sent = Await(gpu, sent_id, "send");
  if (!sent.ok()) {
    gpu.channel->Release(r0);
    gpu.channel->Release(r1);
    return sent.status();
  }
  absl::StatusOr<size_t> got = Await(gpu, r0, "attention/router reply");
  absl::Status s0 = got.ok() ? CheckReply(gpu, gpu_recv_, *got, expect0) : got.status();
  if (s0.ok()) s0 = on_part0();
  if (!s0.ok()) {
    gpu.channel->Release(r1);
    return s0;
  }
  if (!want_part1) return absl::OkStatus();
  got = Await(gpu, r1, "shared experts reply");
  if (!got.ok()) return got.status();
  return CheckReply(gpu, gpu_recv_ + gpu_part1_offset_, *got, expect1);
}

void Coordinator::ReleaseExpertTransfers() {
  for (size_t wi = 1; wi < workers_.size(); ++wi) {
    if (workers_[wi]->channel != nullptr) {
      workers_[wi]->channel->Release(expert_recv_ids_[wi]);
      workers_[wi]->channel->Release(expert_send_ids_[wi]);
    }
    expert_recv_ids_[wi] = TransferId();
    expert_send_ids_[wi] = TransferId();
  }
}

absl::Status Coordinator::DispatchExperts(int64_t il, int64_t n, int64_t k,
                                          proto::LayerStats& ls) {
  const int64_t h = config_.hidden;
  const bool slice = placement_ == proto::EXPERT_PLACEMENT_SLICE;
  const float* reply0 = reinterpret_cast<const float*>(gpu_recv_ + sizeof(ReplyHeader));
  const float* x_norm = reply0 + n * h;
  const int32_t* ids = reinterpret_cast<const int32_t*>(reply0 + 2 * n * h);
  for (int64_t p = 0; p < n * k; ++p) {
    if (ids[p] < 0 || ids[p] >= config_.n_experts) {
      return absl::InternalError(absl::StrCat(workers_[0]->name, ": router chose expert ", ids[p],
                                              " (layer ", il, ", pair ", p, ")"));
    }
  }
  const int n_expert_workers = static_cast<int>(workers_.size()) - 1;
  // One worker holding every pair of the step sums them itself
  // (kExpertsCombine): its reply is n rows instead of n · k.
  combined_worker_ = 0;
  if (!slice) {
    const int32_t owner = expert_owner_[static_cast<size_t>(ids[0])];
    bool one_owner = true;
    for (int64_t p = 1; p < n * k && one_owner; ++p) {
      one_owner = expert_owner_[static_cast<size_t>(ids[p])] == owner;
    }
    if (one_owner) combined_worker_ = owner;
  }
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
    n_pairs_[static_cast<size_t>(wi)] = pairs;
    reply_rows_[static_cast<size_t>(wi)] = wi == combined_worker_ ? rows : pairs;
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
    size_t bytes = sizeof(eh) + static_cast<size_t>(rows * h) * sizeof(float) +
                   2 * static_cast<size_t>(pairs) * sizeof(int32_t);
    if (wi == combined_worker_) {
      // Every token's k pairs, in token and j order: row_of_pair[p] = p / k.
      const float* weights = reinterpret_cast<const float*>(ids + n * k);
      std::memcpy(expert_of_pair + pairs, weights, static_cast<size_t>(pairs) * sizeof(float));
      bytes += static_cast<size_t>(pairs) * sizeof(float);
      eh.flags = dataflow::kExpertsCombine;
      eh.k = static_cast<int32_t>(k);
    }
    std::memcpy(send, &eh, sizeof(eh));
    const uint32_t seq = w.seq++;
    expert_recv_ids_[static_cast<size_t>(wi)] = w.channel->PostRecv(
        dataflow::ReplyTag(seq, 0, static_cast<uint8_t>(w.configure.transport_source())),
        w.channel->recv_buffer());
    expert_send_ids_[static_cast<size_t>(wi)] =
        w.channel->PostSend(dataflow::RequestTag(seq), absl::MakeConstSpan(send, bytes));
    ls.set_bytes_sent(ls.bytes_sent() + static_cast<int64_t>(bytes));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::AwaitExperts(int64_t h, proto::LayerStats& ls) {
  const int n_expert_workers = static_cast<int>(workers_.size()) - 1;
  for (int wi = 1; wi <= n_expert_workers; ++wi) {
    if (n_pairs_[static_cast<size_t>(wi)] == 0) continue;
    Worker& w = *workers_[static_cast<size_t>(wi)];
    absl::StatusOr<size_t> sent =
        Await(w, expert_send_ids_[static_cast<size_t>(wi)], "expert request");
    expert_send_ids_[static_cast<size_t>(wi)] = TransferId();
    if (!sent.ok()) {
      return sent.status();
    }
  }
  for (int wi = 1; wi <= n_expert_workers; ++wi) {
    const int32_t pairs = n_pairs_[static_cast<size_t>(wi)];
    if (pairs == 0) continue;
    Worker& w = *workers_[static_cast<size_t>(wi)];
    absl::StatusOr<size_t> got =
        Await(w, expert_recv_ids_[static_cast<size_t>(wi)], "expert reply");
    expert_recv_ids_[static_cast<size_t>(wi)] = TransferId();
    const int64_t reply_rows = reply_rows_[static_cast<size_t>(wi)];
    absl::Status s = got.ok() ? CheckReply(w, w.channel->recv_buffer().data(), *got,
                                           static_cast<size_t>(reply_rows * h) * sizeof(float))
                              : got.status();
    if (!s.ok()) {
      return s;
    }
    ls.set_bytes_received(ls.bytes_received() + static_cast<int64_t>(*got));
    ls.set_rows_computed(ls.rows_computed() + pairs);
  }
  return absl::OkStatus();
}

absl::Status Coordinator::RunChunk(absl::Span<const int32_t> tokens, int64_t start_pos,
                                   bool want_logits, bool last_only, float* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = config_.hidden;
  const int64_t k = k_.load();
  const int64_t n_layers = config_.n_layers;
  const size_t x_bytes = static_cast<size_t>(n * h) * sizeof(float);
  Worker& gpu = *workers_[0];
  const int n_expert_workers = static_cast<int>(workers_.size()) - 1;
  const bool slice = placement_ == proto::EXPERT_PLACEMENT_SLICE;
  const size_t part1_capacity =
      dataflow::AlignUp(sizeof(ReplyHeader) + max_batch_ * h * sizeof(float) + 4096);
  if (gpu.in_process) {
    if (std::this_thread::get_id() != local_gpu_caller_) {
      local_gpu_caller_ = std::this_thread::get_id();
      local_gpu_->PinCaller();  // this thread runs the in-process gpu worker's loops
    }
    gpu_send_ = local_send_.data();
    gpu_recv_ = local_recv_.data();
    gpu_part1_offset_ = local_recv_.size() - part1_capacity;
  } else {
    gpu_send_ = gpu.channel->send_buffer().data();
    gpu_recv_ = gpu.channel->recv_buffer().data();
    gpu_part1_offset_ = gpu.channel->recv_buffer().size() - part1_capacity;
  }
  for (proto::LayerStats& s : step_stats_) s.Clear();
  for (proto::LayerStats& s : local_gpu_step_stats_) s.Clear();
  // The in-process gpu worker's counters: layers, then embedding, output head.
  auto gpu_stats = [&](int64_t slot) -> proto::LayerStats& {
    return local_gpu_step_stats_[static_cast<size_t>(slot)];
  };

  // Embeddings.
  RequestHeader header;
  header.op = static_cast<uint32_t>(DataflowOp::kEmbed);
  header.layer = -1;  // counted apart from the layers in Stats
  header.n_tokens = static_cast<int32_t>(n);
  header.start_pos = static_cast<int32_t>(start_pos);
  std::memcpy(gpu_send_ + sizeof(header), tokens.data(), tokens.size() * sizeof(int32_t));
  MOEFLOW_RETURN_IF_ERROR(CallGpu(header, tokens.size() * sizeof(int32_t), x_bytes, NoPart0Action,
                                  false, 0, gpu_stats(n_layers)));
  std::memcpy(x_.data(), gpu_recv_ + sizeof(ReplyHeader), x_bytes);

  for (int64_t il = 0; il < n_layers; ++il) {
    proto::LayerStats& ls = step_stats_[static_cast<size_t>(il)];
    ls.set_layer(static_cast<int32_t>(il));
    ls.set_steps(1);
    header = RequestHeader();
    header.op = static_cast<uint32_t>(DataflowOp::kLayer);
    header.layer = static_cast<int32_t>(il);
    header.n_tokens = static_cast<int32_t>(n);
    header.start_pos = static_cast<int32_t>(start_pos);
    header.k = static_cast<int32_t>(k);
    std::memcpy(gpu_send_ + sizeof(header), x_.data(), x_bytes);
    const bool moe = config_.is_moe_layer(il);
    const bool has_shared = moe && config_.n_shared_experts > 0;
    const size_t expect0 = moe ? (2 * n * h + 2 * n * k) * sizeof(float) : x_bytes;
    if (!moe) {
      MOEFLOW_RETURN_IF_ERROR(
          CallGpu(header, x_bytes, expect0, NoPart0Action, false, 0, gpu_stats(il)));
      std::memcpy(x_.data(), gpu_recv_ + sizeof(ReplyHeader), x_bytes);
      continue;
    }
    // The expert requests leave as soon as the router's output is here; the
    // gpu worker computes the shared experts meanwhile.
    // Without overlap (the two pools would share this host's cores), the
    // expert replies are awaited before the shared experts start.
    absl::Time dispatch_start, experts_end;
    bool experts_done = false;
    auto dispatch = [&]() -> absl::Status {
      dispatch_start = absl::Now();
      MOEFLOW_RETURN_IF_ERROR(DispatchExperts(il, n, k, ls));
      if (overlap_shared_experts_ || !has_shared || !gpu.in_process) return absl::OkStatus();
      experts_done = true;
      local_gpu_->Idle();  // its pool sleeps while the expert workers compute
      MOEFLOW_RETURN_IF_ERROR(AwaitExperts(h, ls));
      local_gpu_->Busy();  // and wakes for the shared experts that follow
      experts_end = absl::Now();
      return absl::OkStatus();
    };
    if (absl::Status s = CallGpu(header, x_bytes, expect0, dispatch, has_shared, x_bytes,
                                 gpu_stats(il));
        !s.ok()) {
      ReleaseExpertTransfers();
      return s;
    }
    const float* reply0 = reinterpret_cast<const float*>(gpu_recv_ + sizeof(ReplyHeader));
    const float* ffn_inp = reply0;
    const int32_t* ids = reinterpret_cast<const int32_t*>(reply0 + 2 * n * h);
    const float* weights = reinterpret_cast<const float*>(ids + n * k);
    const float* shared =
        has_shared
            ? reinterpret_cast<const float*>(gpu_recv_ + gpu_part1_offset_ + sizeof(ReplyHeader))
            : nullptr;
    if (!experts_done) {
      if (gpu.in_process) local_gpu_->Idle();  // nothing for its pool until the replies
      if (absl::Status s = AwaitExperts(h, ls); !s.ok()) {
        ReleaseExpertTransfers();
        return s;
      }
      if (gpu.in_process) local_gpu_->Busy();  // the next layer follows the combine
      experts_end = absl::Now();
    }
    // Expert round trip: staging, sends, the workers' compute, replies.
    const absl::Time combine_start = absl::Now();
    ls.set_transport_time_us(absl::ToInt64Microseconds(experts_end - dispatch_start));

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
          const float* part = reinterpret_cast<const float*>(
                                  workers_[static_cast<size_t>(wi)]->channel->recv_buffer().data() +
                                  sizeof(ReplyHeader)) +
                              p * h;
          if (wi == 1) {
            std::memcpy(y, part, static_cast<size_t>(h) * sizeof(float));
          } else {
            for (int64_t i = 0; i < h; ++i) y[i] += part[i];
          }
        }
      }
    }
    // out[t] = Σ_j w[t, j] · y[t, j], in j order: EngineRoutedExperts' sum,
    // already done by the worker when it held every pair (kExpertsCombine).
    const float* routed = routed_.data();
    if (combined_worker_ != 0) {
      routed = reinterpret_cast<const float*>(
          workers_[static_cast<size_t>(combined_worker_)]->channel->recv_buffer().data() +
          sizeof(ReplyHeader));
    } else {
      for (int64_t t = 0; t < n; ++t) {
        float* o = routed_.data() + t * h;
        std::fill(o, o + h, 0.f);
        for (int64_t j = 0; j < k; ++j) {
          const float w = weights[t * k + j];
          const float* yr = slice ? ysum_.data() + (t * k + j) * h : y_of(t * k + j);
          for (int64_t i = 0; i < h; ++i) o[i] += yr[i] * w;
        }
      }
    }
    Combine(ffn_inp, routed, shared, n, h, x_.data());
    ls.set_compute_time_us(absl::ToInt64Microseconds(absl::Now() - combine_start));
  }
  if (want_logits) {
    const int64_t rows = last_only ? 1 : n;
    header = RequestHeader();
    header.op = static_cast<uint32_t>(DataflowOp::kOutput);
    header.layer = static_cast<int32_t>(n_layers);  // the output head, in Stats
    header.n_tokens = static_cast<int32_t>(rows);
    std::memcpy(gpu_send_ + sizeof(header), x_.data() + (n - rows) * h,
                static_cast<size_t>(rows * h) * sizeof(float));
    const size_t logits_bytes = static_cast<size_t>(rows * config_.vocab_size) * sizeof(float);
    MOEFLOW_RETURN_IF_ERROR(CallGpu(header, static_cast<size_t>(rows * h) * sizeof(float),
                                    logits_bytes, NoPart0Action, false, 0,
                                    gpu_stats(n_layers + 1)));
    std::memcpy(logits, gpu_recv_ + sizeof(ReplyHeader), logits_bytes);
  }
  auto accumulate = [](const proto::LayerStats& s, int32_t layer, proto::LayerStats& total) {
    total.set_layer(layer);
    total.set_steps(total.steps() + s.steps());
    total.set_transport_time_us(total.transport_time_us() + s.transport_time_us());
    total.set_compute_time_us(total.compute_time_us() + s.compute_time_us());
    total.set_bytes_sent(total.bytes_sent() + s.bytes_sent());
    total.set_bytes_received(total.bytes_received() + s.bytes_received());
    total.set_rows_computed(total.rows_computed() + s.rows_computed());
  };
  absl::MutexLock l(&mu_);
  for (size_t i = 0; i < step_stats_.size(); ++i) {
    accumulate(step_stats_[i], static_cast<int32_t>(i), layer_stats_[i]);
  }
  if (gpu.in_process) {
    for (size_t i = 0; i < local_gpu_step_stats_.size(); ++i) {
      // Embedding as layer -1, the output head as layer n_layers (as the
      // gpu_worker process reports them).
      const int32_t layer = i < static_cast<size_t>(n_layers) ? static_cast<int32_t>(i)
                            : i == static_cast<size_t>(n_layers) ? -1
                                                                  : static_cast<int32_t>(n_layers);
      if (local_gpu_step_stats_[i].steps() > 0) {
        accumulate(local_gpu_step_stats_[i], layer, local_gpu_stats_[i]);
      }
    }
  }
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
    s->set_last_health_age_ms(w.in_process ? 0  // its health is the coordinator's
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
  if (workers_[0]->in_process) {
    absl::MutexLock lock(&mu_);
    proto::WorkerLayerMetrics* own = metrics->add_workers();
    own->set_worker_name(workers_[0]->name);
    for (proto::LayerStats& s : local_gpu_stats_) {
      if (s.steps() > 0) *own->add_layers() = s;
      if (reset) s = proto::LayerStats();
    }
  }
  for (auto& wp : workers_) {
    Worker& w = *wp;
    std::shared_ptr<proto::WorkerService::Stub> stub;
    {
      absl::MutexLock lock(&mu_);  // the monitor may be replacing it
      stub = w.stub;
    }
    if (!w.alive.load() || stub == nullptr) continue;
    grpc::ClientContext ctx;
    PrepareCall(ctx, options_.rpc_timeout_ms);
    proto::StatsRequest request;
    request.set_reset(reset);
    proto::StatsResponse response;
    if (!stub->Stats(&ctx, request, &response).ok()) continue;
    proto::WorkerLayerMetrics* m = metrics->add_workers();
    m->set_worker_name(w.name);
    for (const proto::LayerStats& s : response.layers()) *m->add_layers() = s;
  }
}

void Coordinator::StepTimeHistogram(std::vector<int64_t>* le_us, std::vector<int64_t>* counts) {
  // ms: fine around a decode step's 10-50 ms, coarse beyond.
  static constexpr int64_t kBoundsMs[] = {5,  10, 15,  20,  25,  30,  35,   40,
                                          50, 75, 100, 150, 250, 500, 1000, 0};
  le_us->clear();
  for (int64_t ms : kBoundsMs) le_us->push_back(ms * 1000);
  counts->assign(le_us->size(), 0);
  absl::MutexLock lock(&mu_);
  for (int64_t t : step_times_us_) {
    size_t b = 0;
    while ((*le_us)[b] != 0 && t > (*le_us)[b]) ++b;
    ++(*counts)[b];
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
