#include "engine/engine_weights.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/check.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/kv_b_layout.h"
#include "model/deepseek2/weights.h"

namespace moeflow {
namespace {

std::string Shape(const std::vector<int64_t>& ne) {
  return absl::StrCat("{", absl::StrJoin(ne, ", "), "}");
}

// Checks presence, shape and type of a weight matrix and maps it.
absl::Status MapMatrix(const GgufFile& file, const std::string& name,
                       const std::vector<int64_t>& expected_ne, MatmulWeight* out) {
  const GgufTensorInfo* info = file.FindTensor(name);
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": missing tensor ", name,
                                                   " (expected shape ", Shape(expected_ne), ")"));
  }
  if (info->ne != expected_ne) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has shape ",
                                                   Shape(info->ne), ", expected ",
                                                   Shape(expected_ne)));
  }
  if (!MatmulSupports(info->type)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has type ",
                                                   Traits(info->type).name,
                                                   ", which the engine's matmul does not support"));
  }
  absl::StatusOr<int64_t> row_bytes = RowBytes(info->type, info->ne[0]);
  if (!row_bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor ", name, ": ", row_bytes.status().message()));
  }
  out->type = info->type;
  out->data = file.TensorData(*info);
  out->cols = info->ne[0];
  out->rows = info->rows();
  out->row_bytes = *row_bytes;
  return absl::OkStatus();
}

