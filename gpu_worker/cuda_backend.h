// gpu_worker's CUDA backend: the same requests as the CPU backend
// (cpu_backend.h: kEmbed / kLayer / kOutput, dataflow/wire.h)
// computed on one CUDA device with the kernels of kernels/cuda:
//
//   kLayer: x ─► rms_norm ─► q (q_a ─► rms_norm ─► q_b, or attn_q)
//                        └─► kv_a ─► [rms_norm(kv_cmpr), rope(k_pe)] ─► paged bf16 cache
//           q_abs[h] = [attn_k_b[h] · q_nope[h], rope(q_pe[h])]   (head-batched GEMM)
//           ctx = MLA prefill kernel over the cache (any chunk size, decode = 1 token)
//           attn_output(attn_v_b[h] · ctx[h]) + x = ffn_inp ─► rms_norm ─► x_norm
//           dense: down(silu(gate) · up) + ffn_inp
//           MoE: router (f32 GEMM + top-k) on part 0, shared experts on part 1
//   step start: rows of token_embd dequantized on the host, uploaded with
//   the step's positions, KV slots and page tables (AttentionStep checks
//   the request first, as on the CPU backend); the prefill kernel runs per
//   segment over its own page table
//   kOutput: output_norm ─► output
//
// Weights as model/memory_plan.h plans them: Q8_0 / Q4_K repacked to int8 /
// int4 (other quants requantized to int8), F32 / F16 / BF16 matrices in BF16
// through cuBLAS, norms and the router in f32. Many sequences, one device
// (device 0 of the process: set CUDA_VISIBLE_DEVICES), no tensor parallelism,
// no CUDA graphs.
//
// Status: compiled, NOT validated — no GPU was available when it was
// written. tests/gpu_worker/cuda_backend_test compares its logits with the
// CPU reference on the tiny fixtures when a device is present.
//
// Thread-safety: as WorkerCompute (Handle on the data-plane thread only).
// Failure: Configure returns FAILED_PRECONDITION when no CUDA device is
// usable (with the CUDA error), INVALID_ARGUMENT for a bad request; Load
// returns the model's errors or Internal with the CUDA/cuBLAS error (out of
// memory); Handle returns INVALID_ARGUMENT for a request that does not fit
// the model or the cache, Internal for a CUDA error.
#ifndef MOEFLOW_GPU_WORKER_CUDA_BACKEND_H_
#define MOEFLOW_GPU_WORKER_CUDA_BACKEND_H_

#include <memory>
#include <vector>

#include "dataflow/worker_compute.h"
#include "gpu_worker/attention_step.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/reference.h"
#include "model/gguf.h"

namespace moeflow {

class CudaGpuWorkerBackend final : public dataflow::WorkerCompute {
 public:
  CudaGpuWorkerBackend();
  ~CudaGpuWorkerBackend() override;

  absl::Status Configure(const proto::ConfigureRequest& request) override;
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override;
  size_t MaxRequestBytes() const override;
  size_t MaxReplyBytes() const override;
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override;
  int64_t ShardBytes() const override { return device_bytes_; }

 private:
  struct State;  // device buffers and weights (cuda_backend_state.h)
  absl::Status HandleLayer(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                           dataflow::ReplyWriter& reply);
  absl::Status HandleOutput(const dataflow::RequestHeader& header,
                            absl::Span<const uint8_t> payload, dataflow::ReplyWriter& reply);
  // The step's first request: its tokens' embeddings, positions, slots and
  // page tables onto the device.
  absl::Status StartStep();
  // x = ffn_inp + routed (uploaded) + shared, on the device.
  absl::Status AddRoutedSums(absl::Span<const float> routed);

  proto::ConfigureRequest config_request_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  Deepseek2RopeParams rope_;
  AttentionStepLimits limits_;
  std::unique_ptr<AttentionStep> step_;
  int64_t device_bytes_ = 0;
  std::unique_ptr<State> state_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_CUDA_BACKEND_H_
