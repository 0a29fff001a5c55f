#include "kernels/cpu/numa.h"

#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"
#include "base/knobs.h"

namespace moeflow {
namespace {

hwloc_topology_t Topo(const NumaTopology& t) {
  return static_cast<hwloc_topology_t>(t.hwloc_topology());
}

// Whether the OS CPU exists here and this process may run on it.
bool CpuUsableHere(int os_cpu) {
  if (os_cpu < 0 || os_cpu >= CPU_SETSIZE) return false;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return false;
  return CPU_ISSET(os_cpu, &allowed);
}

// "32-34, 40" from a sorted list.
std::string CpuRanges(const std::vector<int>& cpus) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(cpus[i]) : absl::StrCat(cpus[i], "-", cpus[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

absl::StatusOr<std::unique_ptr<NumaTopology>> NumaTopology::Load() {
  std::unique_ptr<NumaTopology> t(new NumaTopology());
  MOEFLOW_RETURN_IF_ERROR(t->Init(nullptr));
  return t;
}

absl::StatusOr<std::unique_ptr<NumaTopology>> NumaTopology::LoadSynthetic(
    const std::string& description) {
  std::unique_ptr<NumaTopology> t(new NumaTopology());
  MOEFLOW_RETURN_IF_ERROR(t->Init(&description));
  return t;
}

absl::Status NumaTopology::Init(const std::string* synthetic) {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0) {
    return absl::InternalError(absl::StrCat("hwloc_topology_init failed: ", std::strerror(errno)));
  }
  topology_ = topo;
  if (synthetic != nullptr) {
    if (hwloc_topology_set_synthetic(topo, synthetic->c_str()) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("hwloc rejects the synthetic topology \"", *synthetic, "\""));
    }
    source_ = absl::StrCat("synthetic \"", *synthetic, "\"");
  }
  if (hwloc_topology_load(topo) != 0) {
    const char* env = std::getenv("HWLOC_SYNTHETIC");
    return absl::InternalError(
        absl::StrCat("hwloc_topology_load failed: ", std::strerror(errno),
                     env != nullptr ? absl::StrCat(" (HWLOC_SYNTHETIC=\"", env, "\")") : ""));
  }
  this_system_ = hwloc_topology_is_thissystem(topo) != 0;
  if (source_.empty()) {
    if (this_system_) {
      source_ = "this machine";
    } else if (const char* env = std::getenv("HWLOC_SYNTHETIC")) {
      source_ = absl::StrCat("HWLOC_SYNTHETIC=\"", env, "\"");
    } else {
      source_ = "a topology that is not this machine (HWLOC_XMLFILE?)";
    }
  }
  const int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
    std::vector<int> cpus;
    // One PU (the first) per core; machines whose topology has no cores
    // (rare VMs) fall back to every PU.
    const int cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_CORE);
    for (int c = 0; c < cores; ++c) {
      hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_CORE,
                                                             static_cast<unsigned>(c));
      hwloc_obj_t pu = hwloc_get_obj_inside_cpuset_by_type(topo, core->cpuset, HWLOC_OBJ_PU, 0);
      if (pu != nullptr) cpus.push_back(static_cast<int>(pu->os_index));
    }
    if (cpus.empty()) {
      const int pus = hwloc_get_nbobjs_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_PU);
      for (int p = 0; p < pus; ++p) {
        hwloc_obj_t pu = hwloc_get_obj_inside_cpuset_by_type(topo, node->cpuset, HWLOC_OBJ_PU,
                                                           static_cast<unsigned>(p));
        cpus.push_back(static_cast<int>(pu->os_index));
      }
    }
    nodes_.push_back(node);
    node_cpus_.push_back(std::move(cpus));
  }
  if (nodes_.empty()) {
    return absl::InternalError(absl::StrCat("hwloc reports no NUMA node in ", source_));
  }
  return absl::OkStatus();
}

NumaTopology::~NumaTopology() {
  if (topology_ != nullptr) hwloc_topology_destroy(static_cast<hwloc_topology_t>(topology_));
}

const std::vector<int>& NumaTopology::node_cpus(int node) const {
  MOEFLOW_CHECK(node >= 0 && node < num_nodes());
  return node_cpus_[static_cast<size_t>(node)];
}