// attn_k_b and attn_v_b of an older-layout layer, derived from its
// attn_kv_b (model/deepseek2/kv_b_layout.h) into buffers `w` owns.
absl::Status MapDerivedMla(const GgufFile& file, const Deepseek2Config& c, int64_t il,
                           EngineWeights& w, EngineLayerWeights& l) {
  MOEFLOW_ASSIGN_OR_RETURN(DerivedMla derived, DeriveMlaFromKvB(file, c, il));
  for (auto [from, to] : {std::pair<DerivedMlaMatrix*, MatmulWeight*>{&derived.k_b, &l.attn_k_b},
                          {&derived.v_b, &l.attn_v_b}}) {
    if (!MatmulSupports(from->type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": tensor ", LayerTensorName(il, "attn_kv_b.weight"), " has type ",
          Traits(from->type).name, ", which the engine's matmul does not support"));
    }
    auto bytes = std::make_shared<std::vector<uint8_t>>(std::move(from->bytes));
    *to = MatmulWeight{from->type, bytes->data(), from->cols, from->rows,
                       RowBytes(from->type, from->cols).value()};
    w.derived.push_back(std::move(bytes));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Weights.

absl::StatusOr<EngineWeights> EngineWeights::Map(
    const GgufFile& file, const Deepseek2Config& c,
    const std::function<void(int64_t done, int64_t total)>& progress) {
  const int64_t hidden = c.hidden;
  const int64_t q_dim = c.n_heads * c.qk_head_dim();
  const int64_t shared_ff = c.expert_ff * c.n_shared_experts;
  EngineWeights w;

  // token_embd is read row by row with Dequantize (ggml_get_rows).
  const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
  if (embd != nullptr && !CanDequantize(embd->type)) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor token_embd.weight has type ", Traits(embd->type).name,
                     ", which moeflow cannot dequantize"));
  }
  if (embd != nullptr && embd->ne == std::vector<int64_t>{hidden, c.vocab_size} &&
      !MatmulSupports(embd->type) && file.FindTensor("output.weight") != nullptr) {
    // Not used as a matmul weight: only its shape and row size matter.
    w.token_embd = MatmulWeight{embd->type, file.TensorData(*embd), hidden, c.vocab_size,
                                RowBytes(embd->type, hidden).value()};
  } else {
    MOEFLOW_RETURN_IF_ERROR(
        MapMatrix(file, "token_embd.weight", {hidden, c.vocab_size}, &w.token_embd));
  }
  MOEFLOW_ASSIGN_OR_RETURN(w.output_norm, LoadTensorAsFloat(file, "output_norm.weight", {hidden}));
  if (file.FindTensor("output.weight") != nullptr) {
    MOEFLOW_RETURN_IF_ERROR(MapMatrix(file, "output.weight", {hidden, c.vocab_size}, &w.output));
  } else {
    w.output = w.token_embd;  // tied embeddings, as llama.cpp falls back
  }

  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t il = 0; il < c.n_layers; ++il) {
    if (progress) progress(il, c.n_layers);
    EngineLayerWeights& l = w.layers[static_cast<size_t>(il)];
    auto vec = [&](const char* suffix, std::vector<int64_t> ne,
                   std::vector<float>& dst) -> absl::Status {
      MOEFLOW_ASSIGN_OR_RETURN(dst, LoadTensorAsFloat(file, LayerTensorName(il, suffix), ne));
      return absl::OkStatus();
    };
    auto mat = [&](const char* suffix, std::vector<int64_t> ne, MatmulWeight& dst) {
      return MapMatrix(file, LayerTensorName(il, suffix), ne, &dst);
    };
    MOEFLOW_RETURN_IF_ERROR(vec("attn_norm.weight", {hidden}, l.attn_norm));
    if (c.q_lora_rank > 0) {
      MOEFLOW_RETURN_IF_ERROR(mat("attn_q_a.weight", {hidden, c.q_lora_rank}, l.attn_q_a));
      MOEFLOW_RETURN_IF_ERROR(vec("attn_q_a_norm.weight", {c.q_lora_rank}, l.attn_q_a_norm));
      MOEFLOW_RETURN_IF_ERROR(mat("attn_q_b.weight", {c.q_lora_rank, q_dim}, l.attn_q_b));
    } else {
      MOEFLOW_RETURN_IF_ERROR(mat("attn_q.weight", {hidden, q_dim}, l.attn_q));
    }
    MOEFLOW_RETURN_IF_ERROR(
        mat("attn_kv_a_mqa.weight", {hidden, c.kv_lora_rank + c.qk_rope_dim}, l.attn_kv_a_mqa));
    MOEFLOW_RETURN_IF_ERROR(vec("attn_kv_a_norm.weight", {c.kv_lora_rank}, l.attn_kv_a_norm));
    if (StoresKvB(file, il)) {
      MOEFLOW_RETURN_IF_ERROR(MapDerivedMla(file, c, il, w, l));
    } else {
      MOEFLOW_RETURN_IF_ERROR(
          mat("attn_k_b.weight", {c.qk_nope_dim, c.kv_lora_rank, c.n_heads}, l.attn_k_b));
      MOEFLOW_RETURN_IF_ERROR(
          mat("attn_v_b.weight", {c.kv_lora_rank, c.v_head_dim, c.n_heads}, l.attn_v_b));
    }
    MOEFLOW_RETURN_IF_ERROR(
        mat("attn_output.weight", {c.n_heads * c.v_head_dim, hidden}, l.attn_output));
    MOEFLOW_RETURN_IF_ERROR(vec("ffn_norm.weight", {hidden}, l.ffn_norm));
    if (!c.is_moe_layer(il)) {
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_gate.weight", {hidden, c.dense_ff}, l.ffn_gate));
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_up.weight", {hidden, c.dense_ff}, l.ffn_up));
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_down.weight", {c.dense_ff, hidden}, l.ffn_down));
      continue;
    }
    MOEFLOW_RETURN_IF_ERROR(mat("ffn_gate_inp.weight", {hidden, c.n_experts}, l.ffn_gate_inp));
    if (file.FindTensor(LayerTensorName(il, "exp_probs_b.bias")) != nullptr) {
      MOEFLOW_RETURN_IF_ERROR(vec("exp_probs_b.bias", {c.n_experts}, l.exp_probs_b));
    }
    MOEFLOW_RETURN_IF_ERROR(
        mat("ffn_gate_exps.weight", {hidden, c.expert_ff, c.n_experts}, l.ffn_gate_exps));
    MOEFLOW_RETURN_IF_ERROR(
        mat("ffn_up_exps.weight", {hidden, c.expert_ff, c.n_experts}, l.ffn_up_exps));
    MOEFLOW_RETURN_IF_ERROR(
        mat("ffn_down_exps.weight", {c.expert_ff, hidden, c.n_experts}, l.ffn_down_exps));
    if (c.n_shared_experts > 0) {
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_gate_shexp.weight", {hidden, shared_ff}, l.ffn_gate_shexp));
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_up_shexp.weight", {hidden, shared_ff}, l.ffn_up_shexp));
      MOEFLOW_RETURN_IF_ERROR(mat("ffn_down_shexp.weight", {shared_ff, hidden}, l.ffn_down_shexp));
    }
  }
  if (progress) progress(c.n_layers, c.n_layers);
  return w;
}

bool IsRoutedExpertTensor(const GgufTensorInfo& tensor) {
  return absl::StrContains(tensor.name, "_exps.");  // as model/memory_plan.cc PartOf
}

absl::StatusOr<EngineWeights> EngineWeights::MapRoutedExperts(const GgufFile& file,
                                                              const Deepseek2Config& c) {
  EngineWeights w;
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t il = c.n_dense_layers; il < c.n_layers; ++il) {
    EngineLayerWeights& l = w.layers[static_cast<size_t>(il)];
    const std::vector<int64_t> gate_up = {c.hidden, c.expert_ff, c.n_experts};
    MOEFLOW_RETURN_IF_ERROR(
        MapMatrix(file, LayerTensorName(il, "ffn_gate_exps.weight"), gate_up, &l.ffn_gate_exps));
    MOEFLOW_RETURN_IF_ERROR(
        MapMatrix(file, LayerTensorName(il, "ffn_up_exps.weight"), gate_up, &l.ffn_up_exps));
    MOEFLOW_RETURN_IF_ERROR(MapMatrix(file, LayerTensorName(il, "ffn_down_exps.weight"),
                                      {c.expert_ff, c.hidden, c.n_experts}, &l.ffn_down_exps));
  }
  return w;
}

