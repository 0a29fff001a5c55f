#include "coordinator/coordinator.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/bearer_auth.h"
#include "base/check.h"
#include "base/knobs.h"
#include "coordinator/topology.h"
#include "gpu_worker/attention_step.h"
#include "model/memory_plan.h"

namespace moeflow {
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

absl::Status CheckTopology(const proto::Topology& topo) {
  if (topo.model_path().empty()) {
    return absl::InvalidArgumentError("model_path: empty (set it in the topology or --model)");
  }
  if (topo.gpu_workers_size() != kMaxGpuWorkers) {
    return absl::InvalidArgumentError(absl::StrCat("gpu_workers: this coordinator drives ",
                                                   kMaxGpuWorkers, " gpu worker, the topology has ",
                                                   topo.gpu_workers_size()));
  }
  if (topo.expert_workers_size() < 1) {
    return absl::InvalidArgumentError("expert_workers: at least one is needed");
  }
  for (int i = 0; i < topo.expert_workers_size(); ++i) {
    const proto::ExpertWorkerSpec& e = topo.expert_workers(i);
    if (!IsLocalHost(e.host()) && e.address().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert_workers[", i, "].address: required for a worker on host ", e.host(),
                       " (start it there with cpu_expert_worker --listen=0.0.0.0:PORT)"));
    }
    if (!e.address().empty() && !HasNetworkTransport(topo.ucx_transports())) {
      return absl::InvalidArgumentError(absl::StrCat("ucx_transports: '", topo.ucx_transports(),
                                                     "' cannot reach expert_workers[", i, "] at ",
                                                     e.address(), " (add tcp)"));
    }
  }
  if (!topo.gpu_workers(0).address().empty()) {
    return absl::UnimplementedError(
        "gpu_workers[0].address: attaching to a gpu worker started by hand is not implemented "
        "(leave address empty: the launcher starts it)");
  }
  return absl::OkStatus();
}

