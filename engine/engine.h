// The single-process CPU forward pass of DeepSeek-V2/V3 (llama.cpp's
// `deepseek2`) on quantized GGUF weights.
//
// Role in the data flow: the same cut into components as the float32
// reference (reference.h) — attention block, router, routed experts, shared
// experts, dense FFN, combine, output head — but every weight matmul runs in
// kernels/cpu/matmul on the bytes of the mmapped GGUF tensors (never a float
// copy), with activations quantized to the weight type's vec_dot_type as
// llama.cpp's CPU backend does. That is what makes quantized files agree with
// llama.cpp's logits. Small F32 tensors (norms, exp_probs_b) are kept as
// floats; ffn_gate_inp goes through the F32 matmul, as in llama.cpp.
// Attention math is float32 over an F32 compressed (MLA) KV cache, in the
// absorbed layout: q_nope·attn_k_b and context·attn_v_b are per-head matmuls
// with the (quantized) 3-D tensors, as in llama.cpp's graph; the scores,
// softmax and context run in kernels/cpu/attention (AVX-512 tiles over a
// token's group of heads × its cached rows), split over (token, head group).
//
//   Open ─► Forward(prompt, 0) ─► Forward({t}, n) ─► Forward({t'}, n+1) ─► ...
//   (start_pos may go back: positions >= start_pos are recomputed)
//
// Several sequences at once (continuous batching): StartSequence /
// ForwardBatch / EndSequence over a paged KV cache (kv_pages.h) with
// block-hash prefix reuse; see the comment above StartSequence.
//
// Memory: scratch for `max_batch` tokens and a KV cache for `max_context`
// positions are allocated at Open; a larger batch or a longer sequence grows
// them once (so single-token decode steps allocate nothing, except the
// returned vector of Forward; ForwardInto writes into the caller's buffer).
//
// Thread-safety: a Deepseek2Engine is not thread-safe (it owns the KV cache,
// the scratch and a thread pool of n_threads). The component classes are
// immutable and take their scratch and pool explicitly.
// Failure: Open returns the errors of GgufFile::Open and
// Deepseek2Config::FromGguf, and InvalidArgument naming the tensor that is
// missing, mis-shaped or of a type the matmul does not support (naming the
// type), or a bad option. Forward returns InvalidArgument for bad token ids,
// positions or batch sizes, leaving the cache unchanged.
#ifndef MOEFLOW_ENGINE_ENGINE_H_
#define MOEFLOW_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/aligned_allocator.h"
#include "engine/kv_pages.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/weight_memory.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/reference.h"
#include "model/gguf.h"

namespace moeflow {

// Views of one layer's tensors in the mapped file (shapes as in
// Deepseek2LayerWeights; a 3-D tensor {cols, a, b} is a matrix of a·b rows).
struct EngineLayerWeights {
  std::vector<float> attn_norm, attn_q_a_norm, attn_kv_a_norm, ffn_norm, exp_probs_b;
  MatmulWeight attn_q, attn_q_a, attn_q_b, attn_kv_a_mqa;
  MatmulWeight attn_k_b;  // n_heads · kv_lora_rank rows of qk_nope_dim
  MatmulWeight attn_v_b;  // n_heads · v_head_dim rows of kv_lora_rank
  MatmulWeight attn_output;
  MatmulWeight ffn_gate, ffn_up, ffn_down;  // dense layers
  MatmulWeight ffn_gate_inp;                // n_experts rows of hidden
  MatmulWeight ffn_gate_exps, ffn_up_exps;  // n_experts · expert_ff rows of hidden
  MatmulWeight ffn_down_exps;               // n_experts · hidden rows of expert_ff
  MatmulWeight ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp;
};

struct EngineWeights {
  MatmulWeight token_embd;  // rows dequantized one at a time (ggml_get_rows)
  MatmulWeight output;      // token_embd when the file has no output.weight
  std::vector<float> output_norm;
  std::vector<EngineLayerWeights> layers;
  // Tensors made at load, not in the file: attn_k_b / attn_v_b of layers in
  // the older attn_kv_b layout (model/deepseek2/kv_b_layout.h). Copies of
  // these weights share them.
  std::vector<std::shared_ptr<std::vector<uint8_t>>> derived;

  // Checks every tensor `config` calls for (presence, shape, type) and maps
  // it. The views point into `file`, which must outlive them (and into
  // `derived`).
  // `progress` (may be empty) is called with (layers done, n_layers) before
  // each layer and once at the end.
  static absl::StatusOr<EngineWeights> Map(
      const GgufFile& file, const Deepseek2Config& config,
      const std::function<void(int64_t done, int64_t total)>& progress = nullptr);

