#include <algorithm>
#include <limits>
#include <vector>

#include "base/check.h"
#include "engine/layer_step.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

// Upper bound of activation bytes per element over every vec_dot_type (F32).
constexpr int64_t kMaxActBytesPerElement = 4;

template <typename Vector>
void GrowTo(Vector& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

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
  GrowTo(x_norm, n * c.hidden);
  GrowTo(logits_norm, n * c.hidden);
  GrowTo(q, n * h * c.qk_head_dim());
  GrowTo(q_a, n * c.q_lora_rank);
  GrowTo(kv_a, n * row_dim);
  GrowTo(q_abs, n * h * row_dim);
  GrowTo(ctx, n * h * c.kv_lora_rank);
  GrowTo(heads_out, n * h * c.v_head_dim);
  GrowTo(attn_out, n * c.hidden);
  if (static_cast<int>(scores.size()) < n_threads) scores.resize(static_cast<size_t>(n_threads));
  const int64_t score_rows = std::max(h, AttentionBlockTokens(h) * h);
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
  // group of DecodeHeadGroup heads) so that one sequence's heads still
  // spread over the threads. A (token, head) result is the same bit for bit
  // either way, and does not depend on the group, the thread or the other
  // tokens. Units are dealt from the last ones back so that the dynamically
  // claimed chunks shrink toward the short prefixes.
  float* ctx = s.ctx.data();  // [t][h][kv_lora]
  int64_t n_decode = 0;
  for (const AttentionSegment& seg : segments) n_decode += seg.n == 1 ? 1 : 0;
  const int64_t group = DecodeHeadGroup(n_heads, n_decode, pool->size());
  const int64_t n_groups = (n_heads + group - 1) / group;
  const int64_t block_tokens = AttentionBlockTokens(n_heads);
  using Unit = EngineScratch::AttentionUnit;
  std::vector<Unit>& units = s.attention_units;
  units.clear();
  for (const AttentionSegment& seg : segments) {
    if (seg.n == 1) {
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t h0 = g * group;
        units.push_back({seg.first, 1, h0, std::min(group, n_heads - h0)});
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
      // Token i's heads at q + (i · n_heads + h) · row_dim: all heads of the
      // token, so the per-token strides are n_heads rows.
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

}  // namespace moeflow
