#include "cpu_expert_worker/expert_shard.h"

#include <hwloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "engine/engine_profile.h"
#include "formats/ggml_types.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe.h"
#include "kernels/cpu/numa.h"

namespace moeflow {
namespace {

// Makes the whole pages of [data, data + bytes) resident and mapped (read
// faults taken now): MADV_POPULATE_READ, or a read of each page where the
// kernel lacks it (before Linux 5.14).
void PrefaultPages(const uint8_t* data, size_t bytes) {
  if (bytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + bytes;
#ifdef MADV_POPULATE_READ
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0) return;
#endif
  uint8_t sum = 0;
  for (uintptr_t a = begin; a < end; a += page)
    sum ^= *reinterpret_cast<const volatile uint8_t*>(a);
  (void)sum;
}

}  // namespace

using dataflow::DataflowOp;
using dataflow::RequestHeader;

std::string ExpertShard::BindToNode(int numa_node, int* node_cores) {
  *node_cores = 0;
  if (numa_node < 0) return "not bound (numa_node -1)";
  hwloc_topology_t topology;
  if (hwloc_topology_init(&topology) != 0) return "not bound (hwloc_topology_init failed)";
  std::string result;
  if (hwloc_topology_load(topology) != 0) {
    result = "not bound (hwloc_topology_load failed)";
  } else {
    hwloc_obj_t node =
        hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(numa_node));
    if (node == nullptr) {
      result = absl::StrCat("not bound (hwloc sees no NUMA node ", numa_node, ")");
    } else {
      *node_cores = hwloc_get_nbobjs_inside_cpuset_by_type(topology, node->cpuset, HWLOC_OBJ_CORE);
      if (!hwloc_topology_is_thissystem(topology)) {
        // HWLOC_SYNTHETIC and friends describe another machine: binding
        // calls would act on this one with meaningless masks.
        result = absl::StrCat("simulated NUMA node ", numa_node, " (", *node_cores,
                              " cores; synthetic topology, not bound)");
      } else {
        const int cpu = hwloc_set_cpubind(topology, node->cpuset, HWLOC_CPUBIND_PROCESS);
        const int mem = hwloc_set_membind(topology, node->nodeset, HWLOC_MEMBIND_BIND,
                                          HWLOC_MEMBIND_PROCESS | HWLOC_MEMBIND_BYNODESET);
        result =
            absl::StrCat("NUMA node ", numa_node, " (", *node_cores, " cores): cpu bind ",
                         cpu == 0 ? "ok" : "failed", ", memory bind ", mem == 0 ? "ok" : "failed");
      }
    }
  }
  hwloc_topology_destroy(topology);
  return result;
}