  // Only what an expert worker reads: ffn_{gate,up,down}_exps of every MoE
  // layer (checked as Map checks them); every other view stays empty and
  // nothing is derived. So `file` may have been opened with reads_tensor =
  // IsRoutedExpertTensor (the shards without routed experts unmapped).
  static absl::StatusOr<EngineWeights> MapRoutedExperts(const GgufFile& file,
                                                        const Deepseek2Config& config);
};

// blk.N.ffn_{gate,up,down}_exps: the tensors MapRoutedExperts reads.
bool IsRoutedExpertTensor(const GgufTensorInfo& tensor);

// Heads per unit of attention work (one token × this many heads): the
// cached rows are read once per unit for all its heads (kernels/cpu/attention.h).
// Load-time repacking of the routed experts (kernels/cpu/matmul.h:
// PreferredLayout, WeightLayout): in every MoE layer of `layers`, each of
// ffn_{gate,up,down}_exps whose type `isa`'s kernels want in another layout
// (today: Q5_0 -> kQ5_0Pairs on AVX2, same bytes per row) is rewritten into
// it, expert by expert, for the experts `held` marks (empty: all of them;
// the others' rows are left unwritten and must never be used). With
// `in_place` the views point at this process's own writable copies and are
// rewritten where they are; otherwise each tensor gets a buffer appended to
// `storage` (untouched pages of unheld experts stay unallocated) and the
// file's pages of each expert are released as soon as it is repacked
// (`file`), so the process's resident memory does not grow. Experts are
// split over `pool` (may be null). Returns the bytes repacked. Every process
// that computes routed experts (the engine, cpu_expert_worker) repacks the
// same way, so their results stay bit-identical to one another.
int64_t RepackRoutedExperts(const Deepseek2Config& config, CpuIsa isa,
                            const std::vector<uint8_t>& held, bool in_place, const GgufFile* file,
                            std::vector<EngineLayerWeights>& layers,
                            std::vector<std::unique_ptr<uint8_t[]>>* storage, ThreadPool* pool);

// The matrices of `layer` that the forward pass multiplies: attention, dense
// FFN and shared experts (those the layer lacks are null views), then, when
// `routed_experts`, ffn_{gate,up,down}_exps.
std::vector<MatmulWeight*> LayerMatrices(EngineLayerWeights& layer, bool routed_experts);

// The same for the other matrices of every layer (attention, dense FFN,
// shared experts; today attn_k_b of Q4_K_M files, Q5_0 -> kQ5_0Pairs on
// AVX2): each one whose type `isa`'s kernels want in another layout gets a
// buffer appended to `storage`, and its file pages are released (`file`, may
// be null). token_embd and output keep the GGUF layout (token_embd's rows
// are dequantized one at a time, and output may be the same tensor).
// Every process that runs attention and the shared experts on the CPU (the
// engine, the gpu worker's CPU backend) calls it, so their results stay
// bit-identical to one another. Returns the bytes repacked.
// With `in_place` the matrices are this process's own copies
// (MoveWeightsToOwnMemory) and are rewritten where they are.
int64_t RepackLayerWeights(CpuIsa isa, bool in_place, const GgufFile* file,
                           std::vector<EngineLayerWeights>& layers,
                           std::vector<std::unique_ptr<uint8_t[]>>* storage);

// Load-time residency (kernels/cpu/weight_memory.h): copies the matrices the
// forward pass streams — every layer's attention, dense-FFN and
// shared-expert matrices, the routed experts when `routed_experts`, and the
// output head — from the file mapping into WeightBuffers (huge pages)
// appended to `buffers`, releasing the file's pages of each as it goes, so
// resident memory stays about the file's size. token_embd (one row read per
// token) stays mapped. Chunks are copied over `pool` (may be null). Keeps
// the mapping, copying nothing, when MOEFLOW_HUGEPAGES=0 or when the copy
// would take more than 80 % of the memory available now; `*note` (may be
// null) gets one line saying what was done. Returns the bytes copied, or
// RESOURCE_EXHAUSTED when memory the kernel promised cannot be had.
absl::StatusOr<int64_t> MoveWeightsToOwnMemory(const GgufFile& file, bool routed_experts,
                                               EngineWeights& weights,
                                               std::vector<WeightBuffer>* buffers, ThreadPool* pool,
                                               std::string* note);

inline constexpr int64_t kAttentionHeadGroup = 4;
// Prefill tokens per attention unit: ~64 (token, head) score rows, so that a
// block of cached rows in L2 serves that many before the next block comes.
inline int64_t AttentionBlockTokens(int64_t n_heads) { return n_heads >= 64 ? 1 : 64 / n_heads; }
// Tokens per EngineSwigluFfn chunk: 128 × the dense FFN's 10944 columns of
// gate and up is 11 MB of scratch instead of 45 MB for a 512-token prompt,
// with the weights still reused by 128 tokens per pass.
inline constexpr int64_t kSwigluTokenChunk = 128;
// Tokens per MoeForward call of the routed experts (long prompts in chunks).
inline constexpr int64_t kMoeTokenChunk = 512;
// Tokens per pass through the layers of Forward (longer prompts in chunks).
inline constexpr int64_t kPrefillTokenChunk = 512;

// Buffers of one forward pass, sized for `capacity` tokens and `kv_capacity`
// cached positions. Grows (allocates) only when asked for more.
struct EngineScratch {
  void Reserve(const Deepseek2Config& config, int64_t k, int n_threads, int64_t tokens,
               int64_t kv_positions);