void* NumaTopology::hwloc_node(int node) const {
  MOEFLOW_CHECK(node >= 0 && node < num_nodes());
  return nodes_[static_cast<size_t>(node)];
}

std::string NumaTopology::Describe() const {
  std::vector<std::string> cores;
  for (const auto& c : node_cpus_) cores.push_back(absl::StrCat(c.size()));
  return absl::StrCat(num_nodes(), " NUMA node", num_nodes() == 1 ? "" : "s", " (",
                      absl::StrJoin(cores, " + "), " cores) from ", source_);
}

bool PinCurrentThreadToCpu(const NumaTopology& topology, int os_cpu) {
  if (!CpuUsableHere(os_cpu)) return false;
  if (topology.is_this_system()) {
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    hwloc_bitmap_only(set, static_cast<unsigned>(os_cpu));
    const int rc = hwloc_set_cpubind(Topo(topology), set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
    return rc == 0;
  }
  // hwloc does not bind on a topology that is not this machine; the CPU
  // exists here, so pin with the OS call.
  return PinCurrentThreadToOsCpu(os_cpu);
}

bool PinCurrentThreadToOsCpu(int os_cpu) {
  if (!CpuUsableHere(os_cpu)) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(os_cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

bool PinCallerThread(int caller_cpu) {
  return caller_cpu >= 0 && PinCallersEnabled() && PinCurrentThreadToOsCpu(caller_cpu);
}

bool PinCallersEnabled() {
  static const bool on = KnobBool(Knob::kPin);
  return on;
}

std::unique_ptr<ThreadPool> MakeCpuPool(int n_threads, PinReport* report) {
  MOEFLOW_CHECK(n_threads >= 1);
  PinReport r;
  std::vector<int> allowed;
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &mask)) allowed.push_back(cpu);
    }
  }
  const int workers = n_threads - 1;
  std::string why;
  if (!PinCallersEnabled()) {
    why = "MOEFLOW_PIN=0";
  } else if (allowed.empty()) {
    why = "sched_getaffinity failed";
  } else if (n_threads > static_cast<int>(allowed.size())) {
    why = absl::StrCat("more threads than the ", allowed.size(), " CPUs this process may use");
  }
  std::unique_ptr<ThreadPool> pool;
  if (why.empty()) {
    std::mutex mu;
    int pinned = 0;
    pool = std::make_unique<ThreadPool>(n_threads, [&](int thread) {
      const bool ok = PinCurrentThreadToOsCpu(allowed[static_cast<size_t>(thread)]);
      std::lock_guard<std::mutex> lock(mu);
      if (ok) ++pinned;
    });
    r.threads_pinned = pinned;
    r.threads_unpinned = workers - pinned;
    if (r.threads_unpinned == 0) r.caller_cpu = allowed[0];
    r.message = absl::StrCat(
        n_threads, " thread", n_threads == 1 ? "" : "s", " on CPUs ",
        CpuRanges(std::vector<int>(allowed.begin(), allowed.begin() + n_threads)), ": pinned ",
        pinned, " of ", workers, " worker thread", workers == 1 ? "" : "s", " one per CPU",
        r.threads_unpinned == 0 ? " (the caller's thread goes on the first)" : "");
  } else {
    pool = std::make_unique<ThreadPool>(n_threads);
    r.threads_unpinned = workers;
    r.message =
        absl::StrCat(n_threads, " thread", n_threads == 1 ? "" : "s", ", not pinned (", why, ")");
  }
  if (report != nullptr) *report = std::move(r);
  return pool;
}

