#include "model/deepseek2/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "kernels/cpu/attention.h"

namespace moeflow {
namespace {

// y[o] = Σ_i w[o·in + i] · x[i]: a ggml matrix {in, out} times a vector.
// Accumulates in double, so the result is the exact dot product rounded once;
// llama.cpp's F32 SIMD dot products differ from it by a few ulp.
void MatVec(const float* w, int64_t in, int64_t out, const float* x, float* y) {
  for (int64_t o = 0; o < out; ++o) {
    const float* row = w + o * in;
    double acc = 0.0;
    for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(row[i]) * x[i];
    y[o] = static_cast<float>(acc);
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(acc);
}

// ggml_silu_f32.
float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// A SwiGLU FFN of width `ff`: out = down(silu(gate·x) ⊙ (up·x)).
void SwigluFfn(const float* gate, const float* up, const float* down, int64_t hidden, int64_t ff,
               const float* x, float* out) {
  std::vector<float> g(static_cast<size_t>(ff)), u(static_cast<size_t>(ff));
  MatVec(gate, hidden, ff, x, g.data());
  MatVec(up, hidden, ff, x, u.data());
  for (int64_t i = 0; i < ff; ++i) g[i] = Silu(g[i]) * u[i];
  MatVec(down, ff, hidden, g.data(), out);
}

// Indices of `values` in descending order (ties: lower index first).
std::vector<int32_t> ArgsortDescending(const std::vector<float>& values) {
  std::vector<int32_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int32_t a, int32_t b) { return values[a] > values[b]; });
  return idx;
}

// ggml's rope_yarn_ramp (ggml-cpu/ops.cpp); `i0 / 2` is an integer division there.
float YarnRamp(float low, float high, int64_t i0) {
  const float y = static_cast<float>(i0 / 2 - low) / std::max(0.001f, high - low);
  return 1.0f - std::min(1.0f, std::max(0.0f, y));
}

// ggml_rope_yarn_corr_dim: the dimension at which `n_rot` rotations fit in
// the original context.
float YarnCorrDim(int64_t n_dims, int64_t n_ctx_orig, float n_rot, float base) {
  return static_cast<float>(n_dims) *
         std::log(static_cast<float>(n_ctx_orig) / (n_rot * 2 * static_cast<float>(M_PI))) /
         (2 * std::log(base));
}

}  // namespace

// ---------------------------------------------------------------------------
// RoPE / YaRN.

Deepseek2RopeParams Deepseek2RopeParams::FromConfig(const Deepseek2Config& c,
                                                    float rope_attn_factor) {
  Deepseek2RopeParams p;
  p.n_dims = c.qk_rope_dim;
  p.freq_base = c.rope_freq_base;
  p.beta_fast = c.yarn_beta_fast;
  p.beta_slow = c.yarn_beta_slow;
  p.n_ctx_orig = c.rope_orig_context > 0 ? c.rope_orig_context : c.context_length;
  const bool yarn = c.rope_scaling_type == "yarn";
  // llama.cpp: rope_freq_scale = 1/factor unless the scaling type is "none".
  p.freq_scale = (c.rope_scaling_type == "none" || c.rope_scaling_factor == 0.f)
                     ? 1.0f
                     : 1.0f / c.rope_scaling_factor;
  p.ext_factor = yarn ? 1.0f : 0.0f;
  // The file stores 0.1 · mscale_all_dim; llama.cpp divides it back
  // ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX] in src/models/deepseek2.cpp).
  const float log_mul = c.yarn_log_multiplier / 0.1f;

  // cparams.yarn_attn_factor (llama-context.cpp).
  float attn_factor = 1.0f;
  if (p.ext_factor != 0.0f) {
    auto get_mscale = [](float scale, float mscale) {
      return scale <= 1.0f ? 1.0f : (0.1f * mscale * std::log(scale) + 1.0f);
    };
    const float factor = 1.0f / p.freq_scale;
    if (log_mul != 0.0f) {
      // DeepSeek-V2 special case: mscale = mscale_all_dim when it is not 1,
      // so the ratio is 1 for every deepseek2 file.
      const float mscale_all_dims = log_mul;
      const float mscale = mscale_all_dims != 1.0f ? mscale_all_dims : 1.0f;
      attn_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dims);
    } else {
      attn_factor = get_mscale(factor, 1.0f);
    }
    // ggml's rope multiplies by (1 + 0.1 ln(factor)) again when ext_factor != 0.
    attn_factor *= 1.0f / (1.0f + 0.1f * std::log(factor));
  }
  attn_factor *= rope_attn_factor;
  p.attn_factor = attn_factor;

  // kq_scale of llm_build_deepseek2: cancel the adjustment above, then scale
  // by the squared YaRN mscale of mscale_all_dim.
  const float attn_factor_org = attn_factor * (1.0f + 0.1f * std::log(1.0f / p.freq_scale));
  const float mscale = attn_factor_org * (1.0f + 0.1f * log_mul * std::log(1.0f / p.freq_scale));
  p.kq_scale = mscale * mscale / std::sqrt(static_cast<float>(c.qk_head_dim()));

  const float start = std::floor(YarnCorrDim(p.n_dims, p.n_ctx_orig, p.beta_fast, p.freq_base));
  const float end = std::ceil(YarnCorrDim(p.n_dims, p.n_ctx_orig, p.beta_slow, p.freq_base));
  p.corr_dims[0] = std::max(0.0f, start);
  p.corr_dims[1] = std::min(static_cast<float>(p.n_dims - 1), end);
  return p;
}

