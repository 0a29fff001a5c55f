// `moeflow inspect --plan [FILE.gguf]`: the GPU memory plan (model/memory_plan.h
// PlanGpuMemory) — VRAM per card of the gpu_worker's part (non-expert
// weights as the CUDA kernels hold them, the MLA KV cache for --context
// tokens and a workspace estimate) over 1, 2 and 4 cards, for the file given
// (optional; a split model's any shard) and for the real shapes --shapes
// names (model/model_presets.h) at several quant mixes.
#include "cli/inspect_plan.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "cli/commands.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "model/memory_plan.h"
#include "model/model_generator.h"
#include "model/model_presets.h"
#include "nlohmann/json.hpp"

ABSL_DECLARE_FLAG(bool, json);
ABSL_FLAG(int64_t, context, 4096, "--plan: KV cache positions (tokens, all sequences together)");
ABSL_FLAG(int64_t, max_batch_tokens, 64,
          "tokens per step: inspect --plan's workspace estimate; serve's batches (decode tokens "
          "+ prefill chunks)");
ABSL_FLAG(std::string, shapes, "v3",
          "--plan: comma-separated preset shapes planned at full size (v3, v3.1, kimi-k2, v2-lite, "
          "tiny, tiny-v3, tiny-v3.1, tiny-k2)");