std::unique_ptr<ThreadPool> MakeNodePool(const NumaTopology& topology, int node,
                                         const NodePoolOptions& options, PinReport* report) {
  MOEFLOW_CHECK(options.n_threads >= 1);
  const std::vector<int>& cpus = topology.node_cpus(node);
  MOEFLOW_CHECK(!cpus.empty());
  std::mutex mu;
  std::vector<int> failed;  // CPUs that could not be pinned, guarded by mu
  int pinned = 0;
  auto pin = [&](int thread) {
    const int cpu = cpus[static_cast<size_t>(thread) % cpus.size()];
    const bool ok = PinCurrentThreadToCpu(topology, cpu);
    std::lock_guard<std::mutex> lock(mu);
    if (ok) {
      ++pinned;
    } else {
      failed.push_back(cpu);
    }
  };
  if (options.pin_caller) pin(0);
  auto pool = std::make_unique<ThreadPool>(options.n_threads, pin);
  // The constructor has waited for every worker's hook.
  std::sort(failed.begin(), failed.end());
  failed.erase(std::unique(failed.begin(), failed.end()), failed.end());
  const int considered = options.n_threads - (options.pin_caller ? 0 : 1);
  PinReport r;
  r.threads_pinned = pinned;
  r.threads_unpinned = considered - pinned;
  if (r.threads_unpinned == 0 && CpuUsableHere(cpus[0])) r.caller_cpu = cpus[0];
  r.message = absl::StrCat("NUMA node ", node, " of ", topology.Describe(), ": pinned ", pinned,
                           " of ", considered, options.pin_caller ? "" : " worker",
                           " thread", considered == 1 ? "" : "s", " to the node's cores (CPUs ",
                           CpuRanges([&] {
                             std::vector<int> s(cpus);
                             std::sort(s.begin(), s.end());
                             return s;
                           }()),
                           ")");
  if (considered == 0) {
    r.message = absl::StrCat("NUMA node ", node, " of ", topology.Describe(),
                             ": 1 thread (the caller), no worker thread to pin");
  }
  if (!failed.empty()) {
    absl::StrAppend(&r.message, "; CPU", failed.size() == 1 ? " " : "s ", CpuRanges(failed),
                    topology.is_this_system()
                        ? " could not be pinned (outside this process's affinity mask?)"
                        : " do not exist on this machine (simulated topology)",
                    ": those threads run unpinned");
  }
  if (report != nullptr) *report = std::move(r);
  return pool;
}

NodeBuffer NodeBuffer::Allocate(const NumaTopology& topology, int node, size_t bytes) {
  MOEFLOW_CHECK(bytes > 0);
  MOEFLOW_CHECK(node >= 0 && node < topology.num_nodes());
  NodeBuffer b;
  b.topology_ = &topology;
  b.size_ = bytes;
  if (topology.is_this_system() && topology.num_nodes() > 1) {
    const hwloc_obj_t n = static_cast<hwloc_obj_t>(topology.hwloc_node(node));
    void* p = hwloc_alloc_membind(Topo(topology), bytes, n->nodeset, HWLOC_MEMBIND_BIND,
                                  HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT);
    if (p != nullptr) {
      b.data_ = static_cast<uint8_t*>(p);
      b.bound_ = true;
      b.from_hwloc_ = true;
      const bool huge = HugePagesEnabled() && AdviseHugePages(p, bytes);
      b.binding_ = absl::StrCat("bound to NUMA node ", node, huge ? ", huge pages" : "");
      return b;
    }
    b.binding_ = absl::StrCat("not bound (hwloc_alloc_membind to node ", node,
                              " failed: ", std::strerror(errno), ")");
  } else if (!topology.is_this_system()) {
    b.binding_ = "not bound (simulated topology)";
  } else {
    b.binding_ = "not bound (one NUMA node)";
  }
  absl::StatusOr<WeightBuffer> plain = WeightBuffer::Allocate(bytes);
  MOEFLOW_CHECK(plain.ok());
  b.plain_ = std::move(*plain);
  b.data_ = b.plain_.data();
  if (b.plain_.huge_pages()) absl::StrAppend(&b.binding_, ", huge pages");
  return b;
}

void NodeBuffer::Release() {
  if (data_ == nullptr) return;
  if (from_hwloc_) hwloc_free(Topo(*topology_), data_, size_);
  plain_ = WeightBuffer();
  data_ = nullptr;
  size_ = 0;
}

NodeBuffer::~NodeBuffer() { Release(); }

NodeBuffer::NodeBuffer(NodeBuffer&& other) noexcept { *this = std::move(other); }

NodeBuffer& NodeBuffer::operator=(NodeBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    topology_ = other.topology_;
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    bound_ = other.bound_;
    from_hwloc_ = other.from_hwloc_;
    binding_ = std::move(other.binding_);
    plain_ = std::move(other.plain_);
  }
  return *this;
}

}  // namespace moeflow