  int64_t capacity = 0;
  int64_t kv_capacity = 0;
  std::vector<float> x, ffn_inp, x_norm, routed, shared, logits_norm;
  // Attention.
  std::vector<float> q, q_a, kv_a, heads_out, attn_out;
  // Streamed by the attention kernels with full-width loads: cache-line aligned.
  CacheAlignedVector<float> q_abs, ctx;
  std::vector<float> rope_angles;  // Deepseek2RopeParams::Angles of one position
  // Per thread: scores of one head group (kAttentionHeadGroup × kv_capacity)
  // and the row pointers of one token's cached positions (kv_capacity).
  std::vector<std::vector<float>> scores;
  std::vector<std::vector<const float*>> kv_rows;
  // The units of one attention pass (engine.cc), kept to reuse their memory.
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
  // Quantized activations.
  std::vector<uint8_t> act, act_up, act_heads;
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
  void Forward(const float* x, int64_t n_tokens, int64_t start_pos, MlaLayerCache& cache,
               float* out) const;
  // The same over a batch of several sequences: the projections run once
  // over all n_tokens rows, attention per token over its own segment's rows.
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

struct Deepseek2EngineOptions {
  // Routed experts used per token (K ≤ expert_used_count); 0 = the model's.
  int64_t active_experts = 0;
  // Threads of the engine's pool, the calling thread included.
  int n_threads = 1;
  // Scratch and KV cache allocated at Open (grown on demand beyond).
  int64_t max_batch = 512;
  int64_t max_context = 4096;
  // Paged KV cache of the batched API (StartSequence / ForwardBatch): a
  // budget of kv_pool_tokens positions (rounded up to whole pages) over all
  // sequences, in pages of kv_page_tokens positions. 0: no pool (the batched
  // API answers FailedPrecondition). With a pool, the single-sequence cache
  // is allocated on first use instead of at Open.
  int64_t kv_pool_tokens = 0;
  int64_t kv_page_tokens = 16;
  // Called from Open's thread as loading advances, (done, total) in layers
  // (at least once per layer and once with done == total); may be empty.
  std::function<void(int64_t done, int64_t total)> progress;
};

class Deepseek2Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Deepseek2Engine>> Open(
      const std::string& gguf_path, const Deepseek2EngineOptions& options = {});

  const Deepseek2Config& config() const { return config_; }
  // Where the weights live: one line from MoveWeightsToOwnMemory.
  const std::string& weight_memory() const { return weight_memory_; }
  CpuIsa isa() const { return ctx_.isa; }

  // Deepseek2Reference::Forward's contract: logits of every position,
  // [tokens.size() × vocab].
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> tokens, int64_t start_pos);

  // As Forward, into `logits`: [tokens.size() × vocab], or [vocab] for the
  // last position only when `last_only` (what generation needs). Prompts
  // longer than kPrefillTokenChunk pass through the layers in chunks.
  absl::Status ForwardInto(absl::Span<const int32_t> tokens, int64_t start_pos, bool last_only,
                           absl::Span<float> logits);

  int64_t cached_tokens() const { return cache_.n_tokens(); }
  void ResetCache() { cache_.Truncate(0); }