absl::Status ExpertShard::Configure(const proto::ConfigureRequest& request) {
  if (request.role() != proto::WORKER_ROLE_CPU_EXPERT) {
    return absl::InvalidArgumentError(
        "role: cpu_expert_worker must be configured with WORKER_ROLE_CPU_EXPERT");
  }
  if (request.model_path().empty()) return absl::InvalidArgumentError("model_path: empty");
  const proto::ShardSpec& shard = request.shard();
  if (shard.slice_count() < 0 ||
      (shard.slice_count() > 1 &&
       (shard.slice_index() < 0 || shard.slice_index() >= shard.slice_count()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard.slice_index ", shard.slice_index(),
                     " is outside [0, slice_count = ", shard.slice_count(), ")"));
  }
  if (shard.slice_count() > 1 && shard.expert_ids_size() > 0) {
    return absl::InvalidArgumentError("shard: expert_ids and slice_count > 1 are exclusive");
  }
  for (int id : shard.expert_ids()) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("shard.expert_ids: ", id, " < 0"));
  }
  if (request.compute_threads() < 0) {
    return absl::InvalidArgumentError("compute_threads: must be >= 0");
  }
  const std::string& memory = request.expert_memory();
  if (!memory.empty() && memory != "auto" && memory != "mapped" && memory != "node") {
    return absl::InvalidArgumentError(
        absl::StrCat("expert_memory: '", memory, "' is not one of auto, mapped, node"));
  }
  request_ = request;
  const std::string bound = shared_pool_ != nullptr
                                ? std::string("in the caller's process, not bound")
                                : BindToNode(request.numa_node(), &node_cores_);
  if (shared_pool_ == nullptr) {  // in a worker process of its own
    std::fprintf(stderr, "cpu_expert_worker %s: %s\n", request.worker_name().c_str(),
                 bound.c_str());
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ExpertShard::CopyExpertsToNode(int64_t held_bytes) {
  const std::string& memory = request_.expert_memory();
  if (memory == "mapped") return false;
  const int node = request_.numa_node();
  absl::StatusOr<std::unique_ptr<NumaTopology>> topology = NumaTopology::Load();
  if (memory == "node") {
    if (!topology.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert_memory node: the NUMA topology cannot be read: ", topology.status().message()));
    }
    if (node < 0 || node >= (*topology)->num_nodes()) {
      return absl::FailedPreconditionError(
          absl::StrCat("expert_memory node: numa_node ", node, " is not one of the ",
                       (*topology)->num_nodes(), " NUMA nodes hwloc sees"));
    }
  } else {
    // auto: bound to the node when that means something (a machine with
    // several nodes); otherwise a private huge-page copy
    // (kernels/cpu/weight_memory.h) when huge pages are on and the copy fits,
    // else the mapping.
    // A worker placed on no node (numa_node -1: the single-process topology)
    // gets the huge-page copy without a node (numa_ stays null).
    const bool placed = node >= 0;
    if (placed && (!topology.ok() || node >= (*topology)->num_nodes())) return false;
    const bool bindable = placed && (*topology)->is_this_system() && (*topology)->num_nodes() > 1;
    if (!bindable) {
      if (!HugePagesEnabled()) return false;
      if (const std::string why = CopyWouldNotFit(held_bytes); !why.empty()) {
        std::fprintf(stderr, "cpu_expert_worker %s: experts stay mapped: %s\n",
                     request_.worker_name().c_str(), why.c_str());
        return false;
      }
    }
  }
  if (node >= 0) numa_ = std::move(*topology);
  return true;
}

absl::Status ExpertShard::Load(const std::function<void(const proto::LoadProgress&)>& progress) {
  proto::LoadProgress p;
  p.set_phase(proto::LOAD_PHASE_MAPPING);
  p.set_tensor_name(request_.model_path());
  progress(p);
  // Only the routed experts are read here: the shards of a split model
  // without any are validated and unmapped (model/gguf_split.h).
  if (open_file_ != nullptr) {
    file_ = open_file_;
  } else {
    GgufOpenOptions open_options;
    open_options.reads_tensor = IsRoutedExpertTensor;
    MOEFLOW_ASSIGN_OR_RETURN(file_, GgufFile::Open(request_.model_path(), open_options));
  }
  MOEFLOW_ASSIGN_OR_RETURN(config_, Deepseek2Config::FromGguf(*file_));
  MOEFLOW_ASSIGN_OR_RETURN(weights_, EngineWeights::MapRoutedExperts(*file_, config_));
  rope_ = Deepseek2RopeParams::FromConfig(config_, 1.f);  // unused by experts
  const proto::ShardSpec& shard = request_.shard();
  holds_expert_.assign(static_cast<size_t>(config_.n_experts), shard.expert_ids_size() == 0);
  for (int id : shard.expert_ids()) {
    if (id >= config_.n_experts) {
      return absl::InvalidArgumentError(absl::StrCat("shard.expert_ids: expert ", id,
                                                     " is outside the model's ", config_.n_experts,
                                                     " experts (", request_.model_path(), ")"));
    }
    holds_expert_[static_cast<size_t>(id)] = 1;
  }
  const int64_t held = std::count(holds_expert_.begin(), holds_expert_.end(), 1);
  shard_config_ = config_;
  shard_layers_ = weights_.layers;
  const int64_t slices = std::max(1, shard.slice_count());
  const int64_t ff = config_.expert_ff;
  const int64_t hidden = config_.hidden;
  shard_bytes_ = 0;
  // What the copying loops below will have done, for their progress lines:
  // the held experts (replicate, shard), or every expert's slice.
  int64_t copy_total = 0;
  for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
    const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
    const int64_t experts = slices > 1 ? config_.n_experts : held;
    const GgmlTypeTraits& dt = Traits(lw.ffn_down_exps.type);
    copy_total += experts * (ff / slices * (lw.ffn_gate_exps.row_bytes + lw.ffn_up_exps.row_bytes) +
                             hidden * (ff / slices / dt.block_size * dt.type_size));
  }
  bool copy_to_node = false;
  if (slices <= 1) {
    MOEFLOW_ASSIGN_OR_RETURN(copy_to_node, CopyExpertsToNode(copy_total));
  }
  p.set_bytes_total(copy_total);
  if (slices > 1) {
    if (ff % slices != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard.slice_count ", slices, " does not divide expert_ff ", ff));
    }
    const int64_t ffs = ff / slices;
    const int64_t s0 = shard.slice_index() * ffs;
    shard_config_.expert_ff = ffs;
    slice_bytes_.resize(static_cast<size_t>(config_.n_layers));
    p.set_phase(proto::LOAD_PHASE_REPACKING);
    for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
      EngineLayerWeights& lw = shard_layers_[static_cast<size_t>(il)];
      const MatmulWeight gate = lw.ffn_gate_exps, up = lw.ffn_up_exps, down = lw.ffn_down_exps;
      const GgmlTypeTraits& dt = Traits(down.type);
      if (ffs % dt.block_size != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement slice: blk.", il, ".ffn_down_exps is ", dt.name, " (blocks of ",
                         dt.block_size, "); a slice of ", ffs, " of expert_ff ", ff,
                         " does not fall on block boundaries (use replicate or shard)"));
      }
      const int64_t down_row_bytes = ffs / dt.block_size * dt.type_size;
      const int64_t E = config_.n_experts;
      const size_t gate_total = static_cast<size_t>(E * ffs * gate.row_bytes);
      const size_t up_total = static_cast<size_t>(E * ffs * up.row_bytes);
      const size_t down_total = static_cast<size_t>(E * hidden * down_row_bytes);
      // Huge pages like every copy of streamed weights
      // (kernels/cpu/weight_memory.h; 4 KiB pages under MOEFLOW_HUGEPAGES=0).
      MOEFLOW_ASSIGN_OR_RETURN(WeightBuffer buf,
                               WeightBuffer::Allocate(gate_total + up_total + down_total));
      uint8_t* g = buf.data();
      uint8_t* u = g + gate_total;
      uint8_t* d = u + up_total;
      for (int64_t e = 0; e < E; ++e) {
        std::memcpy(g + e * ffs * gate.row_bytes, gate.row(e * ff + s0),
                    static_cast<size_t>(ffs * gate.row_bytes));
        std::memcpy(u + e * ffs * up.row_bytes, up.row(e * ff + s0),
                    static_cast<size_t>(ffs * up.row_bytes));
        for (int64_t r = 0; r < hidden; ++r) {
          std::memcpy(d + (e * hidden + r) * down_row_bytes,
                      down.row(e * hidden + r) + s0 / dt.block_size * dt.type_size,
                      static_cast<size_t>(down_row_bytes));
        }
      }
      lw.ffn_gate_exps = MatmulWeight{gate.type, g, gate.cols, E * ffs, gate.row_bytes};
      lw.ffn_up_exps = MatmulWeight{up.type, u, up.cols, E * ffs, up.row_bytes};
      lw.ffn_down_exps = MatmulWeight{down.type, d, ffs, E * hidden, down_row_bytes};
      shard_bytes_ += static_cast<int64_t>(buf.size());
      slice_bytes_[static_cast<size_t>(il)] = std::move(buf);
      // The file's pages of this layer's experts are no longer needed.
      file_->ReleasePages(gate.data, static_cast<uint64_t>(gate.rows * gate.row_bytes));
      file_->ReleasePages(up.data, static_cast<uint64_t>(up.rows * up.row_bytes));
      file_->ReleasePages(down.data, static_cast<uint64_t>(down.rows * down.row_bytes));
      p.set_tensor_name(LayerTensorName(il, "ffn_*_exps"));
      p.set_bytes_done(shard_bytes_);
      progress(p);
    }
  } else if (copy_to_node) {
    // The held experts into node-bound buffers, each at its offset in the
    // file's tensor; then this process's mapping of the file's expert pages
    // is released.
    p.set_phase(proto::LOAD_PHASE_REPACKING);
    const int node = request_.numa_node();
    // Not placed on a node: one huge-page buffer for every expert tensor,
    // each at a 4 KiB boundary in it (a buffer per tensor would round each
    // up to whole huge pages: 25 MiB on v2-lite 8 layers Q4_K_M).
    WeightBuffer plain;
    int64_t plain_offset = 0;
    if (numa_ == nullptr) {
      int64_t plain_bytes = 0;
      for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
        const EngineLayerWeights& lw = shard_layers_[static_cast<size_t>(il)];
        for (const MatmulWeight* w : {&lw.ffn_gate_exps, &lw.ffn_up_exps, &lw.ffn_down_exps}) {
          plain_bytes += PackedMatrixBytes(w->rows * w->row_bytes);
        }
      }
      MOEFLOW_ASSIGN_OR_RETURN(plain, WeightBuffer::Allocate(static_cast<size_t>(plain_bytes)));
    }
    for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
      EngineLayerWeights& lw = shard_layers_[static_cast<size_t>(il)];
      for (auto [w, rows_per_expert] : {std::pair<MatmulWeight*, int64_t>{&lw.ffn_gate_exps, ff},
                                        {&lw.ffn_up_exps, ff},
                                        {&lw.ffn_down_exps, hidden}}) {
        const uint64_t total = static_cast<uint64_t>(w->rows * w->row_bytes);
        const size_t expert_bytes = static_cast<size_t>(rows_per_expert * w->row_bytes);
        NodeBuffer buf;
        uint8_t* dst = nullptr;
        if (numa_ == nullptr) {
          dst = plain.data() + plain_offset;
          plain_offset += PackedMatrixBytes(w->rows * w->row_bytes);
        } else {
          buf = NodeBuffer::Allocate(*numa_, node, total);
          dst = buf.data();
        }
        // Each expert's file pages are released as soon as it is copied, so
        // that at most one expert is resident twice (peak RSS), not a tensor.
        for (int64_t e = 0; e < config_.n_experts; ++e) {
          if (!holds_expert_[static_cast<size_t>(e)]) continue;
          std::memcpy(dst + e * expert_bytes, w->row(e * rows_per_expert), expert_bytes);
          file_->ReleasePages(w->row(e * rows_per_expert), expert_bytes);
          shard_bytes_ += static_cast<int64_t>(expert_bytes);
        }
        file_->ReleasePages(w->data, total);  // the pages the experts shared
        w->data = dst;
        if (numa_ == nullptr) continue;
        if (il == config_.n_dense_layers && w == &lw.ffn_gate_exps) {
          std::fprintf(stderr, "cpu_expert_worker %s: experts copied into memory %s\n",
                       request_.worker_name().c_str(), buf.binding().c_str());
        }
        node_buffers_.push_back(std::move(buf));
      }
      p.set_tensor_name(LayerTensorName(il, "ffn_*_exps"));
      p.set_bytes_done(shard_bytes_);
      progress(p);
    }
    if (numa_ == nullptr) plain_buffer_ = std::move(plain);
  } else {
    shard_bytes_ = copy_total;  // the held experts, mapped
  }
  int threads = request_.compute_threads();
  if (threads <= 0) threads = node_cores_ > 0 ? node_cores_ : 1;
  threads = std::min<int>(threads, std::max(1u, std::thread::hardware_concurrency()));
  if (shared_pool_ != nullptr) {
    pool_ = shared_pool_;
    threads = shared_pool_->size();
  } else {
    // Worker threads pinned one per core of the node (kernels/cpu/numa); a
    // plain pool when the worker is not placed on a node hwloc knows.
    if (request_.numa_node() >= 0) {
      auto topology = NumaTopology::Load();
      if (topology.ok() && request_.numa_node() < (*topology)->num_nodes()) {
        PinReport pin;
        NodePoolOptions pool_options;
        pool_options.n_threads = threads;
        own_pool_ = MakeNodePool(**topology, request_.numa_node(), pool_options, &pin);
        caller_cpu_ = pin.caller_cpu;
        std::fprintf(stderr, "cpu_expert_worker %s: %s\n", request_.worker_name().c_str(),
                     pin.message.c_str());
      }
    }
    if (own_pool_ == nullptr) own_pool_ = std::make_unique<ThreadPool>(threads);
    // Between the layers the coordinator computes on these cores: idle
    // threads yield them rather than halt (dataflow/worker_compute.h).
    own_pool_->SetYieldBeforeSleep(dataflow::DataflowYieldMicros());
    pool_ = own_pool_.get();
  }
  // The held experts into the layout this CPU's kernels want (the engine
  // does the same, so the results stay bit-identical to it): the slices and
  // node copies are this process's own and are rewritten in place; mapped
  // experts get their own buffers and their file pages are released.
  const bool own_copies = slices > 1 || copy_to_node;
  const int64_t repacked = RepackRoutedExperts(
      config_, SelectedIsa(), slices > 1 ? std::vector<uint8_t>() : holds_expert_, own_copies,
      file_.get(), shard_layers_, &repacked_, pool_);
  if (repacked > 0 && shared_pool_ == nullptr) {
    std::fprintf(stderr, "cpu_expert_worker %s: %.0f MiB of experts repacked for %s\n",
                 request_.worker_name().c_str(), static_cast<double>(repacked) / (1 << 20),
                 CpuIsaName(SelectedIsa()));
  }
  if (!own_copies) {
    // Map the held experts' pages now: otherwise the first steps that route
    // to an expert take its page faults (measured on V2-Lite 8-layer Q4_K_M:
    // the first request's decode ~4 % slower than the next ones). After the
    // repacking, so that the file pages it has read and released are not
    // faulted in first (repacked experts are resident already).
    for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
      const EngineLayerWeights& lw = shard_layers_[static_cast<size_t>(il)];
      for (int64_t e = 0; e < config_.n_experts; ++e) {
        if (!holds_expert_[static_cast<size_t>(e)]) continue;
        PrefaultPages(lw.ffn_gate_exps.row(e * ff),
                      static_cast<size_t>(ff * lw.ffn_gate_exps.row_bytes));
        PrefaultPages(lw.ffn_up_exps.row(e * ff),
                      static_cast<size_t>(ff * lw.ffn_up_exps.row_bytes));
        PrefaultPages(lw.ffn_down_exps.row(e * hidden),
                      static_cast<size_t>(hidden * lw.ffn_down_exps.row_bytes));
      }
    }
  }
  max_rows_ = request_.max_batch_tokens();
  max_pairs_ = max_rows_ * config_.n_experts_used;
  // Only the routed experts' buffers: EngineRoutedExperts uses scratch.moe
  // alone, and the attention / FFN / logits buffers EngineScratch::Reserve
  // would add for max_pairs rows (~160 MB for V2-Lite) are never touched.
  // Reserved now for the largest request, so no step allocates.
  for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
    const EngineLayerWeights& lw = shard_layers_[static_cast<size_t>(il)];
    scratch_.moe.Reserve(
        MoeExperts{lw.ffn_gate_exps, lw.ffn_up_exps, lw.ffn_down_exps, shard_config_.n_experts,
                   shard_config_.expert_ff, shard_config_.hidden},
        max_pairs_, 1, threads);
    scratch_.moe.Reserve(
        MoeExperts{lw.ffn_gate_exps, lw.ffn_up_exps, lw.ffn_down_exps, shard_config_.n_experts,
                   shard_config_.expert_ff, shard_config_.hidden},
        max_rows_, config_.n_experts_used, threads);  // kExpertsCombine
  }
  ctx_ = EngineContext{&shard_config_, &rope_, SelectedIsa(), pool_, &scratch_};
  expanded_.resize(static_cast<size_t>(max_pairs_ * hidden));
  ones_.assign(static_cast<size_t>(max_pairs_), 1.f);
  p.set_phase(proto::LOAD_PHASE_READING);
  p.set_bytes_done(shard_bytes_);
  p.set_bytes_total(shard_bytes_);
  progress(p);
  return absl::OkStatus();
}

