// NUMA placement of CPU kernel threads and buffers, through hwloc.
//
// Role in the data flow: a process that owns the experts of one NUMA node (a
// cpu_expert_worker, or the engine on a multi-socket host) loads the topology
// once, builds its ThreadPool with MakeNodePool — worker threads pinned one
// per core of that node — and allocates the repacked expert weights with
// NodeBuffer, whose pages are bound to the node's memory, so that every
// expert row streams from local memory into a local core.
//
// Simulated topologies: hwloc honours HWLOC_SYNTHETIC (e.g. "package:2 numa:1
// core:32 pu:1") and HWLOC_XMLFILE, which describe another machine. Then
// cores are pinned only where a CPU of that OS index exists here (and is in
// this process's affinity mask); the threads meant for the other cores run
// unpinned, and the PinReport says so once, in one line. Memory is never
// bound on a simulated topology or on a machine with one NUMA node: a
// NodeBuffer is then a plain page-aligned allocation.
//
// Thread-safety: a loaded NumaTopology is read-only and may be shared; its
// methods may be called from any thread. Failure: Load returns an
// absl::Status when hwloc cannot build a topology (a bad HWLOC_SYNTHETIC
// string names itself in the message); pinning and binding never fail the
// run — what could not be done is reported in PinReport / NodeBuffer.
#ifndef MOEFLOW_KERNELS_CPU_NUMA_H_
#define MOEFLOW_KERNELS_CPU_NUMA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/weight_memory.h"

namespace moeflow {

class NumaTopology {
 public:
  // The topology hwloc sees: this machine, or what HWLOC_SYNTHETIC /
  // HWLOC_XMLFILE describe. INTERNAL when hwloc fails to load it.
  static absl::StatusOr<std::unique_ptr<NumaTopology>> Load();
  // A synthetic topology from an hwloc description ("package:2 numa:1
  // core:32 pu:1"), as HWLOC_SYNTHETIC would give; INVALID_ARGUMENT when
  // hwloc rejects the string.
  static absl::StatusOr<std::unique_ptr<NumaTopology>> LoadSynthetic(const std::string& description);
  ~NumaTopology();
  NumaTopology(const NumaTopology&) = delete;
  NumaTopology& operator=(const NumaTopology&) = delete;

  // Whether the topology is this machine (false for HWLOC_SYNTHETIC / XML).
  bool is_this_system() const { return this_system_; }
  // NUMA nodes, at least 1 (hwloc reports one node on machines without NUMA).
  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  // OS index of the first hardware thread of each core of `node`, in hwloc's
  // order (one entry per core: pinned pools use one thread per core).
  const std::vector<int>& node_cpus(int node) const;
  // "2 NUMA nodes × 32 cores (simulated: HWLOC_SYNTHETIC)" and the like.
  std::string Describe() const;

  // Opaque hwloc handles (hwloc_topology_t, hwloc_obj_t of each node).
  void* hwloc_topology() const { return topology_; }
  void* hwloc_node(int node) const;

 private:
  NumaTopology() = default;
  absl::Status Init(const std::string* synthetic);

  void* topology_ = nullptr;  // hwloc_topology_t
  bool this_system_ = false;
  std::string source_;  // "this machine", "HWLOC_SYNTHETIC=...", ...
  std::vector<void*> nodes_;  // hwloc_obj_t
  std::vector<std::vector<int>> node_cpus_;
};

// What MakeNodePool could pin.
struct PinReport {
  int threads_pinned = 0;
  int threads_unpinned = 0;
  // One line for the log: the node, its cores, how many threads were
  // pinned and, if some were not, why (e.g. "CPUs 32-34 do not exist on
  // this machine (simulated topology)").
  std::string message;
  // The core the caller's thread (thread 0) belongs on — the first of the
  // pool's cores — when every worker thread was pinned; -1 otherwise. The
  // owner pins the thread that will run the pool's loops there
  // (PinCurrentThreadToOsCpu), so that each process keeps one compute
  // thread per core: two processes that take turns on the same cores (the
  // coordinator's CPU backend and an expert worker) then never stack their
  // own two threads on one core while another core idles.
  int caller_cpu = -1;
};

struct NodePoolOptions {
  int n_threads = 1;  // threads in all, the caller's (thread 0) included
  // Also pin the calling thread (thread 0) to the node's first core. Off by
  // default: the caller's affinity is the caller's business.
  bool pin_caller = false;
};

// A ThreadPool of options.n_threads whose worker i (1 ≤ i < n) is pinned to
// core i mod |cores| of `node` (thread 0 — the caller — only with
// pin_caller, to core 0). CHECKs that `node` is a valid index. Never fails:
// threads that cannot be pinned run unpinned, reported in *report. Pinning
// is done before this returns: the topology need not outlive the pool.
std::unique_ptr<ThreadPool> MakeNodePool(const NumaTopology& topology, int node,
                                         const NodePoolOptions& options, PinReport* report);

// Pins the calling thread to one CPU (OS index). Returns false (and pins
// nothing) when the CPU does not exist here or is outside the process's
// affinity mask, or the system call fails.
bool PinCurrentThreadToCpu(const NumaTopology& topology, int os_cpu);
// The same without a topology (sched affinity of this machine's CPUs).
bool PinCurrentThreadToOsCpu(int os_cpu);
// The owner's side of PinReport::caller_cpu: pins the calling thread there
// unless caller_cpu is -1 or MOEFLOW_PIN=0. Returns whether it pinned.
bool PinCallerThread(int caller_cpu);

// A ThreadPool of n_threads for a process not placed on a NUMA node (the
// gpu worker's CPU backend): worker i pinned to the i-th CPU of this
// process's affinity mask, report->caller_cpu the first, when
// MOEFLOW_PIN is not 0 and n_threads is at most the CPUs allowed; a plain
// pool otherwise (oversubscribed threads are left to the scheduler). The
// report says which, in one line.
std::unique_ptr<ThreadPool> MakeCpuPool(int n_threads, PinReport* report);

// MOEFLOW_PIN (default 1; base/knobs.h): 0 leaves the threads the
// dataflow would pin beyond a node pool's workers — the callers and the
// CPU backend's pool — to the scheduler. Read once.
bool PinCallersEnabled();

// A page-aligned buffer whose memory is bound to one NUMA node
// (hwloc_alloc_membind, policy BIND) when the topology is this machine and
// has more than one node; otherwise a plain allocation (a WeightBuffer).
// Either way advised for transparent huge pages unless MOEFLOW_HUGEPAGES=0
// (kernels/cpu/weight_memory.h); binding() says which. Move-only RAII; the
// topology must outlive the buffer.
class NodeBuffer {
 public:
  NodeBuffer() = default;
  // Allocates `bytes` (> 0) for `node`. CHECK-fails only when the memory
  // cannot be allocated at all.
  static NodeBuffer Allocate(const NumaTopology& topology, int node, size_t bytes);
  ~NodeBuffer();
  NodeBuffer(NodeBuffer&& other) noexcept;
  NodeBuffer& operator=(NodeBuffer&& other) noexcept;
  NodeBuffer(const NodeBuffer&) = delete;
  NodeBuffer& operator=(const NodeBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Whether the pages are bound to the node; if not, why (one line).
  bool bound() const { return bound_; }
  const std::string& binding() const { return binding_; }

 private:
  void Release();

  const NumaTopology* topology_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool bound_ = false;
  bool from_hwloc_ = false;
  WeightBuffer plain_;  // the memory when not from hwloc
  std::string binding_;
};

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_NUMA_H_
