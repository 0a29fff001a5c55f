// The reference forward pass of DeepSeek-V2/V3 (llama.cpp's `deepseek2`):
// plain scalar float32 loops that reproduce llama.cpp's logits on F32 files.
//
// Role in the data flow: every optimized path (CPU expert kernels, the GPU
// worker, the multi-process engine) is tested against this. The layer is cut
// into the pieces the engine places in different processes, each a small
// class over plain float buffers ([n_tokens × width], row-major):
//
//   EmbedTokens ─► for each layer:
//     AttentionBlock  (attn_norm, MLA with a compressed KV cache, YaRN RoPE,
//                      attn_output, + residual)          ─► ffn_inp
//     ffn_norm(ffn_inp) ─► DenseFfn                      (leading layers)
//                      └─► Router ─► RoutedExperts        (MoE layers)
//                      └─► SharedExperts
//     Combine(ffn_inp, routed, shared)                    ─► next layer
//   OutputHead (output_norm, output) ─► logits
//
// llama.cpp facts this follows (src/models/deepseek2.cpp, llama-graph.cpp,
// llama-context.cpp, ggml-cpu/ops.cpp): RoPE type NORM (adjacent pairs) on the
// last qk_rope dims of each query head and on k_pe; YaRN with ext_factor 1,
// the rope magnitude `attn_factor = 1 / (1 + 0.1 ln(factor))` times the YaRN
// mscale that ggml re-applies (so ≈ 1), and the softmax scale
// `kq_scale = mscale² / sqrt(qk_head_dim)` with
// `mscale = 1 + 0.1 · mscale_all_dim · ln(factor)` (mscale_all_dim =
// yarn_log_multiplier / 0.1); absorbed MLA (K = [norm(kv_cmpr), rope(k_pe)],
// V = norm(kv_cmpr), per-head q_nope·attn_k_b and output·attn_v_b); MoE
// gating by softmax or sigmoid, exp_probs_b added for selection only, group
// score = sum of the group's top-2 selection scores, weights normalized (if
// expert_weights_norm, sum clamped at 6.1e-5) then scaled.
//
// Thread-safety: the component classes are immutable (const methods, any
// thread). Deepseek2Reference owns a KV cache and is not thread-safe.
// Failure: bad input from outside (token ids, positions, model files) is
// answered with absl::Status naming the id, position or tensor; wrong buffer
// sizes passed by moeflow code are programmer errors (CHECK).
#ifndef MOEFLOW_MODEL_DEEPSEEK2_REFERENCE_H_
#define MOEFLOW_MODEL_DEEPSEEK2_REFERENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/aligned_allocator.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/weights.h"
#include "model/gguf.h"

namespace moeflow {

// RoPE with YaRN and the attention softmax scale, derived from the config as
// llama.cpp derives them for `deepseek2`.
struct Deepseek2RopeParams {
  int64_t n_dims = 0;  // qk_rope_dim: rotated dims per head
  float freq_base = 10000.f;
  float freq_scale = 1.f;   // 1 / rope.scaling.factor (yarn, linear), else 1
  float ext_factor = 0.f;   // 1 for YaRN, else 0
  float attn_factor = 1.f;  // rope magnitude factor (cparams.yarn_attn_factor)
  float beta_fast = 32.f;
  float beta_slow = 1.f;
  int64_t n_ctx_orig = 0;           // rope.scaling.original_context_length
  float corr_dims[2] = {0.f, 0.f};  // ggml_rope_yarn_corr_dims
  float kq_scale = 1.f;             // softmax scale of q·k, YaRN mscale² included

  // `rope_attn_factor` is the optional key rope.scaling.attn_factor (1 if absent).
  static Deepseek2RopeParams FromConfig(const Deepseek2Config& config,
                                        float rope_attn_factor = 1.f);