namespace moeflow {

std::string FileTypeText(const GgufFile& file) {
  auto id = file.GetIntOr("general.file_type", -1);
  if (!id.ok() || *id < 0) return "unknown";
  for (const std::string& name : LlamaFileTypeNames()) {
    auto type = ParseLlamaFileType(name);
    if (type.ok() && static_cast<int64_t>(*type) == *id) {
      return absl::StrCat(LlamaFileTypeName(*type), " (", *id, ")");
    }
  }
  return absl::StrCat(*id);
}

namespace {

constexpr int kPlanCards[] = {1, 2, 4};
constexpr LlamaFileType kPlanShapeTypes[] = {LlamaFileType::kQ4_K_M, LlamaFileType::kQ6_K,
                                             LlamaFileType::kQ8_0, LlamaFileType::kBF16};
// Cards the table marks a plan as fitting: RTX 4090 (24 GiB), H100 (80 GiB).
constexpr double kPlanCardGib[] = {24, 80};

// What each preset's shape is, for the table's headings.
std::string ShapeTitle(absl::string_view preset) {
  if (preset == "v3") return "DeepSeek-V3";
  if (preset == "v3.1") return "DeepSeek-V3.1 / R1-0528";
  if (preset == "kimi-k2") return "Kimi-K2";
  if (preset == "v2-lite") return "DeepSeek-V2-Lite";
  if (preset == "tiny-v3.1") return "DeepSeek-V3.1 / R1-0528 at tiny widths";
  if (preset == "tiny-k2") return "Kimi-K2 at tiny widths";
  return std::string(preset);
}

struct NamedPlan {
  std::string model;  // "file" or a preset shape ("v3", "kimi-k2", ...)
  std::string quant;  // file type name
  GpuMemoryPlan plan;
};

std::vector<GgufTensorInfo> ShapeTensors(const Deepseek2Config& config, LlamaFileType type) {
  std::vector<GgufTensorInfo> tensors;
  for (const PlannedTensor& p : PlanTensors(config, type)) {
    GgufTensorInfo t;
    t.name = p.name;
    t.ne = p.ne;
    t.type = p.type;
    t.n_elements = 1;
    for (int64_t d : t.ne) t.n_elements *= d;
    t.n_bytes = static_cast<uint64_t>(RowBytes(t.type, t.ne[0]).value_or(0)) *
                static_cast<uint64_t>(t.n_elements / t.ne[0]);
    tensors.push_back(std::move(t));
  }
  return tensors;
}

// Bytes in the table's unit (GiB, or MiB for models under 1 GiB a card).
std::string UnitText(uint64_t bytes, uint64_t unit) {
  return absl::StrFormat("%.2f", static_cast<double>(bytes) / static_cast<double>(unit));
}

nlohmann::json PlanJson(const NamedPlan& p) {
  nlohmann::json devices = nlohmann::json::array();
  for (const GpuDevicePlan& d : p.plan.devices) {
    nlohmann::json parts = nlohmann::json::object();
    for (int i = 0; i < kNumTensorParts; ++i) {
      if (d.weight_bytes_by_part[i] == 0) continue;
      parts[std::string(TensorPartName(static_cast<TensorPart>(i)))] = d.weight_bytes_by_part[i];
    }
    devices.push_back({{"weight_bytes", d.weight_bytes},
                       {"weight_bytes_by_part", parts},
                       {"kv_cache_bytes", d.kv_cache_bytes},
                       {"activation_bytes", d.activation_bytes},
                       {"workspace_bytes", d.workspace_bytes},
                       {"total_bytes", d.total()}});
  }
  nlohmann::json fits = nlohmann::json::object();
  for (double gib : kPlanCardGib) {
    fits[absl::StrCat(static_cast<int>(gib), "_gib")] =
        p.plan.max_device_bytes() <= static_cast<uint64_t>(gib * (1ull << 30));
  }
  return {{"model", p.model},
          {"quant", p.quant},
          {"cards", p.plan.options.n_devices},
          {"context_tokens", p.plan.options.context_tokens},
          {"kv_cache_positions", p.plan.kv_cache_positions},
          {"kv_bytes_per_token", p.plan.kv_bytes_per_token},
          {"max_batch_tokens", p.plan.options.max_batch_tokens},
          {"max_card_bytes", p.plan.max_device_bytes()},
          {"fits", fits},
          {"devices", devices}};
}

void PrintPlanRow(const NamedPlan& p, uint64_t unit) {
  // Card 0 holds the largest share (shares differ by at most one unit).
  const GpuDevicePlan& d = p.plan.devices[0];
  uint64_t all_weights = 0;
  for (const GpuDevicePlan& card : p.plan.devices) all_weights += card.weight_bytes;
  std::string fits;
  for (double gib : kPlanCardGib) {
    const bool ok = p.plan.max_device_bytes() <= static_cast<uint64_t>(gib * (1ull << 30));
    absl::StrAppend(&fits, absl::StrFormat(" %9s", ok ? "yes" : "no"));
  }
  std::printf("  %-8s %5d %9s %9s %9s %9s %9s%s\n", p.quant.c_str(), p.plan.options.n_devices,
              UnitText(d.weight_bytes, unit).c_str(), UnitText(d.kv_cache_bytes, unit).c_str(),
              UnitText(d.workspace_bytes, unit).c_str(), UnitText(d.total(), unit).c_str(),
              UnitText(all_weights, unit).c_str(), fits.c_str());
}

}  // namespace

int RunInspectPlan(const std::vector<std::string>& args) {
  if (args.size() > 1) {
    return ReportUsageError("inspect", absl::StrCat("--plan: expected at most one FILE.gguf, got ",
                                                    args.size(), " arguments"));
  }
  std::vector<std::string> shapes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',', absl::SkipEmpty())) {
    if (!PresetConfig(s).ok()) {
      return ReportUsageError("inspect",
                              absl::StrCat("--shapes: ", PresetConfig(s).status().message()));
    }
    shapes.emplace_back(s);
  }
  GpuPlanOptions options;
  options.context_tokens = absl::GetFlag(FLAGS_context);
  options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  if (options.context_tokens < 1 || options.context_tokens > (int64_t{1} << 32)) {
    return ReportUsageError(
        "inspect", absl::StrCat("--context=", options.context_tokens, ": must be in [1, 2^32]"));
  }
  if (options.max_batch_tokens < 1 || options.max_batch_tokens > 65536) {
    return ReportUsageError("inspect", absl::StrCat("--max-batch-tokens=", options.max_batch_tokens,
                                                    ": must be in [1, 65536]"));
  }
  std::vector<NamedPlan> plans;
  std::string file_line;
  if (args.size() == 1) {
    auto opened = GgufFile::Open(args[0]);
    if (!opened.ok()) return ReportFailure("inspect", opened.status());
    auto config = Deepseek2Config::FromGguf(**opened);
    if (!config.ok()) return ReportFailure("inspect", config.status());
    std::string quant = FileTypeText(**opened);  // "Q4_K_M (15)": the name only
    quant = quant.substr(0, quant.find(' '));
    for (int cards : kPlanCards) {
      options.n_devices = cards;
      plans.push_back({"file", quant, PlanGpuMemory(*config, (*opened)->tensors(), options)});
    }
    file_line = absl::StrFormat("%s (%s, %d layers, %d heads, hidden %d)", args[0], quant,
                                config->n_layers, config->n_heads, config->hidden);
  }
  std::map<std::string, std::string> shape_lines;
  for (const std::string& shape : shapes) {
    const Deepseek2Config c = *PresetConfig(shape);
    shape_lines[shape] = absl::StrFormat(
        "%s shape (preset %s: %d layers, %d heads, hidden %d, %d experts top-%d, vocab %d)",
        ShapeTitle(shape), shape, c.n_layers, c.n_heads, c.hidden, c.n_experts, c.n_experts_used,
        c.vocab_size);
    for (LlamaFileType type : kPlanShapeTypes) {
      const std::vector<GgufTensorInfo> tensors = ShapeTensors(c, type);
      for (int cards : kPlanCards) {
        options.n_devices = cards;
        plans.push_back({shape, LlamaFileTypeName(type), PlanGpuMemory(c, tensors, options)});
      }
    }
  }

  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json list = nlohmann::json::array();
    for (const NamedPlan& p : plans) list.push_back(PlanJson(p));
    nlohmann::json j = {{"gpu_plan", list},
                        {"kv_page_tokens", kGpuKvPageTokens},
                        {"cublas_workspace_bytes", kCublasWorkspaceBytes},
                        {"cuda_runtime_reserve_bytes", kCudaRuntimeReserveBytes}};
    if (args.size() == 1) j["file"] = args[0];
    std::printf("%s\n", j.dump(1).c_str());
    return kExitOk;
  }
  std::printf(
      "GPU memory plan per card: non-expert weights as the CUDA kernels hold them\n"
      "(Q4_K int4 repack, Q8_0 int8, other quants requantized to int8, BF16/F16/F32 matrices\n"
      "BF16, norms and router F32), MLA KV cache for %lld tokens (BF16, %lld-token pages,\n"
      "every card holds all of it), workspace for %lld-token steps (+%s cuBLAS, +%s runtime\n"
      "reserve, an estimate). Tensor parallel: attention heads, dense FFN and shared-expert\n"
      "rows, embedding and output vocabulary rows split; q_a/kv_a, norms, router replicated.\n",
      static_cast<long long>(options.context_tokens), static_cast<long long>(kGpuKvPageTokens),
      static_cast<long long>(options.max_batch_tokens), HumanBytes(kCublasWorkspaceBytes).c_str(),
      HumanBytes(kCudaRuntimeReserveBytes).c_str());
  std::string current;
  uint64_t unit = 1ull << 30;
  for (const NamedPlan& p : plans) {
    if (p.model != current) {
      current = p.model;
      uint64_t most = 0;
      for (const NamedPlan& q : plans) {
        if (q.model == current) most = std::max(most, q.plan.max_device_bytes());
      }
      unit = most < (1ull << 30) ? (1ull << 20) : (1ull << 30);
      std::printf("\n%s\n", p.model == "file" ? file_line.c_str() : shape_lines[p.model].c_str());
      std::printf("  %-8s %5s %9s %9s %9s %9s %9s %9s %9s  (%s)\n", "quant", "cards", "weights",
                  "kv", "workspace", "per card", "all wts", "24 GiB", "80 GiB",
                  unit == (1ull << 20) ? "MiB" : "GiB");
    }
    PrintPlanRow(p, unit);
  }
  return kExitOk;
}

}  // namespace moeflow
