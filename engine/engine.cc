#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/check.h"
#include "engine/engine_profile.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/kv_b_layout.h"
#include "model/deepseek2/weights.h"

namespace moeflow {
namespace {

// Upper bound of activation bytes per element over every vec_dot_type (F32).
constexpr int64_t kMaxActBytesPerElement = 4;
// Up to this many (token, expert) pairs, the routed experts run batched.

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

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

template <typename Vector>
void GrowTo(Vector& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Index of the largest value among those not yet taken (lower index on
// ties), as a stable descending sort orders them.
int64_t ArgmaxUntaken(const float* v, const uint8_t* taken, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
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

int64_t RepackLayerWeights(CpuIsa isa, bool in_place, const GgufFile* file,
                           std::vector<EngineLayerWeights>& layers,
                           std::vector<std::unique_ptr<uint8_t[]>>* storage) {
  int64_t repacked = 0;
  for (EngineLayerWeights& lw : layers) {
    // attn_k_b / attn_v_b are multiplied head by head: rows repacked as one
    // matrix are a head's (k_b: kv_lora_rank = v_b's columns; v_b: v_head_dim).
    const int64_t n_heads = lw.attn_k_b.data != nullptr && lw.attn_v_b.cols > 0
                                ? lw.attn_k_b.rows / lw.attn_v_b.cols
                                : 1;
    for (MatmulWeight* w : LayerMatrices(lw, /*routed_experts=*/false)) {
      if (w->layout != WeightLayout::kGgml || w->data == nullptr) continue;
      const int64_t unit_rows = w == &lw.attn_k_b || w == &lw.attn_v_b
                                    ? w->rows / std::max<int64_t>(n_heads, 1)
                                    : w->rows;
      const WeightLayout to = PreferredLayout(w->type, w->cols, isa, unit_rows);
      if (to == WeightLayout::kGgml) continue;
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
    }
  }
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
  bool all_huge = true;
  for (MatmulWeight* w : mapped) {
    const size_t bytes = static_cast<size_t>(w->rows * w->row_bytes);
    MOEFLOW_ASSIGN_OR_RETURN(WeightBuffer buf, WeightBuffer::Allocate(bytes));
    all_huge = all_huge && buf.huge_pages();
    const uint8_t* src = w->data;
    uint8_t* dst = buf.data();
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
    buffers->push_back(std::move(buf));
  }
  say(absl::StrFormat("weights copied into %s memory, %.2f GiB",
                      all_huge ? "huge-page" : "4 KiB-page (huge pages refused)", gib));
  return total;
}

// ---------------------------------------------------------------------------
// Scratch.

void EngineScratch::Reserve(const Deepseek2Config& c, int64_t k, int n_threads, int64_t tokens,
                            int64_t kv_positions) {
  if (tokens <= capacity && kv_positions <= kv_capacity &&
      static_cast<int>(scores.size()) >= n_threads) {
    return;
  }
  const int64_t n = std::max(tokens, capacity);
  const int64_t n_kv = std::max(kv_positions, kv_capacity);
  const int64_t h = c.n_heads;
  const int64_t row_dim = c.kv_lora_rank + c.qk_rope_dim;
  const int64_t shared_ff = c.expert_ff * c.n_shared_experts;
  const int64_t ffn_width = std::max({c.dense_ff, shared_ff, c.expert_ff});
  const int64_t max_cols = std::max(
      {c.hidden, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_dim, h * c.v_head_dim, ffn_width});
  GrowTo(x, n * c.hidden);
  GrowTo(ffn_inp, n * c.hidden);
  GrowTo(x_norm, n * c.hidden);
  GrowTo(routed, n * c.hidden);
  GrowTo(shared, n * c.hidden);
  GrowTo(logits_norm, n * c.hidden);
  GrowTo(q, n * h * c.qk_head_dim());
  GrowTo(q_a, n * c.q_lora_rank);
  GrowTo(kv_a, n * row_dim);
  GrowTo(q_abs, n * h * row_dim);
  GrowTo(ctx, n * h * c.kv_lora_rank);
  GrowTo(heads_out, n * h * c.v_head_dim);
  GrowTo(attn_out, n * c.hidden);
  if (static_cast<int>(scores.size()) < n_threads) scores.resize(static_cast<size_t>(n_threads));
  const int64_t score_rows = std::max(kAttentionHeadGroup, AttentionBlockTokens(h) * h);
  for (std::vector<float>& s : scores) GrowTo(s, score_rows * n_kv);
  if (static_cast<int>(kv_rows.size()) < n_threads) kv_rows.resize(static_cast<size_t>(n_threads));
  for (std::vector<const float*>& r : kv_rows) GrowTo(r, n_kv);
  // The routed experts keep their own buffers (moe, reserved by MoeForward).
  GrowTo(gate, std::min(n, kSwigluTokenChunk) * ffn_width);
  GrowTo(up, std::min(n, kSwigluTokenChunk) * ffn_width);
  GrowTo(router_logits, n * c.n_experts);
  GrowTo(probs, c.n_experts);
  GrowTo(selection, c.n_experts);
  GrowTo(group_score, c.n_expert_groups);
  GrowTo(group_keep, c.n_expert_groups);
  GrowTo(chosen, c.n_experts);
  GrowTo(expert_ids, n * k);
  GrowTo(expert_weights, n * k);
  GrowTo(act, n * max_cols * kMaxActBytesPerElement);
  GrowTo(act_heads, n * h * std::max(c.qk_nope_dim, c.kv_lora_rank) * kMaxActBytesPerElement);
  GrowTo(act_up, n * c.hidden * kMaxActBytesPerElement);
  GrowTo(rope_angles, c.qk_rope_dim);
  capacity = n;
  kv_capacity = n_kv;
}

// ---------------------------------------------------------------------------
// Attention.

void EngineAttentionBlock::Forward(const float* x, int64_t n, int64_t start_pos,
                                   MlaLayerCache& cache, float* out) const {
  const Deepseek2Config& c = *ctx_.config;
  const int64_t row_dim = c.kv_lora_rank + c.qk_rope_dim;
  MOEFLOW_CHECK(cache.row_dim == row_dim);
  MOEFLOW_CHECK(start_pos >= 0 && start_pos <= cache.n_tokens());
  MOEFLOW_CHECK(n <= ctx_.scratch->capacity && start_pos + n <= ctx_.scratch->kv_capacity);
  cache.rows.resize(
      static_cast<size_t>((start_pos + n) * row_dim));  // within the reserved capacity
  // The whole cache is page 0 of a view whose pages are longer than any sequence.
  static constexpr int32_t kOnlyPage = 0;
  AttentionSegment segment;
  segment.n = n;
  segment.start_pos = start_pos;
  segment.kv =
      MlaKvView{cache.rows.data(), &kOnlyPage, std::numeric_limits<int64_t>::max(), 0, row_dim};
  ForwardSegments(x, n, absl::MakeConstSpan(&segment, 1), out);
}

void EngineAttentionBlock::ForwardSegments(const float* x, int64_t n,
                                           absl::Span<const AttentionSegment> segments,
                                           float* out) const {
  const Deepseek2Config& c = *ctx_.config;
  const Deepseek2RopeParams& rope = *ctx_.rope;
  EngineScratch& s = *ctx_.scratch;
  const CpuIsa isa = ctx_.isa;
  ThreadPool* pool = ctx_.pool;
  const int64_t hidden = c.hidden;
  const int64_t n_heads = c.n_heads;
  const int64_t nope = c.qk_nope_dim;
  const int64_t rope_dim = c.qk_rope_dim;
  const int64_t head_dim = c.qk_head_dim();
  const int64_t kv_lora = c.kv_lora_rank;
  const int64_t v_dim = c.v_head_dim;
  const int64_t row_dim = kv_lora + rope_dim;
  const int64_t q_width = n_heads * head_dim;
  MOEFLOW_CHECK(x != out);
  MOEFLOW_CHECK(n <= s.capacity);
  int64_t covered = 0;
  for (const AttentionSegment& seg : segments) {
    MOEFLOW_CHECK(seg.first == covered && seg.n > 0 && seg.start_pos >= 0);
    MOEFLOW_CHECK(seg.kv.row_dim == row_dim && seg.start_pos + seg.n <= s.kv_capacity);
    covered += seg.n;
  }
  MOEFLOW_CHECK(covered == n);
  // The segment of batch row t (segments are in row order).
  auto segment_of = [&](int64_t t) -> const AttentionSegment& {
    size_t lo = 0, hi = segments.size();
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      if (segments[mid].first <= t) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    return segments[lo];
  };

  // 1. attn_norm, q (with roped q_pe), and the cache rows [norm(kv_cmpr), rope(k_pe)].
  float* xn = s.x_norm.data();
  for (int64_t t = 0; t < n; ++t) {
    RmsNorm(x + t * hidden, w_.attn_norm.data(), hidden, c.rms_eps, xn + t * hidden);
  }
  float* q = s.q.data();
  if (c.q_lora_rank > 0) {
    float* q_a = s.q_a.data();
    Matmul(w_.attn_q_a, xn, n, hidden, q_a, c.q_lora_rank, s.act.data(), isa, pool);
    for (int64_t t = 0; t < n; ++t) {
      float* row = q_a + t * c.q_lora_rank;
      RmsNorm(row, w_.attn_q_a_norm.data(), c.q_lora_rank, c.rms_eps, row);
    }
    Matmul(w_.attn_q_b, q_a, n, c.q_lora_rank, q, q_width, s.act.data(), isa, pool);
  } else {
    Matmul(w_.attn_q, xn, n, hidden, q, q_width, s.act.data(), isa, pool);
  }
  float* kv_a = s.kv_a.data();
  Matmul(w_.attn_kv_a_mqa, xn, n, hidden, kv_a, row_dim, s.act.data(), isa, pool);
  for (const AttentionSegment& seg : segments) {
    for (int64_t t = seg.first; t < seg.first + seg.n; ++t) {
      const int64_t pos = seg.start_pos + (t - seg.first);
      float* qt = q + t * q_width;
      float* angles = s.rope_angles.data();  // once per position for all heads
      rope.Angles(pos, angles);
      for (int64_t h = 0; h < n_heads; ++h) rope.Rotate(angles, qt + h * head_dim + nope);
      const float* kv = kv_a + t * row_dim;
      float* row = seg.kv.row(pos);
      RmsNorm(kv, w_.attn_kv_a_norm.data(), kv_lora, c.rms_eps, row);
      std::copy(kv + kv_lora, kv + row_dim, row + kv_lora);
      rope.Rotate(angles, row + kv_lora);
    }
  }

  // 2. Absorbed queries: q_abs[t][h] = [attn_k_b[h] · q_nope[t][h], q_pe[t][h]].
  // q_nope rows (a quantized matmul in llama.cpp, so quantized here too) are
  // laid out [h][t]; each head's quantization, matmul and q_pe copy run on
  // one thread.
  float* q_abs = s.q_abs.data();
  const int64_t qn_bytes = ActivationRowBytes(w_.attn_k_b.type, nope);
  auto k_b_job = [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      QuantizeActivations(w_.attn_k_b.type, q + h * head_dim, n, nope, q_width,
                          s.act_heads.data() + h * n * qn_bytes);
      MatmulQuantized(w_.attn_k_b.Slice(h * kv_lora, kv_lora),
                      s.act_heads.data() + h * n * qn_bytes, n, q_abs + h * row_dim,
                      n_heads * row_dim, isa, nullptr);
      for (int64_t t = 0; t < n; ++t) {
        const float* q_pe = q + t * q_width + h * head_dim + nope;
        std::copy(q_pe, q_pe + rope_dim, q_abs + (t * n_heads + h) * row_dim + kv_lora);
      }
    }
  };
  pool->ParallelFor(n_heads, k_b_job);

  // 3. Causal softmax attention (kernels/cpu/attention.h); V is the kv_cmpr
  // part of the rows. Prefill segments go in blocks of consecutive tokens
  // with all their heads (MlaAttentionTokens: each block of cached rows is
  // read once per token block), single-token segments (decode) per (token,
  // group of kAttentionHeadGroup heads) so that one sequence's heads still
  // spread over the threads. A (token, head) result is the same bit for bit
  // either way, and does not depend on the group, the thread or the other
  // tokens. Units are dealt from the last ones back so that the dynamically
  // claimed chunks shrink toward the short prefixes.
  float* ctx = s.ctx.data();  // [t][h][kv_lora]
  const int64_t n_groups = (n_heads + kAttentionHeadGroup - 1) / kAttentionHeadGroup;
  const int64_t block_tokens = AttentionBlockTokens(n_heads);
  // Tokens [t, t + count), heads [h0, h0 + n_heads).
  using Unit = EngineScratch::AttentionUnit;
  std::vector<Unit>& units = s.attention_units;
  units.clear();
  for (const AttentionSegment& seg : segments) {
    if (seg.n == 1) {
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t h0 = g * kAttentionHeadGroup;
        units.push_back({seg.first, 1, h0, std::min(kAttentionHeadGroup, n_heads - h0)});
      }
      continue;
    }
    for (int64_t t = seg.first; t < seg.first + seg.n; t += block_tokens) {
      units.push_back({t, std::min(block_tokens, seg.first + seg.n - t), 0, n_heads});
    }
  }
  auto attn_job = [&](int64_t u0, int64_t u1, int thread) {
    float* scores = s.scores[static_cast<size_t>(thread)].data();
    const float** rows = s.kv_rows[static_cast<size_t>(thread)].data();
    const AttentionSegment* rows_seg = nullptr;
    int64_t rows_filled = 0;
    for (int64_t k = u0; k < u1; ++k) {
      const Unit& u = units[units.size() - 1 - static_cast<size_t>(k)];
      const AttentionSegment& seg = segment_of(u.t);
      const int64_t first_seen = seg.start_pos + (u.t - seg.first) + 1;
      const int64_t last_seen = first_seen + u.count - 1;
      if (rows_seg != &seg) {
        rows_seg = &seg;
        rows_filled = 0;
      }
      for (; rows_filled < last_seen; ++rows_filled) rows[rows_filled] = seg.kv.row(rows_filled);
      MlaTokensArgs a;
      a.shape.n_heads = u.n_heads;
      a.shape.row_dim = row_dim;
      a.shape.v_dim = kv_lora;
      a.shape.scale = rope.kq_scale;
      a.q = q_abs + (u.t * n_heads + u.h0) * row_dim;
      a.q_stride = row_dim;
      a.n_tok = u.count;
      a.rows = rows;
      a.first_seen = first_seen;
      a.scores = scores;
      a.out = ctx + (u.t * n_heads + u.h0) * kv_lora;
      a.out_stride = kv_lora;
      if (u.count == 1) {
        MlaAttention(a.shape, a.q, a.q_stride, rows, first_seen, scores, a.out, a.out_stride, isa);
      } else {
        // Token i's heads at q + (i · n_heads + h) · row_dim: all heads of
        // the token, so the per-token strides are n_heads rows.
        MlaAttentionTokens(a, isa);
      }
    }
  };
  pool->ParallelFor(static_cast<int64_t>(units.size()), attn_job);

  // 4. Per head (quantization and matmul on one thread): attn_v_b[h] ·
  // context (quantized), then attn_output.
  const int64_t ctx_bytes = ActivationRowBytes(w_.attn_v_b.type, kv_lora);
  float* heads_out = s.heads_out.data();
  auto v_b_job = [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      QuantizeActivations(w_.attn_v_b.type, ctx + h * kv_lora, n, kv_lora, n_heads * kv_lora,
                          s.act_heads.data() + h * n * ctx_bytes);
      MatmulQuantized(w_.attn_v_b.Slice(h * v_dim, v_dim), s.act_heads.data() + h * n * ctx_bytes,
                      n, heads_out + h * v_dim, n_heads * v_dim, isa, nullptr);
    }
  };
  pool->ParallelFor(n_heads, v_b_job);
  float* attn = s.attn_out.data();
  Matmul(w_.attn_output, heads_out, n, n_heads * v_dim, attn, hidden, s.act.data(), isa, pool);
  for (int64_t i = 0; i < n * hidden; ++i) out[i] = attn[i] + x[i];
}

// ---------------------------------------------------------------------------
// Router.

void EngineRouter::Route(const float* x_norm, int64_t n, int32_t* expert_ids,
                         float* expert_weights) const {
  const Deepseek2Config& c = *ctx_.config;
  EngineScratch& s = *ctx_.scratch;
  const int64_t n_experts = c.n_experts;
  float* logits = s.router_logits.data();
  Matmul(w_.ffn_gate_inp, x_norm, n, c.hidden, logits, n_experts, s.act.data(), ctx_.isa,
         ctx_.pool);
  float* probs = s.probs.data();
  float* selection = s.selection.data();
  uint8_t* taken = s.chosen.data();
  for (int64_t t = 0; t < n; ++t) {
    std::copy(logits + t * n_experts, logits + (t + 1) * n_experts, probs);
    if (c.gating == ExpertGating::kSigmoid) {
      for (int64_t e = 0; e < n_experts; ++e) probs[e] = 1.0f / (1.0f + std::exp(-probs[e]));
    } else {
      SoftmaxInPlace(probs, n_experts);
    }
    // The selection bias (V3) steers which experts are chosen, not their weights.
    std::copy(probs, probs + n_experts, selection);
    if (!w_.exp_probs_b.empty()) {
      for (int64_t e = 0; e < n_experts; ++e) selection[e] += w_.exp_probs_b[e];
    }
    if (c.n_expert_groups > 1) {
      // Keep the n_expert_groups_used groups whose two best scores sum highest.
      const int64_t per_group = n_experts / c.n_expert_groups;
      for (int64_t g = 0; g < c.n_expert_groups; ++g) {
        const float* members = selection + g * per_group;
        std::fill(taken, taken + per_group, 0);
        float sum = 0.f;
        for (int64_t i = 0; i < std::min<int64_t>(2, per_group); ++i) {
          const int64_t best = ArgmaxUntaken(members, taken, per_group);
          taken[best] = 1;
          sum += members[best];
        }
        s.group_score[g] = sum;
      }
      uint8_t* keep = s.group_keep.data();
      std::fill(keep, keep + c.n_expert_groups, 0);
      std::fill(taken, taken + c.n_expert_groups, 0);
      for (int64_t i = 0; i < c.n_expert_groups_used; ++i) {
        const int64_t g = ArgmaxUntaken(s.group_score.data(), taken, c.n_expert_groups);
        taken[g] = 1;
        keep[g] = 1;
      }
      for (int64_t e = 0; e < n_experts; ++e) {
        if (!keep[e / per_group]) selection[e] = -std::numeric_limits<float>::infinity();
      }
    }
    std::fill(taken, taken + n_experts, 0);
    int32_t* ids = expert_ids + t * k_;
    float* weights = expert_weights + t * k_;
    float sum = 0.f;
    for (int64_t j = 0; j < k_; ++j) {
      const int64_t e = ArgmaxUntaken(selection, taken, n_experts);
      taken[e] = 1;
      ids[j] = static_cast<int32_t>(e);
      weights[j] = probs[e];
      sum += weights[j];
    }
    if (c.expert_weights_norm) {
      // llama.cpp clamps the sum at the smallest normal F16 before dividing.
      sum = std::max(sum, 6.103515625e-5f);
      for (int64_t j = 0; j < k_; ++j) weights[j] /= sum;
    }
    if (c.expert_weights_scale != 0.0f && c.expert_weights_scale != 1.0f) {
      for (int64_t j = 0; j < k_; ++j) weights[j] *= c.expert_weights_scale;
    }
  }
}

// ---------------------------------------------------------------------------
// FFNs.

void EngineRoutedExperts::Forward(const float* x_norm, int64_t n, const int32_t* expert_ids,
                                  const float* expert_weights, int64_t k, float* out) const {
  const Deepseek2Config& c = *ctx_.config;
  const MoeExperts experts{w_.ffn_gate_exps, w_.ffn_up_exps, w_.ffn_down_exps,
                           c.n_experts,      c.expert_ff,    c.hidden};
  // Long prompts in chunks: MoeForward's scratch grows with its batch (~0.3
  // MB per token for V2-Lite), and a token's result does not depend on the
  // other tokens of the call (kernels/cpu/moe.h), so chunking changes nothing
  // but the memory.
  for (int64_t t0 = 0; t0 < n; t0 += kMoeTokenChunk) {
    const int64_t m = std::min(kMoeTokenChunk, n - t0);
    MoeForward(experts, x_norm + t0 * c.hidden, m, expert_ids + t0 * k, expert_weights + t0 * k, k,
               out + t0 * c.hidden, ctx_.scratch->moe, ctx_.isa, ctx_.pool);
  }
}

void EngineSwigluFfn::Forward(const float* x_norm, int64_t n, float* out) const {
  const int64_t hidden = ctx_.config->hidden;
  for (int64_t t0 = 0; t0 < n; t0 += kSwigluTokenChunk) {
    ForwardChunk(x_norm + t0 * hidden, std::min(kSwigluTokenChunk, n - t0), out + t0 * hidden);
  }
}

void EngineSwigluFfn::ForwardChunk(const float* x_norm, int64_t n, float* out) const {
  const Deepseek2Config& c = *ctx_.config;
  EngineScratch& s = *ctx_.scratch;
  const int64_t hidden = c.hidden;
  const int64_t ff = gate_.rows;
  float* g = s.gate.data();
  float* u = s.up.data();
  ThreadPool* pool = ctx_.pool;
  // Row-wise steps (quantization, SiLU) split over the pool for prefill
  // batches; each row's result does not depend on the split.
  constexpr int64_t kMinParallelRows = 16;
  auto rows = [&](const auto& fn) {
    if (pool == nullptr || n < kMinParallelRows) {
      fn(int64_t{0}, n, 0);
    } else {
      pool->ParallelFor(n, fn);
    }
  };
  if (ActivationType(gate_.type) == ActivationType(up_.type)) {
    const int64_t act_bytes = ActivationRowBytes(gate_.type, hidden);
    rows([&](int64_t t0, int64_t t1, int) {
      QuantizeActivations(gate_.type, x_norm + t0 * hidden, t1 - t0, hidden, hidden,
                          s.act.data() + t0 * act_bytes);
    });
    const MatmulJob jobs[2] = {MatmulJob{gate_, s.act.data(), n, g, ff},
                               MatmulJob{up_, s.act.data(), n, u, ff}};
    MatmulQuantizedBatch(jobs, 2, ctx_.isa, pool);
  } else {
    Matmul(gate_, x_norm, n, hidden, g, ff, s.act.data(), ctx_.isa, pool);
    Matmul(up_, x_norm, n, hidden, u, ff, s.act.data(), ctx_.isa, pool);
  }
  const int64_t down_bytes = ActivationRowBytes(down_.type, ff);
  rows([&](int64_t t0, int64_t t1, int) {
    for (int64_t i = t0 * ff; i < t1 * ff; ++i) g[i] = Silu(g[i]) * u[i];
    QuantizeActivations(down_.type, g + t0 * ff, t1 - t0, ff, ff, s.act.data() + t0 * down_bytes);
  });
  MatmulQuantized(down_, s.act.data(), n, out, hidden, ctx_.isa, pool);
}

void EngineOutputHead(const EngineContext& ctx, const EngineWeights& w, const float* x, int64_t n,
                      float* logits) {
  const Deepseek2Config& c = *ctx.config;
  EngineScratch& s = *ctx.scratch;
  float* xn = s.logits_norm.data();
  for (int64_t t = 0; t < n; ++t) {
    RmsNorm(x + t * c.hidden, w.output_norm.data(), c.hidden, c.rms_eps, xn + t * c.hidden);
  }
  Matmul(w.output, xn, n, c.hidden, logits, c.vocab_size, s.act.data(), ctx.isa, ctx.pool);
}

// ---------------------------------------------------------------------------
// The engine.

absl::StatusOr<std::unique_ptr<Deepseek2Engine>> Deepseek2Engine::Open(
    const std::string& gguf_path, const Deepseek2EngineOptions& options) {
  std::unique_ptr<Deepseek2Engine> e(new Deepseek2Engine());
  e->options_ = options;
  if (options.n_threads < 1 || options.n_threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_threads ", options.n_threads, " is outside [1, 1024]"));
  }
  if (options.max_batch < 1 || options.max_context < 1) {
    return absl::InvalidArgumentError("max_batch and max_context must be positive");
  }
  if (options.kv_pool_tokens < 0 || options.kv_page_tokens < 1 || options.kv_page_tokens > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("kv_pool_tokens ", options.kv_pool_tokens,
                                                   " must be >= 0 and kv_page_tokens ",
                                                   options.kv_page_tokens, " in [1, 4096]"));
  }
  MOEFLOW_ASSIGN_OR_RETURN(e->file_, GgufFile::Open(gguf_path));
  MOEFLOW_ASSIGN_OR_RETURN(e->config_, Deepseek2Config::FromGguf(*e->file_));
  const Deepseek2Config& c = e->config_;
  if (options.active_experts < 0 || options.active_experts > c.n_experts_used) {
    return absl::InvalidArgumentError(
        absl::StrCat("active_experts ", options.active_experts,
                     " is outside [0, expert_used_count = ", c.n_experts_used, "]"));
  }
  e->k_ = options.active_experts == 0 ? c.n_experts_used : options.active_experts;
  MOEFLOW_ASSIGN_OR_RETURN(e->weights_, EngineWeights::Map(*e->file_, c, options.progress));
  MOEFLOW_ASSIGN_OR_RETURN(double rope_attn_factor,
                           e->file_->GetFloatOr("deepseek2.rope.scaling.attn_factor", 1.0));
  e->rope_ = Deepseek2RopeParams::FromConfig(c, static_cast<float>(rope_attn_factor));
  e->pool_ = std::make_unique<ThreadPool>(options.n_threads);
  MOEFLOW_ASSIGN_OR_RETURN(
      const int64_t copied,
      MoveWeightsToOwnMemory(*e->file_, /*routed_experts=*/true, e->weights_, &e->resident_,
                             e->pool_.get(), &e->weight_memory_));
  const bool own = copied > 0;
  RepackRoutedExperts(c, SelectedIsa(), /*held=*/{}, /*in_place=*/own, e->file_.get(),
                      e->weights_.layers, &e->repacked_, e->pool_.get());
  RepackLayerWeights(SelectedIsa(), /*in_place=*/own, e->file_.get(), e->weights_.layers,
                     &e->repacked_);
  const int64_t max_context = std::min(options.max_context, c.context_length);
  e->scratch_.Reserve(c, e->k_, options.n_threads, std::min(options.max_batch, max_context),
                      max_context);
  e->cache_ = MlaKvCache(c.n_layers, c.kv_lora_rank + c.qk_rope_dim);
  if (options.kv_pool_tokens > 0) {
    // Serving: the pool is the KV memory; the single-sequence cache grows on use.
    const int64_t pt = options.kv_page_tokens;
    e->kv_pool_ = std::make_unique<KvPagePool>(c.n_layers, c.kv_lora_rank + c.qk_rope_dim, pt,
                                               (options.kv_pool_tokens + pt - 1) / pt);
  } else {
    for (MlaLayerCache& l : e->cache_.layers) {
      l.rows.reserve(static_cast<size_t>(max_context * l.row_dim));
    }
  }
  e->ctx_ = EngineContext{&e->config_, &e->rope_, SelectedIsa(), e->pool_.get(), &e->scratch_};
  return e;
}

absl::StatusOr<std::vector<float>> Deepseek2Engine::Forward(absl::Span<const int32_t> tokens,
                                                            int64_t start_pos) {
  std::vector<float> logits(tokens.size() * static_cast<size_t>(config_.vocab_size));
  MOEFLOW_RETURN_IF_ERROR(
      ForwardInto(tokens, start_pos, /*last_only=*/false, absl::MakeSpan(logits)));
  return logits;
}

absl::Status Deepseek2Engine::ForwardInto(absl::Span<const int32_t> tokens, int64_t start_pos,
                                          bool last_only, absl::Span<float> logits) {
  const Deepseek2Config& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("Forward: empty batch of tokens");
  if (start_pos < 0 || start_pos > cache_.n_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: start_pos ", start_pos,
                     " is outside [0, cached tokens = ", cache_.n_tokens(), "]"));
  }
  if (start_pos + n > c.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: positions up to ", start_pos + n,
                                                   " exceed context_length ", c.context_length));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is out of range [0, ", c.vocab_size, ")"));
    }
  }
  const int64_t n_out = last_only ? 1 : n;
  if (static_cast<int64_t>(logits.size()) != n_out * c.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: logits buffer has ", logits.size(),
                                                   " floats, expected ", n_out * c.vocab_size));
  }
  // Long prompts go through the layers in chunks of kPrefillTokenChunk (as
  // llama.cpp's 512-token micro-batches): a token's result does not depend on
  // the chunk it is in (every step is per token or causal over the cache),
  // and the scratch stays that of one chunk.
  if (n > kPrefillTokenChunk) {
    for (int64_t t0 = 0; t0 < n; t0 += kPrefillTokenChunk) {
      const int64_t m = std::min(kPrefillTokenChunk, n - t0);
      const bool last_chunk = t0 + m == n;
      if (last_only && !last_chunk) {
        MOEFLOW_RETURN_IF_ERROR(ForwardChunk(tokens.subspan(t0, m), start_pos + t0, true, {}));
      } else {
        MOEFLOW_RETURN_IF_ERROR(
            ForwardChunk(tokens.subspan(t0, m), start_pos + t0, last_only,
                         last_only ? logits : logits.subspan(t0 * c.vocab_size, m * c.vocab_size)));
      }
    }
    return absl::OkStatus();
  }
  return ForwardChunk(tokens, start_pos, last_only, logits);
}

