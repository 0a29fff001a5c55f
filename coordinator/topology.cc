#include "coordinator/topology.h"

#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace moeflow {
namespace {

class TopologyParser {
 public:
  TopologyParser(absl::string_view filename, const TopologyHostChecks& host)
      : filename_(filename), host_(host) {}

  // A file the launch will open must exist and be readable.
  absl::Status Readable(const YAML::Node& node, const std::string& field, const std::string& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || access(path.c_str(), R_OK) != 0) {
      return Error(node, field, absl::StrCat("'", path, "': ", std::strerror(errno)));
    }
    if (!S_ISREG(st.st_mode)) return Error(node, field, absl::StrCat("'", path, "': not a file"));
    return absl::OkStatus();
  }

  absl::Status Error(const YAML::Node& node, const std::string& field, const std::string& what) {
    const int line = node.IsDefined() ? node.Mark().line + 1 : 0;
    return absl::InvalidArgumentError(
        absl::StrCat(filename_, line > 0 ? absl::StrCat(":", line) : "", ": ", field, ": ", what));
  }

  // What a node is, for "expected a list, got a map" messages.
  static std::string Kind(const YAML::Node& node) {
    if (node.IsMap()) return "a map (key: value pairs)";
    if (node.IsSequence()) return "a list";
    if (node.IsScalar()) return absl::StrCat("'", node.Scalar(), "'");
    return "nothing";
  }

  // Unknown keys and keys given twice (yaml-cpp keeps both and node[key]
  // would silently return the first) are errors.
  absl::Status CheckKeys(const YAML::Node& map, const std::string& where,
                         const std::set<std::string>& allowed) {
    if (!map.IsMap()) {
      return Error(map, where, absl::StrCat("must be a mapping of key: value, got ", Kind(map)));
    }
    std::map<std::string, int> seen;  // key -> line
    for (const auto& kv : map) {
      const std::string key = kv.first.as<std::string>();
      const std::string field = where.empty() ? key : absl::StrCat(where, ".", key);
      if (allowed.count(key) == 0) {
        return Error(
            kv.first, field,
            absl::StrCat("unknown key (expected one of: ", absl::StrJoin(allowed, ", "), ")"));
      }
      auto [it, inserted] = seen.emplace(key, kv.first.Mark().line + 1);
      if (!inserted) {
        return Error(
            kv.first, field,
            absl::StrCat("duplicated key (first given on line ", it->second, "; remove one)"));
      }
    }
    return absl::OkStatus();
  }

