// gpu_worker's CPU backend: everything of a DeepSeek-V2/V3 layer except the
// routed experts — embeddings, attention with its MLA KV cache, the FFN norm,
// dense FFNs, the router and the shared experts — plus the output head, run
// with the single-process engine's components (engine/engine.h) so
// the multi-process logits are bit-identical to Deepseek2Engine's.
//
// Role in the data flow: the coordinator sends it kEmbed / kLayer / kOutput
// requests (dataflow/wire.h); for a MoE layer it answers the
// router output first (part 0) and the shared experts after (part 1), so the
// expert workers start while it computes the shared experts. It runs in a
// gpu_worker process of its own (main.cc, over UCX) or, by default, inside
// the coordinator process, which calls Handle directly (coordinator.h).
//
// Thread-safety: as WorkerCompute (Handle on the data-plane thread only).
// Failure: Configure fails FAILED_PRECONDITION for backend "cuda" (not in
// this build); Load returns the model's open/map errors; Handle returns
// INVALID_ARGUMENT for a request that does not fit the model or the cache.
#ifndef MOEFLOW_GPU_WORKER_CPU_BACKEND_H_
#define MOEFLOW_GPU_WORKER_CPU_BACKEND_H_

#include <memory>
#include <vector>

#include "dataflow/worker_process.h"
#include "kernels/cpu/numa.h"
#include "kernels/cpu/thread_pool.h"
#include "model/deepseek2/config.h"
#include "engine/engine.h"
#include "model/gguf.h"

namespace moeflow {

class CpuGpuWorkerBackend final : public dataflow::WorkerCompute {
 public:
  absl::Status Configure(const proto::ConfigureRequest& request) override;
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override;
  size_t MaxRequestBytes() const override;
  std::vector<size_t> ReplyPartBytes() const override;
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override;
  int64_t ShardBytes() const override { return shard_bytes_; }
  void Idle() override {
    if (pool_ != nullptr) pool_->Rest();
  }
  void Busy() override {
    if (pool_ != nullptr) pool_->Wake();
  }
  void PinCaller() override { (void)PinCallerThread(caller_cpu_); }

 private:
  proto::ConfigureRequest config_request_;
  std::unique_ptr<GgufFile> file_;
  Deepseek2Config config_;
  Deepseek2RopeParams rope_;
  EngineWeights weights_;
  std::vector<WeightBuffer> resident_;                // MoveWeightsToOwnMemory's buffers
  std::vector<std::unique_ptr<uint8_t[]>> repacked_;  // RepackLayerWeights' buffers
  std::unique_ptr<ThreadPool> pool_;
  int caller_cpu_ = -1;  // PinReport::caller_cpu of pool_
  EngineScratch scratch_;
  EngineContext ctx_;
  MlaKvCache cache_;
  int64_t max_batch_ = 0;
  int64_t kv_tokens_ = 0;
  int64_t shard_bytes_ = 0;
  std::vector<float> x_norm_, ffn_out_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_CPU_BACKEND_H_