absl::Status Deepseek2Engine::ForwardChunk(absl::Span<const int32_t> tokens, int64_t start_pos,
                                           bool last_only, absl::Span<float> logits) {
  const Deepseek2Config& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t n_out = last_only ? 1 : n;
  const EnginePhaseTimer forward_timer(EnginePhase::kForward, n);
  // Grows only past the sizes reserved at Open.
  scratch_.Reserve(c, k_, pool_->size(), n, start_pos + n);
  for (MlaLayerCache& l : cache_.layers) {
    if (static_cast<int64_t>(l.rows.capacity()) < (start_pos + n) * l.row_dim) {
      l.rows.reserve(static_cast<size_t>(2 * (start_pos + n) * l.row_dim));
    }
  }

  const int64_t hidden = c.hidden;
  EngineScratch& s = scratch_;
  float* x = s.x.data();
  const MatmulWeight& embd = weights_.token_embd;
  for (int64_t t = 0; t < n; ++t) {
    MOEFLOW_CHECK_OK(Dequantize(embd.type, embd.row(tokens[t]), x + t * hidden, hidden));
  }
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
    {
      const EnginePhaseTimer timer(EnginePhase::kAttention, n);
      EngineAttentionBlock(ctx_, lw).Forward(
          x, n, start_pos, cache_.layers[static_cast<size_t>(il)], s.ffn_inp.data());
    }
    LayerFfn(il, n);
  }
  if (logits.empty()) return absl::OkStatus();  // a chunk before the last one
  {
    const EnginePhaseTimer timer(EnginePhase::kOutputHead, n);
    EngineOutputHead(ctx_, weights_, last_only ? x + (n - 1) * hidden : x, n_out, logits.data());
  }
  return absl::OkStatus();
}

