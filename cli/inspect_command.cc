// `moeflow inspect FILE.gguf`: what a model file holds and what it needs.
//
// Prints the architecture and hyper-parameters (Deepseek2Config), the
// tokenizer, every metadata key (arrays summarized), the tensor table by
// layer, the bytes of the routed experts against everything else, and the
// expert bytes per NUMA node for each placement mode (model/memory_plan.h).
// The node count comes from hwloc (HWLOC_SYNTHETIC simulates a machine) or
// --numa-nodes. --json prints the same facts as one JSON object.
//
// A split model (model/gguf_split.h) is given by any of its shards; its
// shards are listed. A file in the older MLA layout (attn_kv_b,
// model/deepseek2/kv_b_layout.h) says what is derived from it at load.
//
// --plan prints the GPU memory plan instead (cli/inspect_plan.cc).
#include <hwloc.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/inspect_plan.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/kv_b_layout.h"
#include "model/gguf.h"
#include "model/gguf_shard.h"
#include "model/memory_plan.h"
#include "model/model_generator.h"
#include "model/tokenizer_data.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(bool, tensors, true, "print the tensor table (--notensors hides it)");
ABSL_FLAG(bool, json, false, "print one JSON object instead of text");
ABSL_FLAG(int32_t, numa_nodes, 0, "NUMA nodes to plan the experts for (0: ask hwloc)");
ABSL_FLAG(bool, plan, false,
          "print the GPU memory plan (weights, KV cache, workspace per card over 1/2/4 cards) "
          "for the file, if given, and for the DeepSeek-V3 shape");