  // A required, non-empty list.
  absl::Status NonEmptyList(const YAML::Node& parent, const YAML::Node& list,
                            const std::string& field, const std::string& what) {
    if (!list) return Error(parent, field, absl::StrCat("required: a list of ", what));
    if (!list.IsSequence()) {
      return Error(list, field,
                   absl::StrCat("must be a list of ", what, " (- item per line, or [a, b]), got ",
                                Kind(list)));
    }
    if (list.size() == 0)
      return Error(list, field, absl::StrCat("empty: give at least one ", what));
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> String(const YAML::Node& node, const std::string& field) {
    if (!node.IsScalar()) return Error(node, field, "must be a string");
    return node.as<std::string>();
  }

  absl::StatusOr<int64_t> Int(const YAML::Node& node, const std::string& field, int64_t min,
                              int64_t max) {
    int64_t v = 0;
    if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &v)) {
      return Error(node, field,
                   absl::StrCat("'", node.IsScalar() ? node.Scalar() : "<not a scalar>",
                                "' is not an integer"));
    }
    if (v < min || v > max) {
      return Error(node, field, absl::StrCat(v, " is outside [", min, ", ", max, "]"));
    }
    return v;
  }

  absl::StatusOr<bool> Bool(const YAML::Node& node, const std::string& field) {
    if (node.IsScalar()) {
      const std::string& v = node.Scalar();
      if (v == "true" || v == "yes" || v == "on") return true;
      if (v == "false" || v == "no" || v == "off") return false;
    }
    return Error(node, field,
                 absl::StrCat("'", node.IsScalar() ? node.Scalar() : "<not a scalar>",
                              "' is not true or false"));
  }

  absl::Status HostPort(const YAML::Node& node, const std::string& field, std::string* out) {
    auto s = String(node, field);
    if (!s.ok()) return s.status();
    const size_t colon = s->rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(s->substr(colon + 1), &port) || port < 0 || port > 65535) {
      return Error(node, field, absl::StrCat("'", *s, "' is not host:port (port in [0, 65535])"));
    }
    *out = *s;
    return absl::OkStatus();
  }

  absl::StatusOr<proto::Topology> Parse(absl::string_view yaml) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(yaml));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(filename_, ":", e.mark.line + 1, ": YAML syntax: ", e.msg));
    }
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(filename_, ": the topology must be a mapping (model_path:, ...)"));
    }
    proto::Topology t;
    const std::set<std::string> top_keys = {
        "model_path",       "control_address",  "http_address",   "gpu_workers",
        "expert_workers",   "placement",        "ucx_transports", "ucx_net_devices",
        "max_batch_tokens", "worker_token_file"};
    if (absl::Status s = CheckKeys(root, "", top_keys); !s.ok()) return s;
    try {
      return ParseFields(root, t);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(filename_, ":", e.mark.line + 1, ": ", e.msg));
    }
  }

 private:
  absl::StatusOr<proto::Topology> ParseFields(const YAML::Node& root, proto::Topology& t) {
#define TOPO_ASSIGN(lhs, expr)        \
  {                                   \
    auto v_ = (expr);                 \
    if (!v_.ok()) return v_.status(); \
    lhs(*v_);                         \
  }
    if (root["model_path"]) {
      TOPO_ASSIGN(t.set_model_path, String(root["model_path"], "model_path"));
      if (host_.check_model_path) {
        if (auto s = Readable(root["model_path"], "model_path", t.model_path()); !s.ok()) return s;
      }
    }
    t.set_control_address("127.0.0.1:50051");
    if (root["control_address"]) {
      std::string a;
      if (auto s = HostPort(root["control_address"], "control_address", &a); !s.ok()) return s;
      t.set_control_address(a);
    }
    if (root["http_address"]) {
      std::string a;
      if (auto s = HostPort(root["http_address"], "http_address", &a); !s.ok()) return s;
      t.set_http_address(a);
    }
    t.set_placement(proto::EXPERT_PLACEMENT_AUTO);
    if (const YAML::Node p = root["placement"]) {
      auto s = String(p, "placement");
      if (!s.ok()) return s.status();
      if (*s == "auto")
        t.set_placement(proto::EXPERT_PLACEMENT_AUTO);
      else if (*s == "replicate")
        t.set_placement(proto::EXPERT_PLACEMENT_REPLICATE);
      else if (*s == "slice")
        t.set_placement(proto::EXPERT_PLACEMENT_SLICE);
      else if (*s == "shard")
        t.set_placement(proto::EXPERT_PLACEMENT_SHARD);
      else
        return Error(p, "placement",
                     absl::StrCat("'", *s, "' is not one of auto, replicate, slice, shard"));
    }
    t.set_ucx_transports("sm,self");
    if (root["ucx_transports"]) {
      auto s = String(root["ucx_transports"], "ucx_transports");
      if (!s.ok()) return s.status();
      if (s->empty()) return Error(root["ucx_transports"], "ucx_transports", "empty");
      for (char c : *s) {
        if (!(isalnum(static_cast<unsigned char>(c)) || c == ',' || c == '_' || c == '^')) {
          return Error(root["ucx_transports"], "ucx_transports",
                       absl::StrCat("'", *s, "' is not a UCX_TLS list (e.g. sm,self or tcp)"));
        }
      }
      t.set_ucx_transports(*s);
    }
    if (root["ucx_net_devices"]) {
      TOPO_ASSIGN(t.set_ucx_net_devices, String(root["ucx_net_devices"], "ucx_net_devices"));
    }
    if (root["worker_token_file"]) {
      TOPO_ASSIGN(t.set_worker_token_file, String(root["worker_token_file"], "worker_token_file"));
      if (t.worker_token_file().empty()) {
        return Error(root["worker_token_file"], "worker_token_file", "empty (omit it for none)");
      }
      if (host_.check_files) {
        if (auto s =
                Readable(root["worker_token_file"], "worker_token_file", t.worker_token_file());
            !s.ok()) {
          return s;
        }
      }
    }
    t.set_max_batch_tokens(64);
    if (root["max_batch_tokens"]) {
      TOPO_ASSIGN(t.set_max_batch_tokens,
                  Int(root["max_batch_tokens"], "max_batch_tokens", 1, 65536));
    }
    const YAML::Node gpus = root["gpu_workers"];
    if (auto s = NonEmptyList(root, gpus, "gpu_workers", "gpu workers"); !s.ok()) return s;
    if (static_cast<int>(gpus.size()) > kMaxGpuWorkers) {
      return Error(gpus[kMaxGpuWorkers], absl::StrCat("gpu_workers[", kMaxGpuWorkers, "]"),
                   absl::StrCat("the coordinator drives ", kMaxGpuWorkers,
                                " gpu worker, this topology lists ", gpus.size(),
                                " (several cards go in one worker's device_ids: [0, 1, ...])"));
    }
    for (size_t i = 0; i < gpus.size(); ++i) {
      const YAML::Node g = gpus[i];
      const std::string where = absl::StrCat("gpu_workers[", i, "]");
      if (auto s = CheckKeys(g, where,
                             {"device_ids", "backend", "kv_cache_tokens", "address", "threads",
                              "separate_process", "vram_gib"});
          !s.ok())
        return s;
      proto::GpuWorkerSpec* spec = t.add_gpu_workers();
      const YAML::Node b = g["backend"];
      if (!b) return Error(g, where + ".backend", "required (cuda or cpu)");
      auto backend = String(b, where + ".backend");
      if (!backend.ok()) return backend.status();
      if (*backend == "cuda")
        spec->set_backend(proto::GPU_BACKEND_CUDA);
      else if (*backend == "cpu")
        spec->set_backend(proto::GPU_BACKEND_CPU);
      else
        return Error(b, where + ".backend",
                     absl::StrCat("'", *backend, "' is not one of cuda, cpu"));
      if (const YAML::Node d = g["device_ids"]) {
        if (!d.IsSequence())
          return Error(d, where + ".device_ids",
                       absl::StrCat("must be a list of CUDA device ordinals, got ", Kind(d)));
        std::set<int64_t> seen;
        for (size_t j = 0; j < d.size(); ++j) {
          auto id = Int(d[j], absl::StrCat(where, ".device_ids[", j, "]"), 0, 63);
          if (!id.ok()) return id.status();
          if (!seen.insert(*id).second)
            return Error(d[j], absl::StrCat(where, ".device_ids[", j, "]"),
                         absl::StrCat("device ", *id, " is listed twice"));
          spec->add_device_ids(static_cast<int32_t>(*id));
        }
      }
      if (spec->backend() == proto::GPU_BACKEND_CUDA && spec->device_ids_size() == 0) {
        return Error(g, where + ".device_ids", "backend cuda needs at least one device id");
      }
      if (spec->backend() == proto::GPU_BACKEND_CPU && spec->device_ids_size() > 0) {
        return Error(g["device_ids"], where + ".device_ids", "backend cpu takes no device ids");
      }
      if (g["kv_cache_tokens"])
        TOPO_ASSIGN(spec->set_kv_cache_tokens,
                    Int(g["kv_cache_tokens"], where + ".kv_cache_tokens", 1, int64_t{1} << 32));
      if (g["threads"])
        TOPO_ASSIGN(spec->set_threads, Int(g["threads"], where + ".threads", 0, 4096));
      if (const YAML::Node v = g["vram_gib"]) {
        double gib = 0;
        if (!v.IsScalar() || !absl::SimpleAtod(v.Scalar(), &gib) || !(gib >= 0 && gib <= 65536)) {
          return Error(v, where + ".vram_gib",
                       absl::StrCat("'", v.IsScalar() ? v.Scalar() : "<not a scalar>",
                                    "' is not a number of GiB in [0, 65536]"));
        }
        spec->set_vram_gib(gib);
      }
      if (g["address"]) {
        std::string a;
        if (auto s = HostPort(g["address"], where + ".address", &a); !s.ok()) return s;
        spec->set_address(a);
      }
      if (g["separate_process"]) {
        TOPO_ASSIGN(spec->set_separate_process,
                    Bool(g["separate_process"], where + ".separate_process"));
        if (spec->backend() != proto::GPU_BACKEND_CPU) {
          return Error(g["separate_process"], where + ".separate_process",
                       "only for backend cpu (a cuda gpu worker always runs in its own process)");
        }
      }
    }
    const YAML::Node experts = root["expert_workers"];
    if (auto s = NonEmptyList(root, experts, "expert_workers", "expert workers"); !s.ok()) return s;
    if (experts.size() > 14) return Error(experts, "expert_workers", "at most 14 expert workers");
    std::map<int64_t, size_t> nodes;
    std::map<std::string, size_t> addresses;  // address -> index
    for (size_t i = 0; i < experts.size(); ++i) {
      const YAML::Node e = experts[i];
      const std::string where = absl::StrCat("expert_workers[", i, "]");
      if (auto s = CheckKeys(e, where, {"numa_node", "threads", "host", "address", "memory"});
          !s.ok())
        return s;
      proto::ExpertWorkerSpec* spec = t.add_expert_workers();
      if (!e["numa_node"])
        return Error(e, where + ".numa_node", "required (hwloc NUMA node index)");
      auto node = Int(e["numa_node"], where + ".numa_node", 0, 1023);
      if (!node.ok()) return node.status();
      spec->set_numa_node(static_cast<int32_t>(*node));
      if (e["threads"])
        TOPO_ASSIGN(spec->set_threads, Int(e["threads"], where + ".threads", 0, 4096));
      if (e["host"]) TOPO_ASSIGN(spec->set_host, String(e["host"], where + ".host"));
      if (const YAML::Node m = e["memory"]) {
        auto memory = String(m, where + ".memory");
        if (!memory.ok()) return memory.status();
        if (*memory != "auto" && *memory != "mapped" && *memory != "node") {
          return Error(m, where + ".memory",
                       absl::StrCat("'", *memory, "' is not one of auto, mapped, node"));
        }
        spec->set_memory(*memory);
      }
      if (e["address"]) {
        std::string a;
        if (auto s = HostPort(e["address"], where + ".address", &a); !s.ok()) return s;
        if (absl::EndsWith(a, ":0")) {
          return Error(e["address"], where + ".address",
                       "port 0: give the port the worker started by hand listens on");
        }
        auto [seen, inserted] = addresses.emplace(a, i);
        if (!inserted) {
          return Error(e["address"], where + ".address",
                       absl::StrCat("'", a, "' is already the address of expert_workers[",
                                    seen->second, "]: one worker per address"));
        }
        spec->set_address(a);
      }
      if (!spec->host().empty() && !IsLocalHost(spec->host()) && spec->address().empty()) {
        return Error(e, where + ".address",
                     absl::StrCat("required for a worker on host ", spec->host(),
                                  ": start it there (cpu_expert_worker --listen=0.0.0.0:PORT "
                                  "--token_file=PATH) and give host:PORT"));
      }
      if (!spec->host().empty() && !IsLocalHost(spec->host()) && t.worker_token_file().empty()) {
        return Error(e, where + ".host",
                     absl::StrCat("a worker on host ", spec->host(),
                                  " needs worker_token_file: the file of the secret it was "
                                  "started with (cpu_expert_worker --token_file)"));
      }
      // A worker started by hand has its own token (every worker needs one,
      // whatever its address): the topology must name the same file.
      if (!spec->address().empty() && t.worker_token_file().empty()) {
        return Error(e["address"], where + ".address",
                     "a worker started by hand needs worker_token_file: the file of the secret "
                     "it was started with (cpu_expert_worker --token_file)");
      }
      // This host's NUMA nodes, for the workers the launcher starts here.
      if (host_.numa_nodes > 0 && spec->address().empty() && IsLocalHost(spec->host()) &&
          *node >= host_.numa_nodes) {
        return Error(e["numa_node"], where + ".numa_node",
                     absl::StrCat(*node, ": this host has ", host_.numa_nodes, " NUMA node",
                                  host_.numa_nodes == 1 ? "" : "s", " (0",
                                  host_.numa_nodes > 1 ? absl::StrCat("-", host_.numa_nodes - 1)
                                                       : std::string(),
                                  ", ", host_.numa_source, ")"));
      }
      const std::string host_key = spec->host().empty() ? "localhost" : spec->host();
      const int64_t key =
          *node + (static_cast<int64_t>(std::hash<std::string>()(host_key) & 0xffff) << 16);
      auto [it, inserted] = nodes.emplace(key, i);
      if (!inserted) {
        return Error(e["numa_node"], where + ".numa_node",
                     absl::StrCat(*node, " is already used by expert_workers[", it->second,
                                  "] on the same host"));
      }
    }
    // A worker attached by address may be on another host: UCX needs a
    // network transport to reach it.
    bool attached = false;
    for (const proto::ExpertWorkerSpec& e : t.expert_workers()) attached |= !e.address().empty();
    if (attached && !HasNetworkTransport(t.ucx_transports())) {
      return Error(root["ucx_transports"] ? root["ucx_transports"] : root, "ucx_transports",
                   absl::StrCat("'", t.ucx_transports(),
                                "' has no network transport, but an expert worker is attached "
                                "by address (add tcp, e.g. ucx_transports: tcp)"));
    }
#undef TOPO_ASSIGN
    return t;
  }

  std::string filename_;
  const TopologyHostChecks host_;
};

}  // namespace