  // Rotates x[0..n_dims) in place for position `pos`: pairs (x[2i], x[2i+1]).
  // Apply(pos, x) is Angles(pos, cs) then Rotate(cs, x), bit for bit; the
  // engine computes the angles of a position once for all its heads.
  void Apply(int64_t pos, float* x) const;
  // cos_sin[2i], cos_sin[2i+1] = the cosine and sine (times the YaRN
  // magnitude) of pair i's angle at `pos`; cos_sin holds n_dims floats.
  void Angles(int64_t pos, float* cos_sin) const;
  // Rotates x[0..n_dims) in place by the angles Angles wrote.
  void Rotate(const float* cos_sin, float* x) const;
};

// The compressed (MLA) KV cache of one layer: per position the RMS-normed
// kv_cmpr (kv_lora_rank) followed by the roped k_pe (qk_rope_dim), exactly
// what llama.cpp keeps in its F32 K cache. Positions are 0..n_tokens()-1.
struct MlaLayerCache {
  int64_t row_dim = 0;             // kv_lora_rank + qk_rope_dim
  CacheAlignedVector<float> rows;  // [n_tokens × row_dim], cache-line aligned
  int64_t n_tokens() const {
    return row_dim == 0 ? 0 : static_cast<int64_t>(rows.size()) / row_dim;
  }
  const float* row(int64_t pos) const { return rows.data() + pos * row_dim; }
};

struct MlaKvCache {
  std::vector<MlaLayerCache> layers;

  MlaKvCache() = default;
  MlaKvCache(int64_t n_layers, int64_t row_dim);
  // Positions cached in every layer (the minimum over layers).
  int64_t n_tokens() const;
  // Forgets positions >= n in every layer (rewind for a new continuation).
  void Truncate(int64_t n);
};

// How AttentionBlock evaluates MLA. kAbsorbed is llama.cpp's layout (scores
// in the kv_lora space); kDecompressed expands per-head keys and values from
// the cache with attn_k_b / attn_v_b first. Both are the same math; tests
// check that they agree to ~1e-5.
enum class MlaAttentionMode { kAbsorbed, kDecompressed };

// Token ids -> rows of token_embd. InvalidArgument names an id outside
// [0, vocab) and its index. out: [tokens.size() × hidden].
absl::Status EmbedTokens(const Deepseek2Config& config, const Deepseek2Weights& weights,
                         absl::Span<const int32_t> tokens, float* out);

// attn_norm → MLA attention → attn_output → + residual, for one layer.
class AttentionBlock {
 public:
  AttentionBlock(const Deepseek2Config& config, const Deepseek2RopeParams& rope,
                 const Deepseek2LayerWeights& weights,
                 MlaAttentionMode mode = MlaAttentionMode::kAbsorbed);

  // x: [n_tokens × hidden], the residual stream of positions start_pos.. .
  // `cache` must hold at least start_pos positions; positions >= start_pos are
  // replaced by this batch's rows. Token i attends causally to positions
  // 0..start_pos+i. out: [n_tokens × hidden] = x + attention(x) (may not alias x).
  void Forward(const float* x, int64_t n_tokens, int64_t start_pos, MlaLayerCache& cache,
               float* out) const;

 private:
  const Deepseek2Config& config_;
  const Deepseek2RopeParams& rope_;
  const Deepseek2LayerWeights& w_;
  MlaAttentionMode mode_;
};

// RMSNorm as ggml computes it: x / sqrt(mean(x²) + eps) * w. Used for
// ffn_norm between AttentionBlock and the FFN parts.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);

// The MoE router of one layer: which experts each token goes to, and with
// what weight.
class Router {
 public:
  // `active_experts` K (1 ≤ K ≤ top-k) keeps only the first K experts by
  // selection score; 0 means the model's top-k. The weights of the kept
  // experts follow the model's rule: probabilities (softmax or sigmoid of the
  // gate logits, without the selection bias), divided by their sum when
  // expert_weights_norm, times expert_weights_scale.
  Router(const Deepseek2Config& config, const Deepseek2LayerWeights& weights,
         int64_t active_experts = 0);

  int64_t k() const { return k_; }

  // x_norm: [n_tokens × hidden] (after ffn_norm). expert_ids, expert_weights:
  // [n_tokens × k()], each row in descending selection score.
  void Route(const float* x_norm, int64_t n_tokens, int32_t* expert_ids,
             float* expert_weights) const;

 private:
  const Deepseek2Config& config_;
  const Deepseek2LayerWeights& w_;
  int64_t k_;
};

// The routed experts of one layer (SwiGLU FFNs of width expert_ff).
class RoutedExperts {
 public:
  RoutedExperts(const Deepseek2Config& config, const Deepseek2LayerWeights& weights);