void Deepseek2RopeParams::Angles(int64_t pos, float* cos_sin) const {
  const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(n_dims));
  float theta_extrap = static_cast<float>(pos);
  for (int64_t i0 = 0; i0 < n_dims; i0 += 2) {
    // rope_yarn: interpolate between the scaled and unscaled angle by dimension.
    const float theta_interp = freq_scale * theta_extrap;
    float theta = theta_interp;
    float mscale = attn_factor;
    if (ext_factor != 0.0f) {
      const float ramp_mix = YarnRamp(corr_dims[0], corr_dims[1], i0) * ext_factor;
      theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix;
      mscale *= 1.0f + 0.1f * std::log(1.0f / freq_scale);
    }
    cos_sin[i0] = std::cos(theta) * mscale;
    cos_sin[i0 + 1] = std::sin(theta) * mscale;
    theta_extrap *= theta_scale;
  }
}

void Deepseek2RopeParams::Rotate(const float* cos_sin, float* x) const {
  for (int64_t i0 = 0; i0 < n_dims; i0 += 2) {
    const float cos_theta = cos_sin[i0];
    const float sin_theta = cos_sin[i0 + 1];
    const float x0 = x[i0];
    const float x1 = x[i0 + 1];
    x[i0] = x0 * cos_theta - x1 * sin_theta;
    x[i0 + 1] = x0 * sin_theta + x1 * cos_theta;
  }
}

void Deepseek2RopeParams::Apply(int64_t pos, float* x) const {
  constexpr int64_t kOnStack = 256;  // DeepSeek's qk_rope_dim is 64
  float on_stack[kOnStack];
  std::vector<float> on_heap;
  float* cos_sin = on_stack;
  if (n_dims > kOnStack) {
    on_heap.resize(static_cast<size_t>(n_dims));
    cos_sin = on_heap.data();
  }
  Angles(pos, cos_sin);
  Rotate(cos_sin, x);
}

// ---------------------------------------------------------------------------
// KV cache.

MlaKvCache::MlaKvCache(int64_t n_layers, int64_t row_dim) {
  layers.resize(static_cast<size_t>(n_layers));
  for (MlaLayerCache& l : layers) l.row_dim = row_dim;
}

int64_t MlaKvCache::n_tokens() const {
  if (layers.empty()) return 0;
  int64_t n = layers[0].n_tokens();
  for (const MlaLayerCache& l : layers) n = std::min(n, l.n_tokens());
  return n;
}

void MlaKvCache::Truncate(int64_t n) {
  for (MlaLayerCache& l : layers) {
    if (l.n_tokens() > n) l.rows.resize(static_cast<size_t>(n * l.row_dim));
  }
}

// ---------------------------------------------------------------------------
// Components.

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * scale) * weight[i];
}

absl::Status EmbedTokens(const Deepseek2Config& config, const Deepseek2Weights& weights,
                         absl::Span<const int32_t> tokens, float* out) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is out of range [0, ", config.vocab_size,
                                                     ")"));
    }
  }
  const int64_t hidden = config.hidden;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const float* row = weights.token_embd.data() + static_cast<int64_t>(tokens[i]) * hidden;
    std::copy(row, row + hidden, out + static_cast<int64_t>(i) * hidden);
  }
  return absl::OkStatus();
}

