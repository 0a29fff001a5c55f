// The weights of the layer-step engine: views of a DeepSeek-V2/V3 GGUF's
// tensors as the quantized matmuls take them (kernels/cpu/matmul.h), and the
// load-time steps every process that computes with them takes the same way
// — huge-page residency, repacking into the layout this CPU's kernels want —
// so that every topology's results stay bit-identical.
//
// Role in the data flow: the attention worker (gpu_worker/cpu_backend.h)
// maps everything but the routed experts, the expert worker
// (cpu_expert_worker/expert_shard.h) the routed experts it holds.
// Thread-safety: the views are immutable after load. Failure: Map returns
// InvalidArgument naming the tensor that is missing, mis-shaped or of a type
// the matmul does not support; MoveWeightsToOwnMemory RESOURCE_EXHAUSTED.
#ifndef MOEFLOW_ENGINE_ENGINE_WEIGHTS_H_
#define MOEFLOW_ENGINE_ENGINE_WEIGHTS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/weight_memory.h"
#include "model/deepseek2/config.h"
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
// be null), and so does the output head unless it is token_embd (tied
// embeddings: token_embd's rows are dequantized one at a time and keep the
// GGUF layout).
// Every process that runs attention and the shared experts on the CPU (the
// engine, the gpu worker's CPU backend) calls it, so their results stay
// bit-identical to one another. Returns the bytes repacked.
// With `in_place` the matrices are this process's own copies
// (MoveWeightsToOwnMemory) and are rewritten where they are.
int64_t RepackLayerWeights(CpuIsa isa, bool in_place, const GgufFile* file, EngineWeights& weights,
                           std::vector<std::unique_ptr<uint8_t[]>>* storage);

// Load-time residency (kernels/cpu/weight_memory.h): copies the matrices the
// forward pass streams — every layer's attention, dense-FFN and
// shared-expert matrices, the routed experts when `routed_experts`, and the
// output head — from the file mapping into one WeightBuffer (huge pages,
// each matrix at a 4 KiB boundary in it) appended to `buffers`, releasing
// the file's pages of each as it goes, so resident memory stays about the
// file's size. token_embd (one row read per token) stays mapped. Chunks are
// copied over `pool` (may be null). Keeps
// the mapping, copying nothing, when MOEFLOW_HUGEPAGES=0 or when the copy
// would take more than 80 % of the memory available now; `*note` (may be
// null) gets one line saying what was done. Returns the bytes copied, or
// RESOURCE_EXHAUSTED when memory the kernel promised cannot be had.
absl::StatusOr<int64_t> MoveWeightsToOwnMemory(const GgufFile& file, bool routed_experts,
                                               EngineWeights& weights,
                                               std::vector<WeightBuffer>* buffers, ThreadPool* pool,
                                               std::string* note);

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_ENGINE_WEIGHTS_H_