void Deepseek2Engine::LayerFfn(int64_t il, int64_t n) {
  const Deepseek2Config& c = config_;
  const int64_t hidden = c.hidden;
  EngineScratch& s = scratch_;
  const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
  float* x = s.x.data();
  float* ffn_inp = s.ffn_inp.data();
  float* x_norm = s.x_norm.data();
  float* routed = s.routed.data();
  float* shared = s.shared.data();
  for (int64_t t = 0; t < n; ++t) {
    RmsNorm(ffn_inp + t * hidden, lw.ffn_norm.data(), hidden, c.rms_eps, x_norm + t * hidden);
  }
  if (!c.is_moe_layer(il)) {
    {
      const EnginePhaseTimer timer(EnginePhase::kDenseFfn, n);
      EngineSwigluFfn(ctx_, lw.ffn_gate, lw.ffn_up, lw.ffn_down).Forward(x_norm, n, routed);
    }
    Combine(ffn_inp, routed, nullptr, n, hidden, x);
    return;
  }
  const EngineRouter router(ctx_, lw, k_);
  {
    const EnginePhaseTimer timer(EnginePhase::kRouter, n);
    router.Route(x_norm, n, s.expert_ids.data(), s.expert_weights.data());
  }
  {
    const EnginePhaseTimer timer(EnginePhase::kRoutedExperts, n);
    EngineRoutedExperts(ctx_, lw).Forward(x_norm, n, s.expert_ids.data(), s.expert_weights.data(),
                                          k_, routed);
  }
  if (c.n_shared_experts > 0) {
    const EnginePhaseTimer timer(EnginePhase::kSharedExperts, n);
    EngineSwigluFfn(ctx_, lw.ffn_gate_shexp, lw.ffn_up_shexp, lw.ffn_down_shexp)
        .Forward(x_norm, n, shared);
  }
  Combine(ffn_inp, routed, c.n_shared_experts > 0 ? shared : nullptr, n, hidden, x);
}