// ---------------------------------------------------------------------------
// Load-time repacking of the routed experts.

int64_t RepackRoutedExperts(const Deepseek2Config& c, CpuIsa isa, const std::vector<uint8_t>& held,
                            bool in_place, const GgufFile* file,
                            std::vector<EngineLayerWeights>& layers,
                            std::vector<std::unique_ptr<uint8_t[]>>* storage, ThreadPool* pool) {
  int64_t repacked = 0;
  const auto holds = [&](int64_t e) { return held.empty() || held[static_cast<size_t>(e)] != 0; };
  for (int64_t il = c.n_dense_layers; il < c.n_layers && il < static_cast<int64_t>(layers.size());
       ++il) {
    EngineLayerWeights& lw = layers[static_cast<size_t>(il)];
    for (MatmulWeight* w : {&lw.ffn_gate_exps, &lw.ffn_up_exps, &lw.ffn_down_exps}) {
      if (w->layout != WeightLayout::kGgml || w->data == nullptr) continue;
      const int64_t rows_per_expert = w->rows / c.n_experts;
      const WeightLayout to = PreferredLayout(w->type, w->cols, isa, rows_per_expert);
      if (to == WeightLayout::kGgml) continue;
      const int64_t expert_bytes = rows_per_expert * w->row_bytes;
      uint8_t* dst = const_cast<uint8_t*>(w->data);
      if (!in_place) {
        // Default-initialized: the pages of experts not held are never touched.
        storage->emplace_back(new uint8_t[static_cast<size_t>(w->rows * w->row_bytes)]);
        dst = storage->back().get();
      }
      const MatmulWeight src = *w;
      auto job = [&](int64_t e0, int64_t e1, int /*thread*/) {
        for (int64_t e = e0; e < e1; ++e) {
          if (!holds(e)) continue;
          RepackRows(src, to, src.row(e * rows_per_expert), dst + e * expert_bytes,
                     rows_per_expert);
          if (!in_place && file != nullptr) {
            file->ReleasePages(src.row(e * rows_per_expert), static_cast<uint64_t>(expert_bytes));
          }
        }
      };
      if (pool != nullptr) {
        pool->ParallelFor(c.n_experts, job);
      } else {
        job(0, c.n_experts, 0);
      }
      for (int64_t e = 0; e < c.n_experts; ++e) repacked += holds(e) ? expert_bytes : 0;
      w->data = dst;
      w->layout = to;
    }
  }
  return repacked;
}

std::vector<MatmulWeight*> LayerMatrices(EngineLayerWeights& lw, bool routed_experts) {
  std::vector<MatmulWeight*> m = {
      &lw.attn_q,         &lw.attn_q_a,     &lw.attn_q_b,      &lw.attn_kv_a_mqa, &lw.attn_k_b,
      &lw.attn_v_b,       &lw.attn_output,  &lw.ffn_gate,      &lw.ffn_up,        &lw.ffn_down,
      &lw.ffn_gate_shexp, &lw.ffn_up_shexp, &lw.ffn_down_shexp};
  if (routed_experts) {
    m.insert(m.end(), {&lw.ffn_gate_exps, &lw.ffn_up_exps, &lw.ffn_down_exps});
  }
  return m;
}

int64_t RepackLayerWeights(CpuIsa isa, bool in_place, const GgufFile* file, EngineWeights& weights,
                           std::vector<std::unique_ptr<uint8_t[]>>* storage) {
  int64_t repacked = 0;
  // One matrix, its rows repacked in units of `unit_rows`.
  auto repack = [&](MatmulWeight* w, int64_t unit_rows) {
    if (w->layout != WeightLayout::kGgml || w->data == nullptr) return;
    const WeightLayout to = PreferredLayout(w->type, w->cols, isa, unit_rows);
    if (to == WeightLayout::kGgml) return;
    const int64_t bytes = w->rows * w->row_bytes;
    // Derived at load (kv_b_layout.h): already this process's own bytes.
    if (in_place || (file != nullptr && !file->Holds(w->data))) {
      RepackRows(*w, to, w->data, const_cast<uint8_t*>(w->data), w->rows);
    } else {
      storage->emplace_back(new uint8_t[static_cast<size_t>(bytes)]);
      RepackRows(*w, to, w->data, storage->back().get(), w->rows);
      if (file != nullptr) file->ReleasePages(w->data, static_cast<uint64_t>(bytes));
      w->data = storage->back().get();
    }
    w->layout = to;
    repacked += bytes;
  };
  for (EngineLayerWeights& lw : weights.layers) {
    // attn_k_b / attn_v_b are multiplied head by head: rows repacked as one
    // matrix are a head's (k_b: kv_lora_rank = v_b's columns; v_b: v_head_dim).
    const int64_t n_heads = lw.attn_k_b.data != nullptr && lw.attn_v_b.cols > 0
                                ? lw.attn_k_b.rows / lw.attn_v_b.cols
                                : 1;
    for (MatmulWeight* w : LayerMatrices(lw, /*routed_experts=*/false)) {
      repack(w, w == &lw.attn_k_b || w == &lw.attn_v_b ? w->rows / std::max<int64_t>(n_heads, 1)
                                                         : w->rows);
    }
  }
  // The output head, unless it is token_embd (tied), whose rows are read as
  // GGUF blocks.
  if (weights.output.data != weights.token_embd.data) repack(&weights.output, weights.output.rows);
  return repacked;
}

