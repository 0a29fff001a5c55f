// The components of one DeepSeek-V2/V3 layer step on quantized weights (the
// layer-step engine): attention block over a paged MLA KV cache, router,
// routed experts, SwiGLU FFN (shared experts, dense layers), output head.
//
// Role in the data flow: the same cut as the float32 reference
// (model/deepseek2/reference.h), but every weight matmul runs in
// kernels/cpu/matmul on the GGUF's blocks, with activations quantized to the
// weight type's vec_dot_type as llama.cpp's CPU backend does — what makes
// quantized files agree with llama.cpp's logits. Attention is float32 over
// an F32 compressed (MLA) KV cache in the absorbed layout: q_nope·attn_k_b
// and context·attn_v_b are per-head matmuls with the (quantized) 3-D
// tensors, as in llama.cpp's graph; the scores, softmax and context run in
// kernels/cpu/attention (AVX-512 tiles over a group of heads × the cached
// rows), split over blocks of prefill tokens × all heads and, in decode,
// (token, head group). The attention worker
// (gpu_worker/cpu_backend.h) runs the attention block, router, shared
// experts, dense FFNs and output head; the expert worker
// (cpu_expert_worker/expert_shard.h) the routed experts. Every component
// computes each row of a batch from that row alone (the matmul kernels do),
// so a sequence's results do not depend on what else is in the batch.
//
// Thread-safety: the components are immutable and take their scratch and
// pool explicitly (EngineContext); one caller per scratch. Failure: misuse
// (sizes past the scratch) is a CHECK failure; inputs are validated by the
// workers before they get here.
#ifndef MOEFLOW_ENGINE_LAYER_STEP_H_
#define MOEFLOW_ENGINE_LAYER_STEP_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "base/aligned_allocator.h"
#include "engine/engine_weights.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe.h"
#include "kernels/cpu/thread_pool.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/reference.h"

namespace moeflow {

// Heads per unit of decode attention work (one token × this many heads):
// the cached rows are read once per unit for all its heads
// (kernels/cpu/attention.h), so the group is as large as keeps every thread
// busy: doubled from 4 while the step's single-token segments still give
// `n_threads` units (v2-lite's 16 heads, one sequence, 2 threads: 8). A
// head's result does not depend on its group.
inline constexpr int64_t kAttentionHeadGroup = 4;
inline int64_t DecodeHeadGroup(int64_t n_heads, int64_t n_decode_tokens, int64_t n_threads) {
  int64_t g = kAttentionHeadGroup;
  while (2 * g <= n_heads && n_decode_tokens * (n_heads / (2 * g)) >= n_threads) g *= 2;
  return g;
}
// Prefill tokens per attention unit: ~64 (token, head) score rows, so that a
// block of cached rows in L2 serves that many before the next block comes.
inline int64_t AttentionBlockTokens(int64_t n_heads) { return n_heads >= 64 ? 1 : 64 / n_heads; }
// Tokens per EngineSwigluFfn chunk: 128 × the dense FFN's 10944 columns of
// gate and up is 11 MB of scratch instead of 45 MB for a 512-token prompt,
// with the weights still reused by 128 tokens per pass.
inline constexpr int64_t kSwigluTokenChunk = 128;
// Tokens per MoeForward call of the routed experts (long prompts in chunks).
inline constexpr int64_t kMoeTokenChunk = 512;
// Tokens of one step through the layers on the single-process topology
// (LocalTopology caps its max_batch_tokens there; longer prompts go in steps
// of at most this many, as llama.cpp's 512-token micro-batches).
inline constexpr int64_t kPrefillTokenChunk = 512;

// Buffers of one forward pass, sized for `capacity` tokens and `kv_capacity`
// cached positions. Grows (allocates) only when asked for more.
struct EngineScratch {
  void Reserve(const Deepseek2Config& config, int64_t k, int n_threads, int64_t tokens,
               int64_t kv_positions);