// ---------------------------------------------------------------------------
// Several sequences over the paged KV cache.

absl::StatusOr<Deepseek2Engine::SequenceStart> Deepseek2Engine::StartSequence(
    absl::Span<const int32_t> prompt, int64_t reserve_tokens) {
  if (kv_pool_ == nullptr) {
    return absl::FailedPreconditionError(
        "StartSequence: the engine was opened without a paged KV cache (kv_pool_tokens = 0)");
  }
  KvPagePool& pool = *kv_pool_;
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  if (n_prompt == 0) return absl::InvalidArgumentError("StartSequence: empty prompt");
  if (reserve_tokens < n_prompt || reserve_tokens > config_.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("StartSequence: reserve_tokens ", reserve_tokens, " is outside [prompt ",
                     n_prompt, ", context_length ", config_.context_length, "]"));
  }
  const int64_t pt = pool.page_tokens();
  const int64_t n_pages = (reserve_tokens + pt - 1) / pt;
  if (n_pages > pool.n_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StartSequence: ", reserve_tokens, " positions need ", n_pages, " KV pages of ", pt,
        " tokens but the whole cache has ", pool.n_pages(), " (", pool.n_pages() * pt, " tokens)"));
  }
  // The longest published run of whole blocks, short of the block that holds
  // the last prompt token.
  std::vector<int32_t> reused;
  std::vector<uint64_t> hashes;
  uint64_t hash = 0, serial = 0;
  int64_t evictable_reused = 0;
  for (int64_t b = 0; (b + 1) * pt <= n_prompt - 1; ++b) {
    const absl::Span<const int32_t> block =
        prompt.subspan(static_cast<size_t>(b * pt), static_cast<size_t>(pt));
    hash = pool.Hash(hash, block);
    const int32_t page = pool.Find(hash, serial, block);  // verifies the tokens
    if (page < 0) break;
    serial = pool.serial(page);
    reused.push_back(page);
    hashes.push_back(hash);
    if (pool.refcount(page) == 0) ++evictable_reused;
  }
  const int64_t fresh = n_pages - static_cast<int64_t>(reused.size());
  if (pool.available_pages() - evictable_reused < fresh) {
    return absl::ResourceExhaustedError(absl::StrCat("StartSequence: ", fresh, " KV pages needed, ",
                                                     pool.available_pages() - evictable_reused,
                                                     " available now"));
  }
  Sequence seq;
  seq.pages.reserve(static_cast<size_t>(n_pages));
  for (size_t i = 0; i < reused.size(); ++i) {
    MOEFLOW_CHECK(pool.Acquire(hashes[i], i == 0 ? 0 : pool.serial(reused[i - 1]),
                               prompt.subspan(i * static_cast<size_t>(pt),
                                              static_cast<size_t>(pt))) == reused[i]);
    seq.pages.push_back(reused[i]);
  }
  for (int64_t i = 0; i < fresh; ++i) {
    const int32_t page = pool.Allocate();
    MOEFLOW_CHECK(page >= 0);
    seq.pages.push_back(page);
  }
  const int64_t cached = static_cast<int64_t>(reused.size()) * pt;
  seq.tokens.assign(prompt.begin(), prompt.begin() + cached);
  seq.published_blocks = static_cast<int64_t>(reused.size());
  seq.last_hash = hashes.empty() ? 0 : hashes.back();
  seq.last_serial = serial;
  const int64_t id = next_sequence_++;
  sequences_.emplace(id, std::move(seq));
  return SequenceStart{id, cached};
}