absl::StatusOr<int64_t> MoveWeightsToOwnMemory(const GgufFile& file, bool routed_experts,
                                               EngineWeights& weights,
                                               std::vector<WeightBuffer>* buffers, ThreadPool* pool,
                                               std::string* note) {
  std::vector<MatmulWeight*> todo;
  for (EngineLayerWeights& lw : weights.layers) {
    for (MatmulWeight* w : LayerMatrices(lw, routed_experts)) todo.push_back(w);
  }
  todo.push_back(&weights.output);
  int64_t total = 0;
  std::vector<MatmulWeight*> mapped;
  for (MatmulWeight* w : todo) {
    if (w->data == nullptr || w->layout != WeightLayout::kGgml || w->rows * w->row_bytes == 0 ||
        !file.Holds(w->data)) {  // not in the file: derived at load, own memory already
      continue;
    }
    mapped.push_back(w);
    total += w->rows * w->row_bytes;
  }
  auto say = [&](std::string line) {
    if (note != nullptr) *note = std::move(line);
  };
  const double gib = static_cast<double>(total) / (1 << 30);
  if (!HugePagesEnabled()) {
    say(absl::StrFormat("weights in the file mapping (MOEFLOW_HUGEPAGES=0), %.2f GiB", gib));
    return 0;
  }
  if (const std::string why = CopyWouldNotFit(total); !why.empty()) {
    say(absl::StrCat("weights in the file mapping: ", why));
    return 0;
  }
  // One buffer for all of them, each matrix at a 4 KiB boundary: a buffer
  // per matrix would round each up to whole huge pages, ~1 MiB per matrix on
  // average (measured on v2-lite 8 layers Q4_K_M: 96 MiB of its 0.33 GiB).
  std::vector<int64_t> offsets;
  int64_t packed = 0;
  for (MatmulWeight* w : mapped) {
    offsets.push_back(packed);
    packed += PackedMatrixBytes(w->rows * w->row_bytes);
  }
  if (mapped.empty()) {
    say("weights copied into huge-page memory, 0.00 GiB");
    return 0;
  }
  MOEFLOW_ASSIGN_OR_RETURN(WeightBuffer buf, WeightBuffer::Allocate(static_cast<size_t>(packed)));
  const bool all_huge = buf.huge_pages();
  for (size_t i = 0; i < mapped.size(); ++i) {
    MatmulWeight* w = mapped[i];
    const size_t bytes = static_cast<size_t>(w->rows * w->row_bytes);
    const uint8_t* src = w->data;
    uint8_t* dst = buf.data() + offsets[i];
    const int64_t chunks = static_cast<int64_t>((bytes + kHugePageBytes - 1) / kHugePageBytes);
    auto copy = [&](int64_t c0, int64_t c1, int /*thread*/) {
      const size_t b0 = static_cast<size_t>(c0) * kHugePageBytes;
      const size_t b1 = std::min(bytes, static_cast<size_t>(c1) * kHugePageBytes);
      std::memcpy(dst + b0, src + b0, b1 - b0);
      // Released chunk by chunk, so that at most a few chunks of a tensor
      // are resident twice (peak RSS), not the whole tensor.
      file.ReleasePages(src + b0, static_cast<uint64_t>(b1 - b0));
    };
    if (pool != nullptr) {
      pool->ParallelFor(chunks, copy);
    } else {
      copy(0, chunks, 0);
    }
    // The pages the chunks shared. (Tied embeddings: token_embd's rows are
    // read from the mapping again.)
    file.ReleasePages(src, static_cast<uint64_t>(bytes));
    w->data = dst;
  }
  buffers->push_back(std::move(buf));
  say(absl::StrFormat("weights copied into %s memory, %.2f GiB",
                      all_huge ? "huge-page" : "4 KiB-page (huge pages refused)", gib));
  return total;
}

}  // namespace moeflow