// VRAM: each card's tensor-parallel share must fit its vram_gib (0: not checked).
absl::Status CheckVram(const proto::Topology& topo, const Deepseek2Config& cfg,
                       const GgufFile& file, int64_t max_batch) {
  for (int i = 0; i < topo.gpu_workers_size(); ++i) {
    const proto::GpuWorkerSpec& g = topo.gpu_workers(i);
    if (g.vram_gib() <= 0) continue;
    GpuPlanOptions gpu;
    gpu.n_devices = std::max(1, g.device_ids_size());
    gpu.context_tokens = g.kv_cache_tokens() > 0
                             ? std::min<int64_t>(g.kv_cache_tokens(), cfg.context_length)
                             : cfg.context_length;
    gpu.max_batch_tokens = max_batch;
    const GpuMemoryPlan plan = PlanGpuMemory(cfg, file.tensors(), gpu);
    MOEFLOW_RETURN_IF_ERROR(CheckGpuMemoryFits(
        plan, static_cast<uint64_t>(g.vram_gib() * static_cast<double>(uint64_t{1} << 30)),
        absl::StrCat("gpu_workers[", i, "]"),
        std::vector<int>(g.device_ids().begin(), g.device_ids().end())));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator());
  c->options_ = std::move(options);
  c->start_time_ = absl::Now();
  const proto::Topology& topo = c->options_.topology;
  MOEFLOW_RETURN_IF_ERROR(CheckTopology(topo));
  MOEFLOW_ASSIGN_OR_RETURN(c->file_, GgufFile::Open(topo.model_path()));
  MOEFLOW_ASSIGN_OR_RETURN(c->config_, Deepseek2Config::FromGguf(*c->file_));
  c->model_name_ = c->file_->GetString("general.name").value_or("");
  std::string token;
  if (!topo.worker_token_file().empty()) {
    absl::StatusOr<std::string> t = dataflow::ReadTokenFile(topo.worker_token_file());
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("worker_token_file: ", t.status().message()));
    }
    token = *std::move(t);
  } else {
    MOEFLOW_ASSIGN_OR_RETURN(token, dataflow::NewRandomToken());
  }
  const Deepseek2Config& cfg = c->config_;
  c->k_ = static_cast<int>(cfg.n_experts_used);
  const int64_t max_batch = topo.max_batch_tokens() > 0 ? topo.max_batch_tokens() : 64;
  MOEFLOW_RETURN_IF_ERROR(CheckVram(topo, cfg, *c->file_, max_batch));
  MOEFLOW_ASSIGN_OR_RETURN(
      c->plan_, PlanExperts(cfg, c->file_->tensors(), topo, MemTotalBytes(), c->options_.log));

  // The workers: gpu0 (attention), then the expert workers in plan order.
  std::vector<WorkerSpec> specs;
  const proto::GpuWorkerSpec& g = topo.gpu_workers(0);
  {
    WorkerSpec w;
    w.name = "gpu0";
    w.role = proto::WORKER_ROLE_GPU;
    w.binary = c->options_.gpu_worker_binary;
    proto::ConfigureRequest& r = w.configure;
    r.set_backend(g.backend() == proto::GPU_BACKEND_CUDA ? "cuda" : "cpu");
    r.set_kv_cache_tokens(g.kv_cache_tokens());
    r.set_compute_threads(g.threads());
    r.set_numa_node(-1);
    r.set_max_sequences(static_cast<int32_t>(std::max<int64_t>(1, c->options_.max_sequences)));
    r.set_kv_page_tokens(16);
    r.mutable_shard()->mutable_layers()->set_end_layer(static_cast<int32_t>(cfg.n_layers));
    specs.push_back(std::move(w));
  }
  for (int i = 0; i < topo.expert_workers_size(); ++i) {
    const proto::ExpertWorkerSpec& e = topo.expert_workers(i);
    WorkerSpec w;
    w.name = absl::StrCat("expert", i);
    w.role = proto::WORKER_ROLE_CPU_EXPERT;
    w.binary = c->options_.expert_worker_binary;
    w.attach_address = e.address();
    proto::ConfigureRequest& r = w.configure;
    r.set_compute_threads(e.threads());
    r.set_numa_node(e.numa_node());
    r.set_expert_memory(e.memory());
    *r.mutable_shard() = c->plan_.shards[static_cast<size_t>(i)];
    specs.push_back(std::move(w));
  }
  const std::map<std::string, std::string> knobs = KnobValues();
  for (WorkerSpec& w : specs) {
    proto::ConfigureRequest& r = w.configure;
    r.mutable_knobs()->insert(knobs.begin(), knobs.end());
    r.set_model_path(topo.model_path());
    r.set_role(w.role);
    r.set_max_batch_tokens(static_cast<int32_t>(max_batch));
    r.mutable_transport()->set_tls(topo.ucx_transports());
    r.mutable_transport()->set_net_devices(topo.ucx_net_devices());
    r.set_worker_name(w.name);
  }
  // The step limits, as the attention worker derives them from its Configure.
  const AttentionStepLimits l = LimitsFromConfigure(specs[0].configure, cfg);
  c->limits_ = StepLimits{l.max_tokens, l.max_segments, l.page_tokens, l.n_pages, l.max_positions};
  const int64_t h = cfg.hidden, k = cfg.n_experts_used;
  specs[0].max_request_bytes =
      dataflow::MaxLayerRequestBytes(l.max_tokens, l.max_segments, MaxStepPages(l), h);
  specs[0].max_reply_bytes =
      std::max(dataflow::RouterReplyBytes(l.max_tokens, h, k),
               dataflow::SectionBytes<float>(static_cast<size_t>(l.max_tokens * cfg.vocab_size)));
  for (size_t i = 1; i < specs.size(); ++i) {
    specs[i].max_request_bytes = dataflow::MaxExpertsRequestBytes(max_batch, max_batch * k, h);
    specs[i].max_reply_bytes =
        dataflow::SectionBytes<float>(static_cast<size_t>(max_batch * k * h));
  }
  if (g.backend() == proto::GPU_BACKEND_CPU && !g.separate_process()) {
    c->local_gpu_ = std::make_unique<CpuGpuWorkerBackend>();
    MOEFLOW_RETURN_IF_ERROR(c->local_gpu_->Configure(specs[0].configure));
    MOEFLOW_RETURN_IF_ERROR(c->local_gpu_->Load([&](const proto::LoadProgress& p) {
      c->options_.log(absl::StrCat("gpu0 (in coordinator): load ", proto::LoadPhase_Name(p.phase()),
                                   " ", FormatBytes(static_cast<double>(p.bytes_done())), " / ",
                                   FormatBytes(static_cast<double>(p.bytes_total()))));
    }));
    // The expert workers are other processes: its pool rests while they compute.
    c->local_gpu_client_ = std::make_unique<dataflow::InProcessClient>("gpu0", c->local_gpu_.get(),
                                                                       /*rest_between_calls=*/true);
    specs[0].in_process = c->local_gpu_client_.get();
  }
  bool overlap = true;
  switch (c->options_.overlap_shared_experts) {
    case CoordinatorOptions::Overlap::kAuto:
      overlap = OverlapSharedExperts(topo);
      break;
    case CoordinatorOptions::Overlap::kOn:
      break;
    case CoordinatorOptions::Overlap::kOff:
      overlap = false;
      break;
  }
  c->options_.log(overlap ? "shared experts: computed while the expert workers compute"
                          : "shared experts: computed after the expert replies (the pools would "
                            "share this host's cores)");
  SupervisorOptions so;
  so.worker_token = token;
  so.ucx_tls = topo.ucx_transports();
  so.ucx_net_devices = topo.ucx_net_devices();
  so.rpc_timeout_ms = c->options_.rpc_timeout_ms;
  so.load_timeout_ms = c->options_.load_timeout_ms;
  so.step_timeout_ms = c->options_.step_timeout_ms;
  so.monitor_interval_ms = c->options_.monitor_interval_ms;
  so.restart_workers = c->options_.restart_workers;
  so.reattach_interval_ms = c->options_.reattach_interval_ms;
  so.log = c->options_.log;
  c->supervisor_ = std::make_unique<WorkerSupervisor>(std::move(so), std::move(specs));
  if (absl::Status s = c->supervisor_->Start(); !s.ok()) {
    c->supervisor_->Shutdown();
    return s;
  }
  LayerDriverOptions driver;
  driver.max_tokens = l.max_tokens;
  driver.overlap_shared_experts = overlap;
  c->driver_ = std::make_unique<LayerDriver>(cfg, &c->plan_, driver);
  c->metrics_ = std::make_unique<StepMetrics>(cfg.n_layers);
  return c;
}

