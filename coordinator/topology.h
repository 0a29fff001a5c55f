// Topology files: the YAML that `moeflow launch` reads, parsed into
// proto::Topology (proto/topology.proto; the YAML keys are its field names).
//
//   model_path: /models/DeepSeek-V3-Q4_K_M.gguf
//   control_address: 127.0.0.1:50051
//   placement: replicate            # auto | replicate | slice | shard
//   ucx_transports: sm,self
//   max_batch_tokens: 64
//   gpu_workers:
//     - {backend: cpu, kv_cache_tokens: 4096, threads: 2}
//   expert_workers:
//     - {numa_node: 0, threads: 16}
//     - {numa_node: 1, threads: 16}
//     # started by hand on another box; needs ucx_transports with tcp (or RDMA):
//     # - {numa_node: 0, host: box2, address: box2:50070}
//
// Every field is validated; an error names the file, the line and the field
// ("x.yaml:7: expert_workers[1].numa_node: 0 is already used by
// expert_workers[0]"); unknown and duplicated keys are errors, not ignored;
// a map where a list belongs says what it got; two expert workers at one
// address, a worker started by hand without worker_token_file and more gpu
// workers than the coordinator drives are refused. With TopologyHostChecks
// (`moeflow launch`, also --validate-only) the local workers' numa_node must
// exist on this host and model_path / worker_token_file must be readable.
//
// Thread-safety: pure functions. Failure: NOT_FOUND (file), INVALID_ARGUMENT
// (YAML syntax or a field, as above).
#ifndef MOEFLOW_COORDINATOR_TOPOLOGY_H_
#define MOEFLOW_COORDINATOR_TOPOLOGY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/topology.pb.h"

namespace moeflow {

// The coordinator drives this many gpu workers (several cards are one
// worker's device_ids); a topology listing more is refused at its line.
inline constexpr int kMaxGpuWorkers = 1;

// Checks against the host the launch runs on (`moeflow launch`, and its
// --validate-only); the defaults check nothing outside the text.
struct TopologyHostChecks {
  // NUMA nodes of this host (hwloc); > 0: a worker the launcher starts here
  // must name one of them.
  int numa_nodes = 0;
  // Where numa_nodes came from, for the message ("hwloc", "HWLOC_SYNTHETIC").
  std::string numa_source = "hwloc";
  // model_path must be a readable file (off when --model replaces it).
  bool check_model_path = false;
  // worker_token_file must be a readable file.
  bool check_files = false;
};

// Parses YAML text; `filename` prefixes the errors.
absl::StatusOr<proto::Topology> ParseTopologyYaml(absl::string_view yaml,
                                                  absl::string_view filename,
                                                  const TopologyHostChecks& host = {});
absl::StatusOr<proto::Topology> LoadTopologyFile(const std::string& path,
                                                 const TopologyHostChecks& host = {});

// True for the hosts the launcher starts workers on itself: empty,
// "localhost", 127.x.x.x, ::1.
bool IsLocalHost(absl::string_view host);
// True when a UCX_TLS list names a transport that crosses hosts (tcp, the
// InfiniBand/RoCE ones, or "all").
bool HasNetworkTransport(absl::string_view tls);

// "auto", "replicate", ... (the YAML spelling).
std::string ExpertPlacementYamlName(proto::ExpertPlacement placement);

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_TOPOLOGY_H_