size_t ExpertShard::MaxRequestBytes() const {
  return dataflow::MaxExpertsRequestBytes(max_rows_, max_pairs_, config_.hidden);
}

size_t ExpertShard::MaxReplyBytes() const {
  return dataflow::SectionBytes<float>(static_cast<size_t>(max_pairs_ * config_.hidden));
}

absl::Status ExpertShard::Handle(const RequestHeader& header, absl::Span<const uint8_t> payload,
                                 dataflow::ReplyWriter& reply, proto::LayerStats& stats) {
  if (static_cast<DataflowOp>(header.op) != DataflowOp::kExperts) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_expert_worker: unknown op ", header.op));
  }
  const int64_t il = header.layer;
  if (il < config_.n_dense_layers || il >= config_.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", il, " is not a MoE layer"));
  }
  const int64_t rows = header.n_rows, pairs = header.n_pairs, h = config_.hidden;
  if (rows < 1 || rows > max_rows_ || pairs < 1 || pairs > max_pairs_) {
    return absl::InvalidArgumentError(absl::StrCat("n_rows ", rows, " / n_pairs ", pairs,
                                                   " outside [1, ", max_rows_, "] / [1, ",
                                                   max_pairs_, "]"));
  }
  if ((header.flags & ~dataflow::kExpertsCombine) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kExperts: unknown flags 0x", absl::Hex(header.flags)));
  }
  const bool combine = (header.flags & dataflow::kExpertsCombine) != 0;
  const int64_t k = header.k;
  if (combine && (k < 1 || k > config_.n_experts || pairs != rows * k)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kExperts combine: n_pairs ", pairs, " is not n_rows ", rows, " × k ", k));
  }
  MOEFLOW_ASSIGN_OR_RETURN(const dataflow::ExpertsRequest request,
                           dataflow::ParseExpertsRequest(header, payload, h));
  const float* x = request.rows.data();
  const int32_t* row_of_pair = request.row_of_pair.data();
  const int32_t* expert_of_pair = request.expert_of_pair.data();
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t r = row_of_pair[p], e = expert_of_pair[p];
    if (r < 0 || r >= rows || e < 0 || e >= config_.n_experts ||
        !holds_expert_[static_cast<size_t>(e)]) {
      return absl::InvalidArgumentError(
          absl::StrCat(request_.worker_name(), ": pair ", p, " (row ", r, ", expert ", e,
                       ") is out of range or its expert is not held by this shard"));
    }
    if (combine && r != p / k) {
      return absl::InvalidArgumentError(absl::StrCat("kExperts combine: pair ", p, " names row ", r,
                                                     ", expected ", p / k, " (k = ", k, ")"));
    }
  }
  float* out = reinterpret_cast<float*>(reply.Payload());
  const EngineRoutedExperts experts(ctx_, shard_layers_[static_cast<size_t>(il)]);
  stats.set_rows_computed(pairs);
  const EnginePhaseTimer timer(EnginePhase::kRoutedExperts, rows);
  if (combine) {
    // The engine's own call on every pair of the step: the same pairs,
    // weights and sum as when one process computes everything.
    experts.Forward(x, rows, expert_of_pair, request.weight_of_pair.data(), k, out);
    return reply.Send(dataflow::SectionBytes<float>(static_cast<size_t>(rows * h)));
  }
  for (int64_t p = 0; p < pairs; ++p) {
    std::memcpy(expanded_.data() + p * h, x + row_of_pair[p] * h,
                static_cast<size_t>(h) * sizeof(float));
  }
  experts.Forward(expanded_.data(), pairs, expert_of_pair, ones_.data(), 1, out);
  return reply.Send(dataflow::SectionBytes<float>(static_cast<size_t>(pairs * h)));
}

}  // namespace moeflow
