#include "model/model_generator.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "base/check.h"
#include "chat/chat_template_text.h"
#include "kernels/cpu/quants.h"
#include "model/gguf.h"
#include "model/imatrix.h"
#include "model/tokenizer_data.h"

namespace moeflow {
namespace {

// Values generated (then quantized and written) per step; 4 M floats keep
// the buffers at ~16 MB + the quantized bytes.
constexpr int64_t kChunkValues = int64_t{1} << 22;

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// gguf-split's output prefix for `--out`: the path without a final ".gguf".
std::string SplitPrefixFor(const std::string& out_path) {
  return absl::EndsWith(out_path, ".gguf") ? out_path.substr(0, out_path.size() - 5) : out_path;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

TensorInit TensorInitFor(absl::string_view name, const std::vector<int64_t>& ne, int64_t hidden) {
  const float fan_in = static_cast<float>(ne.empty() ? 1 : ne[0]);
  if (absl::EndsWith(name, "_norm.weight")) return {1.f, 0.1f};
  if (absl::StrContains(name, "exp_probs_b")) return {0.f, 0.1f};
  if (absl::StrContains(name, "ffn_gate_inp")) return {0.f, 1.6f / std::sqrt(float(hidden))};
  if (name == "token_embd.weight") return {0.f, 0.64f / std::sqrt(float(hidden))};
  if (name == "output.weight") return {0.f, 3.2f / std::sqrt(fan_in)};
  if (absl::StrContains(name, "_exps.")) return {0.f, 0.48f / std::sqrt(fan_in)};
  return {0.f, 0.64f / std::sqrt(fan_in)};
}

std::vector<PlannedTensor> PlanTensors(const Deepseek2Config& c, LlamaFileType file_type, bool pure,
                                       bool has_imatrix) {
  std::vector<PlannedTensor> out;
  auto add = [&](std::string name, std::vector<int64_t> ne) {
    PlannedTensor t;
    t.init = TensorInitFor(name, ne, c.hidden);
    t.name = std::move(name);
    t.ne = std::move(ne);
    out.push_back(std::move(t));
  };
  const int64_t q_dim = c.n_heads * c.qk_head_dim();
  add("token_embd.weight", {c.hidden, c.vocab_size});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    auto name = [&](const char* suffix) { return LayerTensorName(l, suffix); };
    add(name("attn_norm.weight"), {c.hidden});
    if (c.q_lora_rank == 0) {
      add(name("attn_q.weight"), {c.hidden, q_dim});
    } else {
      add(name("attn_q_a.weight"), {c.hidden, c.q_lora_rank});
      add(name("attn_q_a_norm.weight"), {c.q_lora_rank});
      add(name("attn_q_b.weight"), {c.q_lora_rank, q_dim});
    }
    add(name("attn_kv_a_mqa.weight"), {c.hidden, c.kv_lora_rank + c.qk_rope_dim});
    add(name("attn_kv_a_norm.weight"), {c.kv_lora_rank});
    add(name("attn_k_b.weight"), {c.qk_nope_dim, c.kv_lora_rank, c.n_heads});
    add(name("attn_v_b.weight"), {c.kv_lora_rank, c.v_head_dim, c.n_heads});
    add(name("attn_output.weight"), {c.n_heads * c.v_head_dim, c.hidden});
    add(name("ffn_norm.weight"), {c.hidden});
    if (!c.is_moe_layer(l)) {
      add(name("ffn_gate.weight"), {c.hidden, c.dense_ff});
      add(name("ffn_up.weight"), {c.hidden, c.dense_ff});
      add(name("ffn_down.weight"), {c.dense_ff, c.hidden});
      continue;
    }
    add(name("ffn_gate_inp.weight"), {c.hidden, c.n_experts});
    if (c.gating == ExpertGating::kSigmoid) add(name("exp_probs_b.bias"), {c.n_experts});
    add(name("ffn_gate_exps.weight"), {c.hidden, c.expert_ff, c.n_experts});
    add(name("ffn_up_exps.weight"), {c.hidden, c.expert_ff, c.n_experts});
    add(name("ffn_down_exps.weight"), {c.expert_ff, c.hidden, c.n_experts});
    if (c.n_shared_experts > 0) {
      const int64_t shared_ff = c.expert_ff * c.n_shared_experts;
      add(name("ffn_gate_shexp.weight"), {c.hidden, shared_ff});
      add(name("ffn_up_shexp.weight"), {c.hidden, shared_ff});
      add(name("ffn_down_shexp.weight"), {shared_ff, c.hidden});
    }
  }
  add("output_norm.weight", {c.hidden});
  add("output.weight", {c.hidden, c.vocab_size});

  std::vector<TensorShape> shapes;
  for (const PlannedTensor& t : out) shapes.push_back({t.name, t.ne});
  QuantMixOptions mix;
  mix.file_type = file_type;
  mix.n_layers = c.n_layers;
  mix.n_experts = c.n_experts;
  mix.n_gqa = c.n_heads / std::max<int64_t>(1, c.n_heads_kv);
  mix.pure = pure;
  mix.has_imatrix = has_imatrix;
  const std::vector<GgmlType> types = ChooseTensorTypes(shapes, mix);
  for (size_t i = 0; i < out.size(); ++i) out[i].type = types[i];
  return out;
}

absl::Status QuantizeTensorRows(const PlannedTensor& tensor, const float* values, int64_t row_begin,
                                int64_t row_end, const float* importance, uint8_t* out) {
  const int64_t n = tensor.ne[0];
  const int64_t rows_per_matrix = tensor.ne.size() > 1 ? tensor.ne[1] : 1;
  MOEFLOW_ASSIGN_OR_RETURN(const int64_t row_bytes, RowBytes(tensor.type, n));
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float* src = values + (row - row_begin) * n;
    uint8_t* dst = out + (row - row_begin) * row_bytes;
    if (tensor.type == GgmlType::kF32) {
      std::memcpy(dst, src, n * sizeof(float));
    } else if (importance != nullptr) {
      // llama-quantize: matrix e = row / ne[1] (an expert) takes slice e.
      const float* slice = importance + (row / rows_per_matrix) * n;
      MOEFLOW_RETURN_IF_ERROR(QuantizeRows(tensor.type, src, dst, 1, n, slice));
    } else {
      MOEFLOW_RETURN_IF_ERROR(Quantize(tensor.type, src, dst, n));
    }
  }
  return absl::OkStatus();
}

uint64_t TensorKey(uint64_t seed, absl::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a 64
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001B3ull;
  return Mix64(seed * 0x9E3779B97F4A7C15ull ^ h);
}

float RandomNormal(uint64_t tensor_key, uint64_t index) {
  const uint64_t bits = Mix64(tensor_key + (index + 1) * 0x9E3779B97F4A7C15ull);
  const uint32_t sum = static_cast<uint32_t>(bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) +
                       ((bits >> 32) & 0xFFFF) + ((bits >> 48) & 0xFFFF);
  // Sum of four U{0..65535}: mean 2·65535, variance 4·(65536² − 1)/12.
  constexpr float kMean = 2.f * 65535.f;
  constexpr float kInvStd = 1.f / 37837.23f;  // 1 / sqrt(4 (65536² − 1) / 12)
  return (static_cast<float>(sum) - kMean) * kInvStd;
}

namespace {

// Fills rows [row_begin, row_end) of `tensor` (values then quantized) into
// `out` (row_bytes per row, starting with row_begin's).
absl::Status FillRows(const PlannedTensor& tensor, uint64_t key, int64_t row_begin, int64_t row_end,
                      int64_t row_bytes, const float* importance, uint8_t* out) {
  const int64_t n = tensor.ne[0];
  std::vector<float> values(n);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint64_t base = static_cast<uint64_t>(row) * n;
    for (int64_t j = 0; j < n; ++j) {
      values[j] = tensor.init.mean + tensor.init.std * RandomNormal(key, base + j);
    }
    MOEFLOW_RETURN_IF_ERROR(QuantizeTensorRows(tensor, values.data(), row, row + 1, importance,
                                               out + (row - row_begin) * row_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GeneratedModel> GenerateModel(const ModelGeneratorOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  MOEFLOW_ASSIGN_OR_RETURN(Deepseek2Config config, PresetConfig(options.preset));
  MOEFLOW_ASSIGN_OR_RETURN(LlamaFileType file_type, ParseLlamaFileType(options.type));
  if (options.layers < 0) {
    return absl::InvalidArgumentError(absl::StrCat("layers must be >= 1, got ", options.layers));
  }
  if (options.threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 1, got ", options.threads));
  }
  if (options.out_path.empty()) return absl::InvalidArgumentError("no output path given");
  if (options.layers > 0) {
    config.n_layers = options.layers;
    config.n_dense_layers = std::min(config.n_dense_layers, options.layers);
  }
  const bool sharded = options.split.enabled();
  if (!sharded && !options.force && FileExists(options.out_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(options.out_path, " exists (pass --force to overwrite it)"));
  }

  TokenizerData tokenizer;
  if (options.tokenizer_json_path.empty()) {
    tokenizer = GenerateByteLevelBpe(config.vocab_size);
    // So that `moeflow chat` works on the file. Its role markers are not in
    // the generated vocabulary and are tokenized as text: fine for random
    // weights. A tokenizer.json brings its own (tokenizer_config.json).
    tokenizer.chat_template = std::string(chat::DeepseekV3ChatTemplateText());
  } else {
    MOEFLOW_ASSIGN_OR_RETURN(tokenizer,
                             LoadHfTokenizerJson(options.tokenizer_json_path, config.vocab_size));
  }
  config.vocab_size = tokenizer.vocab_size();
  MOEFLOW_RETURN_IF_ERROR(config.Validate());

  std::optional<ImportanceMatrix> imatrix;
  if (!options.imatrix_path.empty()) {
    MOEFLOW_ASSIGN_OR_RETURN(imatrix, ImportanceMatrix::Load(options.imatrix_path));
  }
  const std::vector<PlannedTensor> tensors =
      PlanTensors(config, file_type, options.pure, imatrix.has_value());
  // Each tensor's importance (null: uniform), checked before anything is written.
  std::vector<const float*> importance(tensors.size(), nullptr);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const PlannedTensor& t = tensors[i];
    if (t.type != GgmlType::kF32 && !CanQuantize(t.type)) {
      return absl::UnimplementedError(
          absl::StrCat("tensor ", t.name, ": cannot quantize to ", Traits(t.type).name));
    }
    if (!imatrix.has_value() || t.type == GgmlType::kF32) continue;
    MOEFLOW_ASSIGN_OR_RETURN(importance[i], imatrix->ForTensor(t.name, t.ne));
    if (importance[i] == nullptr && TensorRequiresImatrix(t.name, t.type, file_type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          options.imatrix_path, ": no imatrix entry for tensor ", t.name, ", which is ",
          Traits(t.type).name, " (llama-quantize refuses such a very low-bit tensor without one)"));
    }
  }

  // The file, or the header the shards are cut from (GgufSplitWriter).
  GgufWriter writer;
  GgufSplitWriter split(options.split);
  config.AddToGguf(writer);
  writer.AddMetadata("general.file_type",
                     GgufValue::Uint(GgufType::kUint32, static_cast<uint32_t>(file_type)));
  writer.AddMetadata("general.quantization_version", GgufValue::Uint(GgufType::kUint32, 2));
  tokenizer.AddToGguf(writer);
  tokenizer = TokenizerData();  // the writer holds its own copy
  if (sharded) {
    for (const GgufKeyValue& kv : writer.metadata()) split.AddMetadata(kv.key, kv.value);
  }

  GenerationProgress progress;
  progress.tensors_total = static_cast<int64_t>(tensors.size());
  GeneratedModel result;
  for (const PlannedTensor& t : tensors) {
    if (sharded) {
      split.AddTensor(t.name, t.type, t.ne);
    } else {
      writer.AddTensor(t.name, t.type, t.ne);
    }
    int64_t elements = 1;
    for (int64_t d : t.ne) elements *= d;
    result.n_params += elements;
    MOEFLOW_ASSIGN_OR_RETURN(int64_t row_bytes, RowBytes(t.type, t.ne[0]));
    progress.bytes_total += static_cast<uint64_t>(row_bytes) * (elements / t.ne[0]);
  }
  if (sharded) {
    MOEFLOW_RETURN_IF_ERROR(split.Begin(SplitPrefixFor(options.out_path)));
    for (const std::string& path : split.shard_paths()) {
      if (!options.force && FileExists(path)) {
        return absl::AlreadyExistsError(
            absl::StrCat(path, " exists (pass --force to overwrite it)"));
      }
    }
  } else {
    MOEFLOW_RETURN_IF_ERROR(writer.Begin(options.out_path));
  }
  auto write = [&](const std::string& name, absl::Span<const uint8_t> bytes) {
    return sharded ? split.WriteTensor(name, bytes) : writer.WriteTensor(name, bytes);
  };

  std::vector<uint8_t> out;
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const PlannedTensor& t = tensors[ti];
    const float* t_importance = importance[ti];
    const uint64_t key = TensorKey(options.seed, t.name);
    const int64_t n = t.ne[0];
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    MOEFLOW_ASSIGN_OR_RETURN(const int64_t row_bytes, RowBytes(t.type, n));
    const int64_t chunk_rows = std::max<int64_t>(1, kChunkValues / n);
    out.resize(std::min(chunk_rows, rows) * row_bytes);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t r1 = std::min(rows, r0 + chunk_rows);
      const int n_threads =
          static_cast<int>(std::min<int64_t>(options.threads, (r1 - r0) * n / 65536 + 1));
      std::vector<absl::Status> statuses(n_threads);
      std::vector<std::thread> workers;
      const int64_t per_thread = (r1 - r0 + n_threads - 1) / n_threads;
      for (int w = 0; w < n_threads; ++w) {
        const int64_t b = r0 + w * per_thread;
        const int64_t e = std::min(r1, b + per_thread);
        if (b >= e) continue;
        uint8_t* dst = out.data() + (b - r0) * row_bytes;
        if (w + 1 == n_threads || n_threads == 1) {
          statuses[w] = FillRows(t, key, b, e, row_bytes, t_importance, dst);
        } else {
          workers.emplace_back([&, w, b, e, dst] {
            statuses[w] = FillRows(t, key, b, e, row_bytes, t_importance, dst);
          });
        }
      }
      for (std::thread& worker : workers) worker.join();
      for (const absl::Status& s : statuses) {
        if (!s.ok())
          return absl::Status(s.code(), absl::StrCat("tensor ", t.name, ": ", s.message()));
      }
      const uint64_t n_bytes = static_cast<uint64_t>(r1 - r0) * row_bytes;
      MOEFLOW_RETURN_IF_ERROR(write(t.name, absl::MakeConstSpan(out.data(), n_bytes)));
      progress.bytes_done += n_bytes;
      if (r1 == rows) ++progress.tensors_done;
      if (options.on_progress) {
        progress.elapsed_s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        options.on_progress(progress);
      }
    }
  }
  MOEFLOW_RETURN_IF_ERROR(sharded ? split.Finish() : writer.Finish());

  result.shard_paths = sharded ? split.shard_paths() : std::vector<std::string>{options.out_path};
  result.path = result.shard_paths[0];
  result.config = config;
  result.file_type = file_type;
  result.n_tensors = static_cast<int64_t>(tensors.size());
  result.file_bytes = sharded ? split.planned_size() : writer.planned_size();
  result.elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace moeflow
