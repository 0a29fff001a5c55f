// The fused routed-expert (MoE) operator of one layer on the CPU: for a batch
// of tokens with their top-k expert ids and weights,
//
//   out[t] = Σ_j w[t, j] · down_e(SiLU(gate_e(x[t])) ⊙ up_e(x[t])),  e = ids[t, j]
//
// with the experts' weights kept in their ggml blocks (kernels/cpu/matmul).
//
// Role in the data flow: engine/engine.cc's EngineRoutedExperts
// calls MoeForward once per MoE layer (prefill and decode); a CPU expert
// worker can call it on its shard of experts. Steps, each one parallel loop
// over `pool` (dynamic chunks, so experts with many tokens do not leave a
// thread idle):
//   1. quantize x once per activation type, group the (token, slot) pairs by
//      expert (counting sort: each expert's tokens stay in token order) and
//      gather each expert's activation rows contiguously;
//   2. gate and up fused: each work unit is (expert, block of ff rows); it
//      runs the gate rows and then the up rows over the same activation rows
//      (still in cache) and writes SiLU(gate) · up for its block;
//   3. the SiLU·up rows are quantized for down;
//   4. down: units of (expert, block of hidden rows);
//   5. weighted sum per token, in slot order j (llama.cpp's chain of adds).
// GEMV vs GEMM is chosen per expert by its token count: MatmulQuantized runs
// the prefetching R-row × 1-token GEMV tiles for ≤ 2 tokens and the
// register-blocked GEMM tiles above (kernels/cpu/matmul_simd.inc); the work
// units are smaller when the whole batch has few pairs (decode), so that
// both threads get several.
//
// Results: every (row, token) product is computed exactly as
// MatmulQuantized computes it for that token alone, SiLU and the
// quantization of each row are per row, and the final sum is in j order, so
// MoeForward's output is bit-identical to evaluating the formula above pair
// by pair with MatmulQuantized (what tests/kernels/cpu/moe_test.cc checks),
// for any thread count and any ISA.
//
// Memory: no allocation per call once MoeScratch::Reserve has seen the
// largest batch (MoeForward reserves, growing only when a batch is larger).
// Thread-safety: MoeForward may run concurrently only with distinct scratch
// and pools. Failure: bad ids, shapes or types are programmer errors (CHECK);
// callers validate the model at load time (MatmulSupports, shapes).
#ifndef MOEFLOW_KERNELS_CPU_MOE_H_
#define MOEFLOW_KERNELS_CPU_MOE_H_

#include <cstdint>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace moeflow {

// The routed experts of one layer as ggml's stacked 3-D tensors.
struct MoeExperts {
  MatmulWeight gate;  // n_experts · ff rows of `hidden` columns
  MatmulWeight up;    // n_experts · ff rows of `hidden` columns
  MatmulWeight down;  // n_experts · hidden rows of `ff` columns
  int64_t n_experts = 0;
  int64_t ff = 0;
  int64_t hidden = 0;
};

// Buffers of MoeForward for up to `tokens` tokens × `k` slots and
// `n_threads` threads. Reserve allocates only when asked for more than it
// holds; the buffers are reused by every call.
class MoeScratch {
 public:
  void Reserve(const MoeExperts& experts, int64_t tokens, int64_t k, int n_threads);
  // Bytes held (for memory accounting).
  int64_t bytes() const;

 private:
  friend void MoeForward(const MoeExperts&, const float*, int64_t, const int32_t*, const float*,
                         int64_t, float*, MoeScratch&, CpuIsa, ThreadPool*);
  int64_t pairs_ = 0;  // tokens · k reserved for
  int64_t tokens_ = 0;
  int64_t experts_ = 0;
  int threads_ = 0;
  std::vector<int32_t> count_, start_, order_, position_, active_;
  std::vector<uint8_t> act_gate_, act_up_;          // [tokens] rows, token order
  std::vector<uint8_t> sorted_gate_, sorted_up_;    // [pairs] rows, expert order
  std::vector<float> hidden_act_;                   // [pairs × ff] SiLU(gate)·up
  std::vector<uint8_t> act_down_;                   // [pairs] quantized hidden_act_
  std::vector<float> expert_out_;                   // [pairs × hidden], expert order
  std::vector<std::vector<float>> thread_gate_up_;  // per thread: 2 · tokens · unit rows
};

// out[t · hidden + i] for t < n_tokens (the formula above). x: n_tokens rows
// of `hidden` floats; expert_ids / expert_weights: [n_tokens × k], ids in
// [0, n_experts). `pool` may be null (the calling thread alone).
void MoeForward(const MoeExperts& experts, const float* x, int64_t n_tokens,
                const int32_t* expert_ids, const float* expert_weights, int64_t k, float* out,
                MoeScratch& scratch, CpuIsa isa, ThreadPool* pool);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_MOE_H_