absl::Status Deepseek2Engine::ReserveSequence(int64_t sequence, int64_t reserve_tokens) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("ReserveSequence: no sequence ", sequence));
  }
  KvPagePool& pool = *kv_pool_;
  const int64_t pt = pool.page_tokens();
  if (reserve_tokens > config_.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("ReserveSequence: reserve_tokens ",
                                                   reserve_tokens, " exceeds context_length ",
                                                   config_.context_length));
  }
  const int64_t n_pages = (reserve_tokens + pt - 1) / pt;
  if (n_pages > pool.n_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReserveSequence: ", reserve_tokens, " positions need ", n_pages, " KV pages of ", pt,
        " tokens but the whole cache has ", pool.n_pages(), " (", pool.n_pages() * pt, " tokens)"));
  }
  std::vector<int32_t>& pages = it->second.pages;
  const int64_t fresh = n_pages - static_cast<int64_t>(pages.size());
  if (fresh <= 0) return absl::OkStatus();
  if (pool.available_pages() < fresh) {
    return absl::ResourceExhaustedError(absl::StrCat("ReserveSequence: ", fresh,
                                                     " KV pages needed, ", pool.available_pages(),
                                                     " available now"));
  }
  for (int64_t i = 0; i < fresh; ++i) {
    const int32_t page = pool.Allocate();
    MOEFLOW_CHECK(page >= 0);
    pages.push_back(page);
  }
  return absl::OkStatus();
}

