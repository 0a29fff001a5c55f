#include "kernels/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/check.h"

namespace moeflow {
namespace {

// Rows of gate/up (and of down) per work unit: a multiple of every tile
// height (4 rows), large enough that a unit's call overhead is small, small
// enough that a decode step (6 experts) gives each thread many units.
constexpr int64_t kUnitRowsGemm = 64;
constexpr int64_t kUnitRowsGemv = 32;
// Batches with at most this many (token, slot) pairs use the small units.
constexpr int64_t kGemvPairs = 16;
// Row-wise steps (quantize, gather, sum) on fewer rows run inline.
constexpr int64_t kMinParallelRows = 16;

// As the engine's SwiGLU (and llama.cpp's ggml_silu): x / (1 + e^-x).
inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

template <typename T>
void GrowTo(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Runs fn over [0, n) on `pool`, or inline on the calling thread when there
// is no pool or the work is a few rows (a decode step's quantization, gather
// and sum: waking the workers would cost more than the work).
template <typename Fn>
void ParallelOrInline(ThreadPool* pool, int64_t n, const Fn& fn, int64_t min_parallel = 1) {
  if (pool == nullptr || n < min_parallel) {
    if (n > 0) fn(int64_t{0}, n, 0);
  } else {
    pool->ParallelFor(n, fn);
  }
}

}  // namespace

void MoeScratch::Reserve(const MoeExperts& e, int64_t tokens, int64_t k, int n_threads) {
  const int64_t pairs = tokens * k;
  if (pairs <= pairs_ && tokens <= tokens_ && e.n_experts <= experts_ && n_threads <= threads_) {
    return;
  }
  pairs_ = std::max(pairs_, pairs);
  tokens_ = std::max(tokens_, tokens);
  experts_ = std::max(experts_, e.n_experts);
  threads_ = std::max(threads_, n_threads);
  const int64_t gate_bytes = ActivationRowBytes(e.gate.type, e.hidden);
  const int64_t up_bytes = ActivationRowBytes(e.up.type, e.hidden);
  const int64_t down_bytes = ActivationRowBytes(e.down.type, e.ff);
  GrowTo(count_, experts_);
  GrowTo(start_, experts_ + 1);
  GrowTo(active_, experts_);
  GrowTo(order_, pairs_);
  GrowTo(position_, pairs_);
  GrowTo(act_gate_, tokens_ * gate_bytes);
  GrowTo(act_up_, tokens_ * up_bytes);
  GrowTo(sorted_gate_, pairs_ * gate_bytes);
  GrowTo(sorted_up_, pairs_ * up_bytes);
  GrowTo(hidden_act_, pairs_ * e.ff);
  GrowTo(act_down_, pairs_ * down_bytes);
  GrowTo(expert_out_, pairs_ * e.hidden);
  if (static_cast<int>(thread_gate_up_.size()) < threads_) {
    thread_gate_up_.resize(static_cast<size_t>(threads_));
  }
  // An expert has at most `pairs` tokens (ids of a token are distinct in a
  // router's top-k, but nothing here relies on it).
  for (std::vector<float>& t : thread_gate_up_) GrowTo(t, 2 * pairs_ * kUnitRowsGemm);
}

int64_t MoeScratch::bytes() const {
  int64_t b = 0;
  b += static_cast<int64_t>(
      (count_.size() + start_.size() + order_.size() + position_.size() + active_.size()) *
      sizeof(int32_t));
  b += static_cast<int64_t>(act_gate_.size() + act_up_.size() + sorted_gate_.size() +
                            sorted_up_.size() + act_down_.size());
  b += static_cast<int64_t>((hidden_act_.size() + expert_out_.size()) * sizeof(float));
  for (const std::vector<float>& t : thread_gate_up_) {
    b += static_cast<int64_t>(t.size() * sizeof(float));
  }
  return b;
}

void MoeForward(const MoeExperts& e, const float* x, int64_t n, const int32_t* expert_ids,
                const float* expert_weights, int64_t k, float* out, MoeScratch& s, CpuIsa isa,
                ThreadPool* pool) {
  MOEFLOW_CHECK(n >= 1 && k >= 1);
  MOEFLOW_CHECK(e.gate.cols == e.hidden && e.up.cols == e.hidden && e.down.cols == e.ff);
  MOEFLOW_CHECK(e.gate.rows == e.n_experts * e.ff && e.up.rows == e.n_experts * e.ff &&
                e.down.rows == e.n_experts * e.hidden);
  s.Reserve(e, n, k, pool == nullptr ? 1 : pool->size());
  const int64_t hidden = e.hidden, ff = e.ff, pairs = n * k;

  // 1. Group the pairs p = t·k + j by expert (counting sort).
  int32_t* count = s.count_.data();
  int32_t* start = s.start_.data();
  int32_t* order = s.order_.data();
  int32_t* position = s.position_.data();
  std::fill(count, count + e.n_experts, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    MOEFLOW_CHECK(expert_ids[p] >= 0 && expert_ids[p] < e.n_experts);
    ++count[expert_ids[p]];
  }
  start[0] = 0;
  int64_t n_active = 0;
  for (int64_t ex = 0; ex < e.n_experts; ++ex) {
    start[ex + 1] = start[ex] + count[ex];
    if (count[ex] > 0) s.active_[static_cast<size_t>(n_active++)] = static_cast<int32_t>(ex);
  }
  std::fill(count, count + e.n_experts, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t ex = expert_ids[p];
    const int32_t i = start[ex] + count[ex]++;
    order[i] = static_cast<int32_t>(p);
    position[p] = i;
  }

  // Activations of x: quantized once per token (per activation type), then
  // gathered into expert order.
  const bool same_act = ActivationType(e.gate.type) == ActivationType(e.up.type);
  const int64_t gate_bytes = ActivationRowBytes(e.gate.type, hidden);
  const int64_t up_bytes = ActivationRowBytes(e.up.type, hidden);
  uint8_t* act_gate = s.act_gate_.data();
  uint8_t* act_up = same_act ? act_gate : s.act_up_.data();
  uint8_t* sorted_gate = s.sorted_gate_.data();
  uint8_t* sorted_up = same_act ? sorted_gate : s.sorted_up_.data();
  ParallelOrInline(
      pool, n,
      [&](int64_t t0, int64_t t1, int) {
        QuantizeActivations(e.gate.type, x + t0 * hidden, t1 - t0, hidden, hidden,
                            act_gate + t0 * gate_bytes);
        if (!same_act) {
          QuantizeActivations(e.up.type, x + t0 * hidden, t1 - t0, hidden, hidden,
                              act_up + t0 * up_bytes);
        }
      },
      kMinParallelRows);
  ParallelOrInline(
      pool, pairs,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = order[i] / k;
          std::memcpy(sorted_gate + i * gate_bytes, act_gate + t * gate_bytes,
                      static_cast<size_t>(gate_bytes));
          if (!same_act) {
            std::memcpy(sorted_up + i * up_bytes, act_up + t * up_bytes,
                        static_cast<size_t>(up_bytes));
          }
        }
      },
      kMinParallelRows);