Coordinator::~Coordinator() { Shutdown(); }

void Coordinator::Shutdown() {
  if (supervisor_ != nullptr) supervisor_->Shutdown();
}

absl::Status Coordinator::Step(absl::Span<const StepSegment> segments, bool all_logits,
                               absl::Span<float> logits) {
  absl::MutexLock lock(&supervisor_->dataplane_mutex());
  const std::vector<dataflow::WorkerClient*> clients = supervisor_->clients();
  StepClients step{clients[0],
                   std::vector<dataflow::WorkerClient*>(clients.begin() + 1, clients.end())};
  for (size_t i = 0; i < clients.size(); ++i) {
    if (clients[i] == nullptr) {
      return absl::UnavailableError(absl::StrCat("worker ", i == 0 ? "gpu0" : "expert",
                                                 i == 0 ? "" : absl::StrCat(i - 1),
                                                 " is not connected"));
    }
  }
  int64_t tokens = 0;
  for (const StepSegment& s : segments) tokens += static_cast<int64_t>(s.tokens.size());
  const absl::Time t0 = absl::Now();
  MOEFLOW_RETURN_IF_ERROR(
      driver_->Step(step, segments, k_.load(), all_logits, logits, &step_stats_));
  metrics_->Record(absl::ToInt64Microseconds(absl::Now() - t0), static_cast<int32_t>(tokens),
                   step_stats_);
  return absl::OkStatus();
}

void Coordinator::FillStatus(proto::StatusResponse* status) {
  status->set_model_name(model_name_);
  status->set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - start_time_));
  supervisor_->FillStatus(status);
}

void Coordinator::FillWorkerMetrics(proto::MetricsResponse* metrics, bool reset) {
  metrics_->Fill(metrics, reset);
  supervisor_->FillWorkerMetrics(metrics, reset);
}

absl::StatusOr<int> Coordinator::SetActiveExperts(int k) {
  if (k < 0 || k > config_.n_experts_used) {
    return absl::InvalidArgumentError(absl::StrCat(
        "active_experts_per_token ", k, " is outside [0, ", config_.n_experts_used, "]"));
  }
  return k_.exchange(k == 0 ? static_cast<int>(config_.n_experts_used) : k);
}

}  // namespace moeflow
