// The attention worker's CPU backend: everything of a DeepSeek-V2/V3 layer
// but the routed experts — embeddings, attention over a paged multi-sequence
// MLA KV cache, the FFN norm, dense FFNs, the router, the shared experts and
// the residual stream — plus the output head, with the layer-step engine's
// components (engine/layer_step.h), so that every topology's logits are
// bit-identical.
//
// Role in the data flow: the coordinator's layer driver sends it the step's
// kLayer requests and its kOutput (dataflow/wire.h). The residual stream of
// the step stays here: a dense layer is computed whole and answered with an
// empty reply; a MoE layer answers its routed rows (x_norm, expert ids,
// weights), then computes the shared experts while the expert workers
// compute the routed ones; the next request brings the routed sums, which
// are added here (Combine) before the next layer. The KV memory is
// KvPageMemory; which pages a sequence uses is the coordinator's (the step's
// page tables). It runs in a gpu_worker process (main.cc, over UCX) or
// inside the coordinator (dataflow/in_process_client.h): by default for
// `moeflow launch` with the CPU backend, and always in the single-process
// topology, where it shares the thread pool of the expert compute.
//
// Thread-safety: as WorkerCompute (Handle from one thread). Failure:
// Configure FAILED_PRECONDITION for backend "cuda" (not this backend);
// Load the model's open/map errors; Handle AttentionStep's errors for a
// request that does not fit the step, the model or the cache (the step
// ends: the next request must start one).
#ifndef MOEFLOW_GPU_WORKER_CPU_BACKEND_H_
#define MOEFLOW_GPU_WORKER_CPU_BACKEND_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/worker_compute.h"
#include "engine/engine.h"
#include "engine/kv_pages.h"
#include "gpu_worker/attention_step.h"
#include "kernels/cpu/numa.h"
#include "kernels/cpu/thread_pool.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"

namespace moeflow {

class CpuGpuWorkerBackend final : public dataflow::WorkerCompute {
 public:
  // `shared_pool` (may be null; must outlive the backend): compute on it
  // instead of a pool of the backend's own (the single-process topology).
  explicit CpuGpuWorkerBackend(ThreadPool* shared_pool = nullptr) : shared_pool_(shared_pool) {}

  absl::Status Configure(const proto::ConfigureRequest& request) override;
  // Makes Load use `file` (the request's model_path, opened by the caller)
  // instead of opening and parsing the file again: the single-process
  // topology gives its one GgufFile to both of its components.
  void UseOpenFile(std::shared_ptr<const GgufFile> file) { open_file_ = std::move(file); }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override;
  size_t MaxRequestBytes() const override;
  size_t MaxReplyBytes() const override;
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override;
  int64_t ShardBytes() const override { return shard_bytes_; }
  void Idle() override {
    if (own_pool_ != nullptr) own_pool_->Rest();
  }
  void Busy() override {
    if (own_pool_ != nullptr) own_pool_->Wake();
  }
  void PinCaller() override {
    if (own_pool_ != nullptr) (void)PinCallerThread(caller_cpu_);
  }

  const Deepseek2Config& config() const { return config_; }
  const AttentionStepLimits& limits() const { return limits_; }
  // One line from MoveWeightsToOwnMemory: where the weights live.
  const std::string& weight_memory() const { return weight_memory_; }

 private:
  absl::Status HandleLayer(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                           dataflow::ReplyWriter& reply);
  absl::Status HandleOutput(const dataflow::RequestHeader& header,
                            absl::Span<const uint8_t> payload, dataflow::ReplyWriter& reply);
  // The step's first request: embeddings of its tokens, its segments' views.
  absl::Status StartStep();
  // x = ffn_inp + routed + shared of the pending MoE layer.
  void AddRoutedSums(absl::Span<const float> routed);

  ThreadPool* const shared_pool_;
  proto::ConfigureRequest config_request_;
  std::shared_ptr<const GgufFile> open_file_;  // UseOpenFile's
  std::shared_ptr<const GgufFile> file_;
  Deepseek2Config config_;
  Deepseek2RopeParams rope_;
  EngineWeights weights_;
  std::vector<WeightBuffer> resident_;                // MoveWeightsToOwnMemory's buffers
  std::vector<std::unique_ptr<uint8_t[]>> repacked_;  // RepackLayerWeights' buffers
  std::string weight_memory_;
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool* pool_ = nullptr;
  int caller_cpu_ = -1;  // PinReport::caller_cpu of own_pool_
  EngineScratch scratch_;
  EngineContext ctx_;
  AttentionStepLimits limits_;
  KvPageMemory kv_;
  std::optional<AttentionStep> step_;
  std::vector<AttentionSegment> segments_;  // of the step, for the layer's KV base
  int64_t shard_bytes_ = 0;
  // The step's residual stream and the pending MoE layer's parts.
  std::vector<float> x_, ffn_inp_, x_norm_, ffn_out_, shared_, last_rows_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_CPU_BACKEND_H_