namespace moeflow {

namespace {

constexpr ExpertPlacement kPlacements[] = {ExpertPlacement::kReplicate, ExpertPlacement::kSlice,
                                           ExpertPlacement::kShard};

// NUMA nodes of this machine as hwloc sees it (1 if hwloc fails). hwloc
// honours HWLOC_SYNTHETIC itself; setting it again makes that explicit.
int CountNumaNodes() {
  hwloc_topology_t topology;
  if (hwloc_topology_init(&topology) != 0) return 1;
  if (const char* synthetic = std::getenv("HWLOC_SYNTHETIC"); synthetic != nullptr) {
    hwloc_topology_set_synthetic(topology, synthetic);
  }
  int nodes = 1;
  if (hwloc_topology_load(topology) == 0) {
    nodes = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
  }
  hwloc_topology_destroy(topology);
  return nodes < 1 ? 1 : nodes;
}

nlohmann::json ValueJson(const GgufValue& v) {
  switch (v.type()) {
    case GgufType::kString:
      return v.as_string();
    case GgufType::kBool:
      return v.as_bool();
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      return v.as_float();
    case GgufType::kArray:
      return nlohmann::json{{"array_of", std::string(GgufTypeName(v.element_type()))},
                            {"count", v.as_array().size()}};
    case GgufType::kInt8:
    case GgufType::kInt16:
    case GgufType::kInt32:
    case GgufType::kInt64:
      return v.as_int();
    default:
      return v.as_uint();
  }
}

std::string ValueText(const GgufValue& v) {
  if (v.type() == GgufType::kArray) {
    std::string head = v.DebugString(4);
    if (head.size() > 70) head = head.substr(0, 67) + "...";
    return absl::StrCat("[", v.as_array().size(), " × ", GgufTypeName(v.element_type()), "] ",
                        head);
  }
  std::string text = v.DebugString();
  if (text.size() > 90) text = text.substr(0, 87) + "...";
  return text;
}

nlohmann::json ConfigJson(const Deepseek2Config& c) {
  return nlohmann::json{
      {"name", c.name},
      {"n_layers", c.n_layers},
      {"n_dense_layers", c.n_dense_layers},
      {"context_length", c.context_length},
      {"hidden", c.hidden},
      {"dense_ff", c.dense_ff},
      {"n_heads", c.n_heads},
      {"n_heads_kv", c.n_heads_kv},
      {"q_lora_rank", c.q_lora_rank},
      {"kv_lora_rank", c.kv_lora_rank},
      {"qk_nope_dim", c.qk_nope_dim},
      {"qk_rope_dim", c.qk_rope_dim},
      {"v_head_dim", c.v_head_dim},
      {"rms_eps", c.rms_eps},
      {"rope_freq_base", c.rope_freq_base},
      {"rope_scaling_type", c.rope_scaling_type},
      {"rope_scaling_factor", c.rope_scaling_factor},
      {"rope_orig_context", c.rope_orig_context},
      {"yarn_beta_fast", c.yarn_beta_fast},
      {"yarn_beta_slow", c.yarn_beta_slow},
      {"yarn_log_multiplier", c.yarn_log_multiplier},
      {"n_experts", c.n_experts},
      {"n_experts_used", c.n_experts_used},
      {"n_shared_experts", c.n_shared_experts},
      {"expert_ff", c.expert_ff},
      {"gating", c.gating == ExpertGating::kSigmoid ? "sigmoid" : "softmax"},
      {"expert_weights_norm", c.expert_weights_norm},
      {"expert_weights_scale", c.expert_weights_scale},
      {"n_expert_groups", c.n_expert_groups},
      {"n_expert_groups_used", c.n_expert_groups_used},
      {"vocab_size", c.vocab_size},
  };
}

void PrintConfig(const Deepseek2Config& c) {
  auto row = [](const char* name, const std::string& value) {
    std::printf("  %-24s %s\n", name, value.c_str());
  };
  std::printf("\nhyper-parameters\n");
  row("layers", absl::StrFormat("%d (%d dense + %d MoE)", c.n_layers, c.n_dense_layers,
                                c.n_layers - c.n_dense_layers));
  row("hidden", absl::StrCat(c.hidden));
  row("dense ff", absl::StrCat(c.dense_ff));
  row("heads (kv)", absl::StrFormat("%d (%d)", c.n_heads, c.n_heads_kv));
  row("q_lora_rank", c.q_lora_rank == 0 ? "0 (plain attn_q)" : absl::StrCat(c.q_lora_rank));
  row("kv_lora_rank", absl::StrCat(c.kv_lora_rank));
  row("qk nope + rope, v_head",
      absl::StrFormat("%d + %d, %d", c.qk_nope_dim, c.qk_rope_dim, c.v_head_dim));
  row("context length", absl::StrCat(c.context_length));
  row("rope", absl::StrFormat("theta %g, %s factor %g, orig ctx %d, beta %g/%g, log mult %g",
                              c.rope_freq_base, c.rope_scaling_type, c.rope_scaling_factor,
                              c.rope_orig_context, c.yarn_beta_fast, c.yarn_beta_slow,
                              c.yarn_log_multiplier));
  row("rms eps", absl::StrFormat("%g", c.rms_eps));
  row("experts", absl::StrFormat("%d routed, top-%d, %d shared, ff %d", c.n_experts,
                                 c.n_experts_used, c.n_shared_experts, c.expert_ff));
  row("routing", absl::StrFormat("%s, groups %d/%d, weights norm %s, scale %g",
                                 c.gating == ExpertGating::kSigmoid ? "sigmoid" : "softmax",
                                 c.n_expert_groups_used, c.n_expert_groups,
                                 c.expert_weights_norm ? "true" : "false", c.expert_weights_scale));
  row("vocab", absl::StrCat(c.vocab_size));
}

// One shard of a split model, for the listing.
struct ShardSummary {
  std::string path;
  uint64_t bytes = 0;
  int64_t tensors = 0;
  std::string first, last;  // tensor names
};

std::vector<ShardSummary> SummarizeShards(const GgufFile& file) {
  std::vector<ShardSummary> out(static_cast<size_t>(file.shard_count()));
  for (int i = 0; i < file.shard_count(); ++i) {
    out[i].path = file.shard(i).path();
    out[i].bytes = file.shard(i).file_size();
  }
  for (const GgufTensorInfo& t : file.tensors()) {
    ShardSummary& s = out[static_cast<size_t>(t.shard)];
    if (s.tensors++ == 0) s.first = t.name;
    s.last = t.name;
  }
  return out;
}

// The older MLA layout: which layers store attn_kv_b, and what the
// processes derive from it at load.
struct KvBSummary {
  int64_t layers = 0;
  uint64_t kv_b_bytes = 0;                     // in the file
  uint64_t derived_bytes = 0;                  // attn_k_b + attn_v_b made at load
  std::string kv_b_types, k_b_type, v_b_type;  // "q8_0 ×2", per layer
};

// "q5_0 ×1, q8_0 ×1": how many of each type.
std::string TypeCounts(const std::map<std::string, int>& counts) {
  std::vector<std::string> parts;
  for (const auto& [type, n] : counts) parts.push_back(absl::StrCat(type, " ×", n));
  return absl::StrJoin(parts, ", ");
}

KvBSummary SummarizeKvB(const GgufFile& file, const Deepseek2Config& c) {
  KvBSummary s;
  std::map<std::string, int> kv_types, k_types, v_types;
  for (int64_t il = 0; il < c.n_layers; ++il) {
    if (!StoresKvB(file, il)) continue;
    const GgufTensorInfo* kv_b = file.FindTensor(LayerTensorName(il, "attn_kv_b.weight"));
    auto derived = DerivedMlaTensorInfos(*kv_b, c);
    if (!derived.ok()) continue;
    ++s.layers;
    s.kv_b_bytes += kv_b->n_bytes;
    s.derived_bytes += (*derived)[0].n_bytes + (*derived)[1].n_bytes;
    ++kv_types[std::string(Traits(kv_b->type).name)];
    ++k_types[std::string(Traits((*derived)[0].type).name)];
    ++v_types[std::string(Traits((*derived)[1].type).name)];
  }
  s.kv_b_types = TypeCounts(kv_types);
  s.k_b_type = TypeCounts(k_types);
  s.v_b_type = TypeCounts(v_types);
  return s;
}

// Tensors grouped: globals first (file order), then each layer.
std::vector<std::pair<std::string, std::vector<const GgufTensorInfo*>>> GroupByLayer(
    const GgufFile& file) {
  std::vector<const GgufTensorInfo*> globals;
  std::map<int64_t, std::vector<const GgufTensorInfo*>> layers;
  for (const GgufTensorInfo& t : file.tensors()) {
    int64_t layer = -1;
    if (absl::StartsWith(t.name, "blk.")) {
      layer = std::atoll(t.name.c_str() + 4);
    }
    if (layer < 0) {
      globals.push_back(&t);
    } else {
      layers[layer].push_back(&t);
    }
  }
  std::vector<std::pair<std::string, std::vector<const GgufTensorInfo*>>> groups;
  if (!globals.empty()) groups.emplace_back("global", globals);
  for (auto& [layer, list] : layers) groups.emplace_back(absl::StrCat("blk.", layer), list);
  return groups;
}

int RunInspect(const std::vector<std::string>& args) {
  if (absl::GetFlag(FLAGS_plan)) return RunInspectPlan(args);
  if (args.size() != 1) {
    std::fprintf(stderr, "moeflow inspect: expected one FILE.gguf, got %zu arguments\n",
                 args.size());
    return kExitUsage;
  }
  const int numa_flag = absl::GetFlag(FLAGS_numa_nodes);
  if (numa_flag < 0) {
    std::fprintf(stderr, "moeflow inspect: --numa-nodes=%d: must be >= 0\n", numa_flag);
    return kExitUsage;
  }
  const bool json_out = absl::GetFlag(FLAGS_json);
  const bool show_tensors = absl::GetFlag(FLAGS_tensors);

  auto opened = GgufFile::Open(args[0]);
  if (!opened.ok()) {
    std::fprintf(stderr, "moeflow inspect: %s\n", std::string(opened.status().message()).c_str());
    return kExitFailure;
  }
  const GgufFile& file = **opened;
  int exit_code = kExitOk;

  const std::string arch = file.GetString("general.architecture").value_or("");
  const bool is_deepseek2 = arch == "deepseek2";
  absl::StatusOr<Deepseek2Config> config = absl::UnknownError("not deepseek2");
  if (is_deepseek2) {
    config = Deepseek2Config::FromGguf(file);
    if (!config.ok()) exit_code = kExitFailure;
  }
  absl::StatusOr<TokenizerSummary> tokenizer = SummarizeTokenizer(file);
  if (!tokenizer.ok() && tokenizer.status().code() != absl::StatusCode::kNotFound) {
    exit_code = kExitFailure;
  }
  const int numa_nodes = numa_flag > 0 ? numa_flag : CountNumaNodes();
  const char* numa_source = numa_flag > 0 ? "--numa-nodes" : "hwloc";
  const ModelBytes bytes = CountModelBytes(file.tensors());
  const std::vector<ShardSummary> shards = SummarizeShards(file);
  const KvBSummary kv_b = is_deepseek2 && config.ok() ? SummarizeKvB(file, *config) : KvBSummary{};
  std::vector<PlacementPlan> plans;
  for (ExpertPlacement p : kPlacements) {
    plans.push_back(PlanExpertPlacement(file.tensors(), p, numa_nodes));
  }
  std::map<std::string, int64_t> tensors_by_type;
  for (const GgufTensorInfo& t : file.tensors())
    ++tensors_by_type[std::string(Traits(t.type).name)];

  if (json_out) {
    nlohmann::json j;
    j["file"] = file.path();
    j["gguf_version"] = file.version();
    j["file_bytes"] = file.file_size();
    j["alignment"] = file.alignment();
    nlohmann::json shard_list = nlohmann::json::array();
    for (const ShardSummary& sh : shards) {
      shard_list.push_back({{"path", sh.path},
                            {"bytes", sh.bytes},
                            {"tensors", sh.tensors},
                            {"first_tensor", sh.first},
                            {"last_tensor", sh.last}});
    }
    j["shards"] = shard_list;
    if (kv_b.layers > 0) {
      j["older_mla_layout"] = {{"layers", kv_b.layers},
                               {"kv_b_types", kv_b.kv_b_types},
                               {"kv_b_bytes", kv_b.kv_b_bytes},
                               {"derived_k_b_type", kv_b.k_b_type},
                               {"derived_v_b_type", kv_b.v_b_type},
                               {"derived_bytes", kv_b.derived_bytes}};
    }
    j["architecture"] = arch;
    j["file_type"] = FileTypeText(file);
    if (is_deepseek2 && config.ok()) j["hyperparameters"] = ConfigJson(*config);
    if (is_deepseek2 && !config.ok()) j["config_error"] = std::string(config.status().message());
    if (tokenizer.ok()) {
      j["tokenizer"] = {{"model", tokenizer->model},           {"pre", tokenizer->pre},
                        {"vocab_size", tokenizer->vocab_size}, {"merges", tokenizer->merges},
                        {"bos_id", tokenizer->bos_id},         {"bos", tokenizer->bos_text},
                        {"eos_id", tokenizer->eos_id},         {"eos", tokenizer->eos_text},
                        {"add_bos", tokenizer->add_bos},       {"add_eos", tokenizer->add_eos}};
    } else if (tokenizer.status().code() != absl::StatusCode::kNotFound) {
      j["tokenizer_error"] = std::string(tokenizer.status().message());
    }
    nlohmann::json metadata = nlohmann::json::object();
    for (const GgufKeyValue& kv : file.metadata()) metadata[kv.key] = ValueJson(kv.value);
    j["metadata"] = metadata;
    j["tensor_count"] = file.tensors().size();
    j["tensors_by_type"] = tensors_by_type;
    if (show_tensors) {
      nlohmann::json list = nlohmann::json::array();
      for (const GgufTensorInfo& t : file.tensors()) {
        list.push_back({{"name", t.name},
                        {"type", std::string(Traits(t.type).name)},
                        {"ne", t.ne},
                        {"bytes", t.n_bytes},
                        {"part", std::string(TensorPartName(PartOf(t.name)))}});
      }
      j["tensors"] = list;
    }
    nlohmann::json by_part = nlohmann::json::object();
    for (int p = 0; p < kNumTensorParts; ++p) {
      by_part[std::string(TensorPartName(static_cast<TensorPart>(p)))] = bytes.by_part[p];
    }
    j["bytes"] = {{"by_part", by_part},
                  {"routed_experts", bytes.routed_experts()},
                  {"non_expert", bytes.non_expert()},
                  {"total", bytes.total()}};
    j["experts"] = {{"n_experts", bytes.n_experts},
                    {"n_moe_layers", bytes.n_moe_layers},
                    {"bytes_per_expert", bytes.bytes_per_expert}};
    j["numa_nodes"] = numa_nodes;
    j["numa_nodes_from"] = numa_source;
    nlohmann::json placement = nlohmann::json::object();
    for (const PlacementPlan& plan : plans) {
      nlohmann::json nodes = nlohmann::json::array();
      for (const NodeExperts& n : plan.nodes) {
        nodes.push_back({{"experts", n.experts}, {"expert_bytes", n.expert_bytes}});
      }
      placement[std::string(ExpertPlacementName(plan.placement))] = {
          {"nodes", nodes},
          {"total_expert_bytes", plan.total_expert_bytes()},
          {"max_node_expert_bytes", plan.max_node_bytes()}};
    }
    j["placement"] = placement;
    std::printf("%s\n", j.dump(1).c_str());
    return exit_code;
  }

  std::printf("%s: GGUF v%u, %s, %zu tensors, %zu metadata keys, alignment %llu\n",
              file.path().c_str(), file.version(), HumanBytes(file.file_size()).c_str(),
              file.tensors().size(), file.metadata().size(),
              static_cast<unsigned long long>(file.alignment()));
  std::printf("architecture: %s, name: %s, file type: %s\n", arch.empty() ? "(none)" : arch.c_str(),
              file.GetString("general.name").value_or("(none)").c_str(),
              FileTypeText(file).c_str());
  if (shards.size() > 1) {
    std::printf("split model: %zu shards (opened as %s)\n", shards.size(), args[0].c_str());
    for (size_t i = 0; i < shards.size(); ++i) {
      std::printf("  %zu/%zu %s  %s, %lld tensors (%s .. %s)\n", i + 1, shards.size(),
                  shards[i].path.c_str(), HumanBytes(shards[i].bytes).c_str(),
                  static_cast<long long>(shards[i].tensors), shards[i].first.c_str(),
                  shards[i].last.c_str());
    }
  }
  if (!is_deepseek2) {
    std::printf("not a deepseek2 file: only the generic metadata, tensors and sizes follow\n");
  } else if (!config.ok()) {
    std::printf("\nhyper-parameters: INVALID: %s\n",
                std::string(config.status().message()).c_str());
  } else {
    PrintConfig(*config);
  }

  std::printf("\ntokenizer\n");
  if (tokenizer.ok()) {
    std::printf("  model %s, pre %s, %lld tokens, %lld merges\n", tokenizer->model.c_str(),
                tokenizer->pre.empty() ? "(none)" : tokenizer->pre.c_str(),
                static_cast<long long>(tokenizer->vocab_size),
                static_cast<long long>(tokenizer->merges));
    std::printf("  bos %lld %s, eos %lld %s, add_bos %s, add_eos %s\n",
                static_cast<long long>(tokenizer->bos_id), tokenizer->bos_text.c_str(),
                static_cast<long long>(tokenizer->eos_id), tokenizer->eos_text.c_str(),
                tokenizer->add_bos ? "true" : "false", tokenizer->add_eos ? "true" : "false");
    static const char* kTypeNames[] = {"?",      "normal", "unknown", "control", "user-defined",
                                       "unused", "byte"};
    std::vector<std::string> counts;
    for (int t = 1; t < 7; ++t) {
      if (tokenizer->type_counts[t] > 0) {
        counts.push_back(absl::StrCat(tokenizer->type_counts[t], " ", kTypeNames[t]));
      }
    }
    std::printf("  token types: %s\n",
                counts.empty() ? "(none)" : absl::StrJoin(counts, ", ").c_str());
  } else if (tokenizer.status().code() == absl::StatusCode::kNotFound) {
    std::printf("  (none)\n");
  } else {
    std::printf("  INVALID: %s\n", std::string(tokenizer.status().message()).c_str());
  }

  std::printf("\nmetadata (%zu keys)\n", file.metadata().size());
  for (const GgufKeyValue& kv : file.metadata()) {
    std::printf("  %-46s %-7s %s\n", kv.key.c_str(),
                std::string(GgufTypeName(kv.value.type())).c_str(), ValueText(kv.value).c_str());
  }

  std::vector<std::string> type_counts;
  for (const auto& [type, n] : tensors_by_type) type_counts.push_back(absl::StrCat(n, " ", type));
  std::printf("\ntensors (%zu: %s)\n", file.tensors().size(),
              absl::StrJoin(type_counts, ", ").c_str());
  if (show_tensors) {
    for (const auto& [group, list] : GroupByLayer(file)) {
      std::printf("  %s\n", group.c_str());
      for (const GgufTensorInfo* t : list) {
        std::printf("    %-34s %-6s %-20s %12s\n", t->name.c_str(),
                    std::string(Traits(t->type).name).c_str(), t->ShapeString().c_str(),
                    HumanBytes(t->n_bytes).c_str());
      }
    }
  }

  std::printf("\nmemory\n");
  for (int p = 0; p < kNumTensorParts; ++p) {
    if (bytes.tensors_by_part[p] == 0) continue;
    std::printf("  %-16s %12s  (%lld tensors)\n",
                std::string(TensorPartName(static_cast<TensorPart>(p))).c_str(),
                HumanBytes(bytes.by_part[p]).c_str(),
                static_cast<long long>(bytes.tensors_by_part[p]));
  }
  std::printf("  %-16s %12s\n", "total", HumanBytes(bytes.total()).c_str());
  if (kv_b.layers > 0) {
    std::printf(
        "  older MLA layout: attn_kv_b in %lld layers (%s; %s); derived from it at load:\n"
        "    attn_k_b (%s) + attn_v_b (%s), %s held instead (attn_kv_b's pages released)\n",
        static_cast<long long>(kv_b.layers), kv_b.kv_b_types.c_str(),
        HumanBytes(kv_b.kv_b_bytes).c_str(), kv_b.k_b_type.c_str(), kv_b.v_b_type.c_str(),
        HumanBytes(kv_b.derived_bytes).c_str());
  }
  std::printf("  routed experts %s (%.1f%%) vs everything else %s\n",
              HumanBytes(bytes.routed_experts()).c_str(),
              bytes.total() == 0 ? 0.0 : 100.0 * bytes.routed_experts() / bytes.total(),
              HumanBytes(bytes.non_expert()).c_str());
  if (bytes.n_experts > 0) {
    std::printf("  %lld experts × %lld MoE layers, %s per expert (all layers)\n",
                static_cast<long long>(bytes.n_experts), static_cast<long long>(bytes.n_moe_layers),
                HumanBytes(bytes.bytes_per_expert).c_str());
  }

  if (bytes.n_experts == 0) {
    std::printf("\nno routed experts: nothing to place over the %d NUMA node%s (%s)\n", numa_nodes,
                numa_nodes == 1 ? "" : "s", numa_source);
    return exit_code;
  }
  std::printf("\nexpert placement over %d NUMA node%s (%s); the rest (%s) is held once\n",
              numa_nodes, numa_nodes == 1 ? "" : "s", numa_source,
              HumanBytes(bytes.non_expert()).c_str());
  std::printf("  %-10s", "mode");
  for (int n = 0; n < numa_nodes; ++n) std::printf(" %20s", absl::StrCat("node ", n).c_str());
  std::printf(" %12s\n", "all nodes");
  for (const PlacementPlan& plan : plans) {
    std::printf("  %-10s", std::string(ExpertPlacementName(plan.placement)).c_str());
    for (const NodeExperts& n : plan.nodes) {
      std::printf(" %20s", absl::StrCat(HumanBytes(n.expert_bytes), " (", n.experts,
                                        plan.placement == ExpertPlacement::kSlice ? " sl)" : " ex)")
                               .c_str());
    }
    std::printf(" %12s\n", HumanBytes(plan.total_expert_bytes()).c_str());
  }
  std::printf("  (ex: whole experts per node; sl: a 1/%d slice of each expert)\n", numa_nodes);
  return exit_code;
}

}  // namespace

Command InspectCommand() {
  return Command{
      "inspect",
      "print a GGUF file's hyper-parameters, tokenizer, metadata, tensors and memory plan",
      "moeflow inspect [flags] FILE.gguf | moeflow inspect --plan [flags] [FILE.gguf]",
      "Memory per NUMA node for each expert placement: replicate (every node holds\n"
      "every expert), slice (each expert's intermediate dim split over the nodes),\n"
      "shard (whole experts split over the nodes). HWLOC_SYNTHETIC simulates a machine,\n"
      "e.g. HWLOC_SYNTHETIC=\"package:2 numa:1 core:32 pu:1\".\n"
      "--plan [FILE.gguf]: VRAM per card for the gpu_worker's part over 1/2/4 cards\n"
      "(tensor parallel), for the file and for the --shapes (default v3; v3.1, kimi-k2, ...)\n"
      "at Q4_K_M/Q6_K/Q8_0/BF16. A split model is given by any of its shards (all are\n"
      "listed); a file in the older MLA layout (attn_kv_b) is shown with the attn_k_b /\n"
      "attn_v_b derived from it at load (layers, types, bytes), which --plan counts.",
      {"tensors", "json", "numa_nodes", "plan", "context", "max_batch_tokens", "shapes"},
      &RunInspect,
  };
}

}  // namespace moeflow