AttentionBlock::AttentionBlock(const Deepseek2Config& config, const Deepseek2RopeParams& rope,
                               const Deepseek2LayerWeights& weights, MlaAttentionMode mode)
    : config_(config), rope_(rope), w_(weights), mode_(mode) {}

void AttentionBlock::Forward(const float* x, int64_t n_tokens, int64_t start_pos,
                             MlaLayerCache& cache, float* out) const {
  const Deepseek2Config& c = config_;
  const int64_t hidden = c.hidden;
  const int64_t n_heads = c.n_heads;
  const int64_t nope = c.qk_nope_dim;
  const int64_t rope_dim = c.qk_rope_dim;
  const int64_t head_dim = c.qk_head_dim();
  const int64_t kv_lora = c.kv_lora_rank;
  const int64_t v_dim = c.v_head_dim;
  const int64_t row_dim = kv_lora + rope_dim;
  MOEFLOW_CHECK(cache.row_dim == row_dim);
  MOEFLOW_CHECK(start_pos >= 0 && start_pos <= cache.n_tokens());
  MOEFLOW_CHECK(x != out);
  const int64_t n_kv = start_pos + n_tokens;
  cache.rows.resize(static_cast<size_t>(n_kv * row_dim));

  // 1. Per token: q (with roped q_pe) and the cache row [norm(kv_cmpr), rope(k_pe)].
  std::vector<float> q(static_cast<size_t>(n_tokens * n_heads * head_dim));
  std::vector<float> xn(static_cast<size_t>(hidden));
  std::vector<float> q_a(static_cast<size_t>(c.q_lora_rank));
  std::vector<float> kv_a(static_cast<size_t>(row_dim));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t pos = start_pos + t;
    RmsNorm(x + t * hidden, w_.attn_norm.data(), hidden, c.rms_eps, xn.data());
    float* qt = q.data() + t * n_heads * head_dim;
    if (c.q_lora_rank > 0) {
      MatVec(w_.attn_q_a.data(), hidden, c.q_lora_rank, xn.data(), q_a.data());
      RmsNorm(q_a.data(), w_.attn_q_a_norm.data(), c.q_lora_rank, c.rms_eps, q_a.data());
      MatVec(w_.attn_q_b.data(), c.q_lora_rank, n_heads * head_dim, q_a.data(), qt);
    } else {
      MatVec(w_.attn_q.data(), hidden, n_heads * head_dim, xn.data(), qt);
    }
    for (int64_t h = 0; h < n_heads; ++h) rope_.Apply(pos, qt + h * head_dim + nope);

    MatVec(w_.attn_kv_a_mqa.data(), hidden, row_dim, xn.data(), kv_a.data());
    float* row = cache.rows.data() + pos * row_dim;
    RmsNorm(kv_a.data(), w_.attn_kv_a_norm.data(), kv_lora, c.rms_eps, row);
    std::copy(kv_a.data() + kv_lora, kv_a.data() + row_dim, row + kv_lora);
    rope_.Apply(pos, row + kv_lora);
  }

  // Decompressed mode: per-head keys (nope part) and values of every cached
  // position, k_nope[j][d] = Σ_c k_b[h][c][d]·kv[j][c], v[j][e] = Σ_c v_b[h][e][c]·kv[j][c].
  std::vector<float> k_nope, v_full;
  if (mode_ == MlaAttentionMode::kDecompressed) {
    k_nope.assign(static_cast<size_t>(n_heads * n_kv * nope), 0.f);
    v_full.assign(static_cast<size_t>(n_heads * n_kv * v_dim), 0.f);
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* k_b = w_.attn_k_b.data() + h * kv_lora * nope;   // [kv_lora][nope]
      const float* v_b = w_.attn_v_b.data() + h * v_dim * kv_lora;  // [v_dim][kv_lora]
      for (int64_t j = 0; j < n_kv; ++j) {
        const float* kv = cache.row(j);
        for (int64_t d = 0; d < nope; ++d) {
          double acc = 0.0;
          for (int64_t ci = 0; ci < kv_lora; ++ci)
            acc += static_cast<double>(k_b[ci * nope + d]) * kv[ci];
          k_nope[(h * n_kv + j) * nope + d] = static_cast<float>(acc);
        }
        MatVec(v_b, kv_lora, v_dim, kv, v_full.data() + (h * n_kv + j) * v_dim);
      }
    }
  }

  // 2. Per token and head: causal softmax attention, then attn_output.
  std::vector<float> q_abs(static_cast<size_t>(row_dim));
  std::vector<float> scores(static_cast<size_t>(n_kv));
  std::vector<float> ctx(static_cast<size_t>(kv_lora));
  std::vector<float> heads_out(static_cast<size_t>(n_heads * v_dim));
  std::vector<float> attn(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t pos = start_pos + t;
    const int64_t n_seen = pos + 1;
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* qh = q.data() + (t * n_heads + h) * head_dim;
      const float* q_nope = qh;
      const float* q_pe = qh + nope;
      float* oh = heads_out.data() + h * v_dim;
      if (mode_ == MlaAttentionMode::kAbsorbed) {
        // Q = [attn_k_b[h] · q_nope (kv_lora), q_pe (rope)] against K = cache rows.
        MatVec(w_.attn_k_b.data() + h * kv_lora * nope, nope, kv_lora, q_nope, q_abs.data());
        std::copy(q_pe, q_pe + rope_dim, q_abs.data() + kv_lora);
        for (int64_t j = 0; j < n_seen; ++j) {
          scores[j] = Dot(q_abs.data(), cache.row(j), row_dim) * rope_.kq_scale;
        }
        SoftmaxInPlace(scores.data(), n_seen);
        // V = the kv_cmpr part of the rows; then attn_v_b[h] back to v_head_dim.
        for (int64_t ci = 0; ci < kv_lora; ++ci) {
          double acc = 0.0;
          for (int64_t j = 0; j < n_seen; ++j)
            acc += static_cast<double>(scores[j]) * cache.row(j)[ci];
          ctx[ci] = static_cast<float>(acc);
        }
        MatVec(w_.attn_v_b.data() + h * v_dim * kv_lora, kv_lora, v_dim, ctx.data(), oh);
      } else {
        for (int64_t j = 0; j < n_seen; ++j) {
          const double s =
              static_cast<double>(Dot(q_nope, k_nope.data() + (h * n_kv + j) * nope, nope)) +
              Dot(q_pe, cache.row(j) + kv_lora, rope_dim);
          scores[j] = static_cast<float>(s) * rope_.kq_scale;
        }
        SoftmaxInPlace(scores.data(), n_seen);
        for (int64_t e = 0; e < v_dim; ++e) {
          double acc = 0.0;
          for (int64_t j = 0; j < n_seen; ++j) {
            acc += static_cast<double>(scores[j]) * v_full[(h * n_kv + j) * v_dim + e];
          }
          oh[e] = static_cast<float>(acc);
        }
      }
    }
    MatVec(w_.attn_output.data(), n_heads * v_dim, hidden, heads_out.data(), attn.data());
    for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] = attn[i] + x[t * hidden + i];
  }
}