  // out[t] = Σ_j expert_weights[t,j] · Expert(expert_ids[t,j])(x_norm[t]), summed
  // in j order. ids/weights: [n_tokens × k]; out: [n_tokens × hidden].
  void Forward(const float* x_norm, int64_t n_tokens, const int32_t* expert_ids,
               const float* expert_weights, int64_t k, float* out) const;

  // One expert on one token, unweighted: down(silu(gate·x) ⊙ (up·x)).
  void ExpertForward(int32_t expert, const float* x, float* out) const;

 private:
  const Deepseek2Config& config_;
  const Deepseek2LayerWeights& w_;
};

// The shared experts of a MoE layer (ffn_*_shexp), one SwiGLU FFN of width
// expert_ff · n_shared_experts. out: [n_tokens × hidden].
class SharedExperts {
 public:
  SharedExperts(const Deepseek2Config& config, const Deepseek2LayerWeights& weights);
  void Forward(const float* x_norm, int64_t n_tokens, float* out) const;

 private:
  const Deepseek2Config& config_;
  const Deepseek2LayerWeights& w_;
};

// The FFN of a leading dense layer (ffn_gate/up/down, width dense_ff).
class DenseFfn {
 public:
  DenseFfn(const Deepseek2Config& config, const Deepseek2LayerWeights& weights);
  void Forward(const float* x_norm, int64_t n_tokens, float* out) const;

 private:
  const Deepseek2Config& config_;
  const Deepseek2LayerWeights& w_;
};

// out = ffn_inp + (routed + shared), in llama.cpp's order of additions.
// `shared` may be null (no shared experts, or a dense layer passing its FFN
// output as `routed`). All buffers [n × hidden]; out may alias ffn_inp.
void Combine(const float* ffn_inp, const float* routed, const float* shared, int64_t n_tokens,
             int64_t hidden, float* out);

// output_norm then output: x [n_tokens × hidden] → logits [n_tokens × vocab].
void OutputHead(const Deepseek2Config& config, const Deepseek2Weights& weights, const float* x,
                int64_t n_tokens, float* logits);

struct Deepseek2ReferenceOptions {
  // Routed experts used per token (K ≤ expert_used_count); 0 = the model's.
  int64_t active_experts = 0;
  MlaAttentionMode attention = MlaAttentionMode::kAbsorbed;
};

// The whole model over one sequence, with its KV cache.
//
//   Forward(prompt, 0) ─► Forward({t}, n) ─► Forward({t'}, n+1) ─► ...
//   (start_pos may also go back: positions >= start_pos are recomputed)
class Deepseek2Reference {
 public:
  // Reads the config and every tensor. Errors: those of GgufFile::Open,
  // Deepseek2Config::FromGguf and Deepseek2Weights::Load (naming the key or
  // tensor), InvalidArgument for a bad active_experts.
  static absl::StatusOr<std::unique_ptr<Deepseek2Reference>> Open(
      const std::string& gguf_path, const Deepseek2ReferenceOptions& options = {});
  static absl::StatusOr<std::unique_ptr<Deepseek2Reference>> Create(
      const GgufFile& file, const Deepseek2ReferenceOptions& options = {});

  const Deepseek2Config& config() const { return config_; }
  const Deepseek2Weights& weights() const { return weights_; }
  const Deepseek2RopeParams& rope() const { return rope_; }

  // Runs `tokens` at positions start_pos.. and returns their logits,
  // [tokens.size() × vocab]. start_pos ≤ cached_tokens(); positions from
  // start_pos on are replaced. InvalidArgument for an empty batch, a token id
  // outside [0, vocab) (naming it), start_pos beyond the cache, or a sequence
  // longer than context_length. On error the cache is unchanged.
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> tokens, int64_t start_pos);

  int64_t cached_tokens() const { return cache_.n_tokens(); }
  void ResetCache() { cache_.Truncate(0); }

 private:
  Deepseek2Reference() = default;

  Deepseek2ReferenceOptions options_;
  Deepseek2Config config_;
  Deepseek2Weights weights_;
  Deepseek2RopeParams rope_;
  MlaKvCache cache_;
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_DEEPSEEK2_REFERENCE_H_