  // ---- Several sequences over the paged KV cache (independent of the
  // single-sequence cache above).
  //
  //   StartSequence ─► ForwardBatch({seq, chunk, n}) ... ─► EndSequence
  //
  // StartSequence takes the pages for `reserve_tokens` positions (≥ the
  // prompt, ≤ context_length); ReserveSequence grows that later, as
  // decoding goes on. The longest run of whole blocks at the start of
  // `prompt` that the pool has published (found by the hash of the block's
  // tokens chained with the previous blocks', then verified token by token:
  // see kv_pages.h) is shared instead of allocated — never the block
  // holding the prompt's last token, whose logits the caller needs. The
  // sequence then holds `cached_tokens` positions; its first ForwardBatch
  // starts there.
  // Errors: FailedPrecondition without a pool; InvalidArgument for an empty
  // prompt, reserve_tokens < prompt size, > context_length or more pages than
  // the whole pool; ResourceExhausted when the pages are not available now
  // (retry after others end). Nothing changes on error.
  struct SequenceStart {
    int64_t sequence = -1;
    int64_t cached_tokens = 0;
  };
  absl::StatusOr<SequenceStart> StartSequence(absl::Span<const int32_t> prompt,
                                              int64_t reserve_tokens);
  // Grows the sequence's page table to cover `reserve_tokens` positions
  // (no-op when it already does). InvalidArgument beyond context_length or
  // the whole pool; ResourceExhausted (nothing changes) when the pages are
  // not available now; NotFound for an unknown id.
  absl::Status ReserveSequence(int64_t sequence, int64_t reserve_tokens);
  // Releases the sequence's pages (published ones stay cached for reuse).
  // NotFound for an unknown id.
  absl::Status EndSequence(int64_t sequence);
  // Positions a started sequence holds; -1 for an unknown id.
  int64_t SequenceTokens(int64_t sequence) const;

  // One forward pass over several sequences: each entry appends `tokens` at
  // positions start_pos.. of its sequence (start_pos must equal the
  // positions it holds). Embeddings, router, experts, FFNs and the output
  // head run once over all the batch's tokens; attention per sequence.
  // Writes the last position's logits of entry i to logits[i·vocab ...].
  // InvalidArgument (nothing changes) for an unknown or repeated sequence,
  // empty tokens, a wrong start_pos, positions past the reservation or the
  // context, bad token ids or a logits buffer of the wrong size.
  struct BatchEntry {
    int64_t sequence = -1;
    absl::Span<const int32_t> tokens;
    int64_t start_pos = 0;
  };
  absl::Status ForwardBatch(absl::Span<const BatchEntry> entries, absl::Span<float> logits);

  // The pool (null without one): page size, pages used / cached / total.
  const KvPagePool* kv_pages() const { return kv_pool_ ? kv_pool_.get() : nullptr; }
  // For tests (e.g. KvPagePool::set_hash_for_testing); null without a pool.
  KvPagePool* mutable_kv_pages_for_testing() { return kv_pool_ ? kv_pool_.get() : nullptr; }

 private:
  // One pass through the layers (ForwardInto's chunks); empty `logits`: no
  // output head (a chunk before the last one of a last_only call).
  absl::Status ForwardChunk(absl::Span<const int32_t> tokens, int64_t start_pos, bool last_only,
                            absl::Span<float> logits);
  Deepseek2Engine() = default;
  // ffn_norm and the layer's FFN (dense, or router + routed + shared
  // experts) on scratch_.ffn_inp [n × hidden], written to scratch_.x.
  void LayerFfn(int64_t il, int64_t n);

  struct Sequence {
    std::vector<int32_t> pages;    // page table (StartSequence, ReserveSequence)
    std::vector<int32_t> tokens;   // every position's token
    int64_t published_blocks = 0;  // leading blocks whose hash is known
    uint64_t last_hash = 0;        // hash of block published_blocks - 1
    uint64_t last_serial = 0;      // serial naming blocks 0..published_blocks-1
    bool publishing = true;        // false after a hash collision broke the chain
  };

  Deepseek2EngineOptions options_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  Deepseek2RopeParams rope_;
  EngineWeights weights_;
  std::vector<WeightBuffer> resident_;                // MoveWeightsToOwnMemory's buffers
  std::string weight_memory_;                         // its note
  std::vector<std::unique_ptr<uint8_t[]>> repacked_;  // Repack{RoutedExperts,LayerWeights} buffers
  std::unique_ptr<ThreadPool> pool_;
  EngineScratch scratch_;
  EngineContext ctx_;
  int64_t k_ = 0;
  MlaKvCache cache_;
  std::unique_ptr<KvPagePool> kv_pool_;
  std::map<int64_t, Sequence> sequences_;
  int64_t next_sequence_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_ENGINE_H_