Router::Router(const Deepseek2Config& config, const Deepseek2LayerWeights& weights,
               int64_t active_experts)
    : config_(config), w_(weights) {
  MOEFLOW_CHECK(active_experts >= 0 && active_experts <= config.n_experts_used);
  k_ = active_experts == 0 ? config.n_experts_used : active_experts;
}

void Router::Route(const float* x_norm, int64_t n_tokens, int32_t* expert_ids,
                   float* expert_weights) const {
  const Deepseek2Config& c = config_;
  const int64_t n_experts = c.n_experts;
  std::vector<float> probs(static_cast<size_t>(n_experts));
  std::vector<float> selection(static_cast<size_t>(n_experts));
  for (int64_t t = 0; t < n_tokens; ++t) {
    MatVec(w_.ffn_gate_inp.data(), c.hidden, n_experts, x_norm + t * c.hidden, probs.data());
    if (c.gating == ExpertGating::kSigmoid) {
      for (float& p : probs) p = 1.0f / (1.0f + std::exp(-p));
    } else {
      SoftmaxInPlace(probs.data(), n_experts);
    }
    // The selection bias (V3) steers which experts are chosen, not their weights.
    selection = probs;
    if (!w_.exp_probs_b.empty()) {
      for (int64_t e = 0; e < n_experts; ++e) selection[e] += w_.exp_probs_b[e];
    }
    // Group-limited routing: keep the n_expert_groups_used groups whose two
    // best selection scores sum highest.
    if (c.n_expert_groups > 1) {
      const int64_t per_group = n_experts / c.n_expert_groups;
      std::vector<float> group_score(static_cast<size_t>(c.n_expert_groups));
      for (int64_t g = 0; g < c.n_expert_groups; ++g) {
        std::vector<float> members(selection.begin() + g * per_group,
                                   selection.begin() + (g + 1) * per_group);
        const std::vector<int32_t> order = ArgsortDescending(members);
        float sum = 0.f;
        for (int64_t i = 0; i < std::min<int64_t>(2, per_group); ++i) sum += members[order[i]];
        group_score[g] = sum;
      }
      const std::vector<int32_t> group_order = ArgsortDescending(group_score);
      std::vector<bool> keep(static_cast<size_t>(c.n_expert_groups), false);
      for (int64_t i = 0; i < c.n_expert_groups_used; ++i) keep[group_order[i]] = true;
      for (int64_t e = 0; e < n_experts; ++e) {
        if (!keep[e / per_group]) selection[e] = -std::numeric_limits<float>::infinity();
      }
    }
    const std::vector<int32_t> order = ArgsortDescending(selection);
    int32_t* ids = expert_ids + t * k_;
    float* weights = expert_weights + t * k_;
    float sum = 0.f;
    for (int64_t j = 0; j < k_; ++j) {
      ids[j] = order[j];
      weights[j] = probs[order[j]];
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

RoutedExperts::RoutedExperts(const Deepseek2Config& config, const Deepseek2LayerWeights& weights)
    : config_(config), w_(weights) {}

void RoutedExperts::ExpertForward(int32_t expert, const float* x, float* out) const {
  const int64_t hidden = config_.hidden;
  const int64_t ff = config_.expert_ff;
  MOEFLOW_CHECK(expert >= 0 && expert < config_.n_experts);
  const int64_t offset = static_cast<int64_t>(expert) * ff * hidden;
  SwigluFfn(w_.ffn_gate_exps.data() + offset, w_.ffn_up_exps.data() + offset,
            w_.ffn_down_exps.data() + offset, hidden, ff, x, out);
}

void RoutedExperts::Forward(const float* x_norm, int64_t n_tokens, const int32_t* expert_ids,
                            const float* expert_weights, int64_t k, float* out) const {
  const int64_t hidden = config_.hidden;
  std::vector<float> y(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* o = out + t * hidden;
    std::fill(o, o + hidden, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      ExpertForward(expert_ids[t * k + j], x_norm + t * hidden, y.data());
      const float w = expert_weights[t * k + j];
      for (int64_t i = 0; i < hidden; ++i) o[i] += y[i] * w;
    }
  }
}

SharedExperts::SharedExperts(const Deepseek2Config& config, const Deepseek2LayerWeights& weights)
    : config_(config), w_(weights) {}

void SharedExperts::Forward(const float* x_norm, int64_t n_tokens, float* out) const {
  const int64_t hidden = config_.hidden;
  const int64_t ff = config_.expert_ff * config_.n_shared_experts;
  for (int64_t t = 0; t < n_tokens; ++t) {
    SwigluFfn(w_.ffn_gate_shexp.data(), w_.ffn_up_shexp.data(), w_.ffn_down_shexp.data(), hidden,
              ff, x_norm + t * hidden, out + t * hidden);
  }
}

DenseFfn::DenseFfn(const Deepseek2Config& config, const Deepseek2LayerWeights& weights)
    : config_(config), w_(weights) {}

void DenseFfn::Forward(const float* x_norm, int64_t n_tokens, float* out) const {
  const int64_t hidden = config_.hidden;
  for (int64_t t = 0; t < n_tokens; ++t) {
    SwigluFfn(w_.ffn_gate.data(), w_.ffn_up.data(), w_.ffn_down.data(), hidden, config_.dense_ff,
              x_norm + t * hidden, out + t * hidden);
  }
}

void Combine(const float* ffn_inp, const float* routed, const float* shared, int64_t n_tokens,
             int64_t hidden, float* out) {
  for (int64_t i = 0; i < n_tokens * hidden; ++i) {
    const float ffn_out = shared != nullptr ? routed[i] + shared[i] : routed[i];
    out[i] = ffn_out + ffn_inp[i];
  }
}

void OutputHead(const Deepseek2Config& config, const Deepseek2Weights& weights, const float* x,
                int64_t n_tokens, float* logits) {
  const int64_t hidden = config.hidden;
  std::vector<float> xn(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < n_tokens; ++t) {
    RmsNorm(x + t * hidden, weights.output_norm.data(), hidden, config.rms_eps, xn.data());
    MatVec(weights.output.data(), hidden, config.vocab_size, xn.data(),
           logits + t * config.vocab_size);
  }
}

// ---------------------------------------------------------------------------
// The whole model.

absl::StatusOr<std::unique_ptr<Deepseek2Reference>> Deepseek2Reference::Open(
    const std::string& gguf_path, const Deepseek2ReferenceOptions& options) {
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
  return Create(*file, options);
}

absl::StatusOr<std::unique_ptr<Deepseek2Reference>> Deepseek2Reference::Create(
    const GgufFile& file, const Deepseek2ReferenceOptions& options) {
  std::unique_ptr<Deepseek2Reference> model(new Deepseek2Reference());
  model->options_ = options;
  MOEFLOW_ASSIGN_OR_RETURN(model->config_, Deepseek2Config::FromGguf(file));
  const Deepseek2Config& c = model->config_;
  if (options.active_experts < 0 || options.active_experts > c.n_experts_used) {
    return absl::InvalidArgumentError(
        absl::StrCat("active_experts ", options.active_experts,
                     " is outside [0, expert_used_count = ", c.n_experts_used, "]"));
  }
  MOEFLOW_ASSIGN_OR_RETURN(model->weights_, Deepseek2Weights::Load(file, c));
  // Optional key; 1 when absent, as in llama.cpp.
  MOEFLOW_ASSIGN_OR_RETURN(double rope_attn_factor,
                           file.GetFloatOr("deepseek2.rope.scaling.attn_factor", 1.0));
  model->rope_ = Deepseek2RopeParams::FromConfig(c, static_cast<float>(rope_attn_factor));
  model->cache_ = MlaKvCache(c.n_layers, c.kv_lora_rank + c.qk_rope_dim);
  return model;
}

absl::StatusOr<std::vector<float>> Deepseek2Reference::Forward(absl::Span<const int32_t> tokens,
                                                               int64_t start_pos) {
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
  const int64_t hidden = c.hidden;
  std::vector<float> x(static_cast<size_t>(n * hidden));
  // Validates every id before the cache is touched.
  MOEFLOW_RETURN_IF_ERROR(EmbedTokens(c, weights_, tokens, x.data()));

  std::vector<float> ffn_inp(x.size()), x_norm(x.size()), routed(x.size()), shared(x.size());
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const Deepseek2LayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
    AttentionBlock(c, rope_, lw, options_.attention)
        .Forward(x.data(), n, start_pos, cache_.layers[static_cast<size_t>(il)], ffn_inp.data());
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(ffn_inp.data() + t * hidden, lw.ffn_norm.data(), hidden, c.rms_eps,
              x_norm.data() + t * hidden);
    }
    if (!c.is_moe_layer(il)) {
      DenseFfn(c, lw).Forward(x_norm.data(), n, routed.data());
      Combine(ffn_inp.data(), routed.data(), nullptr, n, hidden, x.data());
      continue;
    }
    const Router router(c, lw, options_.active_experts);
    std::vector<int32_t> ids(static_cast<size_t>(n * router.k()));
    std::vector<float> weights(ids.size());
    router.Route(x_norm.data(), n, ids.data(), weights.data());
    RoutedExperts(c, lw).Forward(x_norm.data(), n, ids.data(), weights.data(), router.k(),
                                 routed.data());
    if (c.n_shared_experts > 0) SharedExperts(c, lw).Forward(x_norm.data(), n, shared.data());
    Combine(ffn_inp.data(), routed.data(), c.n_shared_experts > 0 ? shared.data() : nullptr, n,
            hidden, x.data());
  }
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  OutputHead(c, weights_, x.data(), n, logits.data());
  return logits;
}

}  // namespace moeflow