  int64_t capacity = 0;
  int64_t kv_capacity = 0;
  // (The residual stream, x / ffn_inp / routed / shared, is the callers'.)
  std::vector<float> x_norm, logits_norm;
  // Attention.
  std::vector<float> q, q_a, kv_a, heads_out, attn_out;
  // Streamed by the attention kernels with full-width loads: cache-line aligned.
  CacheAlignedVector<float> q_abs, ctx;
  std::vector<float> rope_angles;  // Deepseek2RopeParams::Angles of one position
  // Per thread: scores of one attention unit (max(n_heads,
  // AttentionBlockTokens × heads) rows × kv_capacity) and the row pointers
  // of one segment's cached positions (kv_capacity).
  std::vector<std::vector<float>> scores;
  std::vector<std::vector<const float*>> kv_rows;
  // The units of one attention pass (attention_block.cc), kept to reuse
  // their memory: tokens [t, t + count), heads [h0, h0 + n_heads).
  struct AttentionUnit {
    int64_t t, count, h0, n_heads;
  };
  std::vector<AttentionUnit> attention_units;
  // FFNs.
  std::vector<float> gate, up;
  // Router.
  std::vector<float> router_logits, probs, selection, group_score;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
  std::vector<uint8_t> group_keep, chosen;
  // Quantized activations: sized for F32 activations (4 bytes an element),
  // the quantized types take ~1.1, so most of their pages are never written
  // and stay out of RSS (ScratchVector; each matmul writes what it reads).
  ScratchVector<uint8_t> act, act_up, act_heads;
  // The routed experts' operator (kernels/cpu/moe.h), reserved at the first
  // MoE layer of the largest batch.
  MoeScratch moe;
};

// Everything a component needs besides its weights.
struct EngineContext {
  const Deepseek2Config* config = nullptr;
  const Deepseek2RopeParams* rope = nullptr;
  CpuIsa isa = CpuIsa::kScalar;
  ThreadPool* pool = nullptr;
  EngineScratch* scratch = nullptr;
};

// Where one sequence's compressed-KV rows of one layer live: position p is
// the row_dim floats at base + pages[p / page_tokens] · page_stride +
// (p % page_tokens) · row_dim. A contiguous MlaLayerCache is the one-page
// case; KvPagePool pages are the paged one.
struct MlaKvView {
  float* base = nullptr;
  const int32_t* pages = nullptr;
  int64_t page_tokens = 0;
  int64_t page_stride = 0;
  int64_t row_dim = 0;
  float* row(int64_t pos) const {
    return base + pages[pos / page_tokens] * page_stride + (pos % page_tokens) * row_dim;
  }
};

// One sequence's part of a batch: tokens [first, first + n) of the batch are
// its positions start_pos.. (its cache must hold positions < start_pos and
// room up to start_pos + n).
struct AttentionSegment {
  int64_t first = 0;
  int64_t n = 0;
  int64_t start_pos = 0;
  MlaKvView kv;
};

// attn_norm → MLA attention → attn_output → + residual (AttentionBlock's
// contract): x [n × hidden] at positions start_pos.., out = x + attn(x).
class EngineAttentionBlock {
 public:
  EngineAttentionBlock(const EngineContext& ctx, const EngineLayerWeights& w) : ctx_(ctx), w_(w) {}
  // Over a batch of several sequences: the projections run once over all
  // n_tokens rows, attention per token over its own segment's rows.
  // `segments` cover [0, n_tokens) in order. Each token's result equals what
  // Forward gives for it in a batch of its sequence alone, as far as the
  // matmul kernels give a row the same result whatever the other rows.
  void ForwardSegments(const float* x, int64_t n_tokens,
                       absl::Span<const AttentionSegment> segments, float* out) const;

 private:
  const EngineContext& ctx_;
  const EngineLayerWeights& w_;
};

// Router's contract: expert ids and weights per token, [n × k].
class EngineRouter {
 public:
  EngineRouter(const EngineContext& ctx, const EngineLayerWeights& w, int64_t k)
      : ctx_(ctx), w_(w), k_(k) {}
  int64_t k() const { return k_; }
  void Route(const float* x_norm, int64_t n_tokens, int32_t* expert_ids,
             float* expert_weights) const;

 private:
  const EngineContext& ctx_;
  const EngineLayerWeights& w_;
  int64_t k_;
};

// RoutedExperts' contract, computed by the fused MoE operator
// (kernels/cpu/moe.h): the batch's (token, expert) pairs are grouped by
// expert, each expert's gate+up (fused) and down run once over its tokens,
// outputs are summed per token in j order, weighted.
class EngineRoutedExperts {
 public:
  EngineRoutedExperts(const EngineContext& ctx, const EngineLayerWeights& w) : ctx_(ctx), w_(w) {}
  void Forward(const float* x_norm, int64_t n_tokens, const int32_t* expert_ids,
               const float* expert_weights, int64_t k, float* out) const;

 private:
  const EngineContext& ctx_;
  const EngineLayerWeights& w_;
};

// A SwiGLU FFN over the whole batch: the shared experts or a dense layer's FFN.
class EngineSwigluFfn {
 public:
  EngineSwigluFfn(const EngineContext& ctx, const MatmulWeight& gate, const MatmulWeight& up,
                  const MatmulWeight& down)
      : ctx_(ctx), gate_(gate), up_(up), down_(down) {}
  // In chunks of kSwigluTokenChunk tokens, so that the gate/up scratch of
  // a long prompt stays small (a (row, token) result does not depend on the
  // chunk).
  void Forward(const float* x_norm, int64_t n_tokens, float* out) const;

 private:
  void ForwardChunk(const float* x_norm, int64_t n_tokens, float* out) const;

  const EngineContext& ctx_;
  const MatmulWeight& gate_;
  const MatmulWeight& up_;
  const MatmulWeight& down_;
};

// output_norm then output: x [n × hidden] → logits [n × vocab].
void EngineOutputHead(const EngineContext& ctx, const EngineWeights& w, const float* x,
                      int64_t n_tokens, float* logits);

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_LAYER_STEP_H_