absl::Status Deepseek2Engine::EndSequence(int64_t sequence) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("EndSequence: no sequence ", sequence));
  }
  for (int32_t page : it->second.pages) kv_pool_->Release(page);
  sequences_.erase(it);
  return absl::OkStatus();
}

int64_t Deepseek2Engine::SequenceTokens(int64_t sequence) const {
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? -1 : static_cast<int64_t>(it->second.tokens.size());
}

absl::Status Deepseek2Engine::ForwardBatch(absl::Span<const BatchEntry> entries,
                                           absl::Span<float> logits) {
  const Deepseek2Config& c = config_;
  if (kv_pool_ == nullptr) {
    return absl::FailedPreconditionError(
        "ForwardBatch: the engine was opened without a paged KV cache (kv_pool_tokens = 0)");
  }
  if (entries.empty()) return absl::InvalidArgumentError("ForwardBatch: no entries");
  KvPagePool& pool = *kv_pool_;
  const int64_t pt = pool.page_tokens();
  std::vector<Sequence*> seqs(entries.size());
  int64_t n = 0, max_positions = 0;
  for (size_t e = 0; e < entries.size(); ++e) {
    const BatchEntry& entry = entries[e];
    auto it = sequences_.find(entry.sequence);
    if (it == sequences_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ForwardBatch: entry ", e, " names unknown sequence ", entry.sequence));
    }
    for (size_t f = 0; f < e; ++f) {
      if (entries[f].sequence == entry.sequence) {
        return absl::InvalidArgumentError(absl::StrCat("ForwardBatch: sequence ", entry.sequence,
                                                       " appears in entries ", f, " and ", e));
      }
    }
    Sequence& seq = it->second;
    const int64_t held = static_cast<int64_t>(seq.tokens.size());
    const int64_t m = static_cast<int64_t>(entry.tokens.size());
    if (m == 0) {
      return absl::InvalidArgumentError(absl::StrCat("ForwardBatch: entry ", e, " has no tokens"));
    }
    if (entry.start_pos != held) {
      return absl::InvalidArgumentError(
          absl::StrCat("ForwardBatch: entry ", e, " starts at ", entry.start_pos, " but sequence ",
                       entry.sequence, " holds ", held, " positions"));
    }
    const int64_t limit = std::min(static_cast<int64_t>(seq.pages.size()) * pt, c.context_length);
    if (held + m > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("ForwardBatch: entry ", e, " reaches position ", held + m, " past the ",
                       limit, " reserved for sequence ", entry.sequence));
    }
    for (size_t i = 0; i < entry.tokens.size(); ++i) {
      if (entry.tokens[i] < 0 || entry.tokens[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", entry.tokens[i], " at index ",
                                                       i, " of entry ", e, " is out of range [0, ",
                                                       c.vocab_size, ")"));
      }
    }
    seqs[e] = &seq;
    n += m;
    max_positions = std::max(max_positions, held + m);
  }
  const int64_t n_entries = static_cast<int64_t>(entries.size());
  if (static_cast<int64_t>(logits.size()) != n_entries * c.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("ForwardBatch: logits buffer has ",
                                                   logits.size(), " floats, expected ",
                                                   n_entries * c.vocab_size));
  }
  const EnginePhaseTimer forward_timer(EnginePhase::kForward, n);
  scratch_.Reserve(c, k_, pool_->size(), n, max_positions);

  const int64_t hidden = c.hidden;
  EngineScratch& s = scratch_;
  float* x = s.x.data();
  std::vector<AttentionSegment> segments(entries.size());
  const MatmulWeight& embd = weights_.token_embd;
  int64_t first = 0;
  for (size_t e = 0; e < entries.size(); ++e) {
    const BatchEntry& entry = entries[e];
    AttentionSegment& seg = segments[e];
    seg.first = first;
    seg.n = static_cast<int64_t>(entry.tokens.size());
    seg.start_pos = entry.start_pos;
    seg.kv = MlaKvView{pool.base(), seqs[e]->pages.data(), pt, pool.page_floats(), pool.row_dim()};
    for (int64_t t = 0; t < seg.n; ++t) {
      MOEFLOW_CHECK_OK(
          Dequantize(embd.type, embd.row(entry.tokens[t]), x + (first + t) * hidden, hidden));
    }
    first += seg.n;
  }
  for (int64_t il = 0; il < c.n_layers; ++il) {
    for (AttentionSegment& seg : segments) seg.kv.base = pool.base() + il * pool.layer_floats();
    const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
    {
      const EnginePhaseTimer timer(EnginePhase::kAttention, n);
      EngineAttentionBlock(ctx_, lw).ForwardSegments(x, n, segments, s.ffn_inp.data());
    }
    LayerFfn(il, n);
  }
  // The last row of each entry, gathered (ffn_inp is free now).
  float* last = s.ffn_inp.data();
  for (size_t e = 0; e < entries.size(); ++e) {
    const float* row = x + (segments[e].first + segments[e].n - 1) * hidden;
    std::copy(row, row + hidden, last + static_cast<int64_t>(e) * hidden);
  }
  {
    const EnginePhaseTimer timer(EnginePhase::kOutputHead, n_entries);
    EngineOutputHead(ctx_, weights_, last, n_entries, logits.data());
  }

  // Record the tokens and publish the blocks they completed.
  for (size_t e = 0; e < entries.size(); ++e) {
    Sequence& seq = *seqs[e];
    seq.tokens.insert(seq.tokens.end(), entries[e].tokens.begin(), entries[e].tokens.end());
    const absl::Span<const int32_t> tokens(seq.tokens);
    while (seq.publishing &&
           (seq.published_blocks + 1) * pt <= static_cast<int64_t>(seq.tokens.size())) {
      const int64_t b = seq.published_blocks;
      const absl::Span<const int32_t> block =
          tokens.subspan(static_cast<size_t>(b * pt), static_cast<size_t>(pt));
      seq.last_hash = pool.Hash(seq.last_hash, block);
      // 0: a different block holds this hash (a collision); later blocks
      // would have no verifiable parent, so this sequence publishes no more.
      seq.last_serial =
          pool.Publish(seq.pages[static_cast<size_t>(b)], seq.last_hash, seq.last_serial, block);
      seq.publishing = seq.last_serial != 0;
      ++seq.published_blocks;
    }
  }
  return absl::OkStatus();
}

}  // namespace moeflow