bool IsLocalHost(absl::string_view host) {
  return host.empty() || host == "localhost" || absl::StartsWith(host, "127.") || host == "::1";
}

bool HasNetworkTransport(absl::string_view tls) {
  for (absl::string_view t : absl::StrSplit(tls, ',')) {
    if (t == "tcp" || t == "all" || t == "rc" || t == "rc_v" || t == "rc_x" || t == "ud" ||
        t == "ud_v" || t == "ud_x" || t == "dc" || t == "dc_x" || t == "ib") {
      return true;
    }
  }
  return false;
}

absl::StatusOr<proto::Topology> ParseTopologyYaml(absl::string_view yaml,
                                                  absl::string_view filename,
                                                  const TopologyHostChecks& host) {
  return TopologyParser(filename, host).Parse(yaml);
}

absl::StatusOr<proto::Topology> LoadTopologyFile(const std::string& path,
                                                 const TopologyHostChecks& host) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open topology file"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseTopologyYaml(text.str(), path, host);
}

std::string ExpertPlacementYamlName(proto::ExpertPlacement placement) {
  switch (placement) {
    case proto::EXPERT_PLACEMENT_AUTO:
      return "auto";
    case proto::EXPERT_PLACEMENT_REPLICATE:
      return "replicate";
    case proto::EXPERT_PLACEMENT_SLICE:
      return "slice";
    case proto::EXPERT_PLACEMENT_SHARD:
      return "shard";
    default:
      return "unspecified";
  }
}

}  // namespace moeflow
