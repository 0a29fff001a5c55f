#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/layer_step.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

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

}  // namespace moeflow