  // 2. Gate and up fused per (expert, block of rows), SiLU(gate)·up stored.
  const int64_t unit_rows = pairs <= kGemvPairs ? kUnitRowsGemv : kUnitRowsGemm;
  float* h = s.hidden_act_.data();
  const int64_t ff_units = (ff + unit_rows - 1) / unit_rows;
  ParallelOrInline(pool, n_active * ff_units, [&](int64_t u0, int64_t u1, int thread) {
    float* g = s.thread_gate_up_[static_cast<size_t>(thread)].data();
    for (int64_t u = u0; u < u1; ++u) {
      const int32_t ex = s.active_[static_cast<size_t>(u / ff_units)];
      const int64_t r0 = (u % ff_units) * unit_rows;
      const int64_t nr = std::min(unit_rows, ff - r0);
      const int64_t m = count[ex];
      float* up = g + m * nr;
      MatmulQuantized(e.gate.Slice(ex * ff + r0, nr), sorted_gate + start[ex] * gate_bytes, m, g,
                      nr, isa, nullptr);
      MatmulQuantized(e.up.Slice(ex * ff + r0, nr), sorted_up + start[ex] * up_bytes, m, up, nr,
                      isa, nullptr);
      for (int64_t i = 0; i < m; ++i) {
        float* hr = h + (start[ex] + i) * ff + r0;
        for (int64_t c = 0; c < nr; ++c) hr[c] = Silu(g[i * nr + c]) * up[i * nr + c];
      }
    }
  });

  // 3. Quantize the rows of SiLU·up for down.
  const int64_t down_bytes = ActivationRowBytes(e.down.type, ff);
  uint8_t* act_down = s.act_down_.data();
  ParallelOrInline(
      pool, pairs,
      [&](int64_t i0, int64_t i1, int) {
        QuantizeActivations(e.down.type, h + i0 * ff, i1 - i0, ff, ff, act_down + i0 * down_bytes);
      },
      kMinParallelRows);

  // 4. Down per (expert, block of hidden rows).
  float* y = s.expert_out_.data();
  const int64_t hidden_units = (hidden + unit_rows - 1) / unit_rows;
  ParallelOrInline(pool, n_active * hidden_units, [&](int64_t u0, int64_t u1, int) {
    for (int64_t u = u0; u < u1; ++u) {
      const int32_t ex = s.active_[static_cast<size_t>(u / hidden_units)];
      const int64_t r0 = (u % hidden_units) * unit_rows;
      const int64_t nr = std::min(unit_rows, hidden - r0);
      MatmulQuantized(e.down.Slice(ex * hidden + r0, nr), act_down + start[ex] * down_bytes,
                      count[ex], y + start[ex] * hidden + r0, hidden, isa, nullptr);
    }
  });

  // 5. out[t] = Σ_j w[t, j] · y[t, j], in j order.
  ParallelOrInline(
      pool, n,
      [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) {
          float* o = out + t * hidden;
          std::fill(o, o + hidden, 0.f);
          for (int64_t j = 0; j < k; ++j) {
            const float w = expert_weights[t * k + j];
            const float* yr = y + static_cast<int64_t>(position[t * k + j]) * hidden;
            for (int64_t i = 0; i < hidden; ++i) o[i] += yr[i] * w;
          }
        }
      },
      kMinParallelRows);
}

}  // namespace moeflow
