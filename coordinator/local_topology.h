// The single-process topology: the attention compute (gpu_worker/
// cpu_backend.h) and one expert compute holding every routed expert
// (cpu_expert_worker/expert_shard.h) in this process, on one shared thread
// pool, reached through in-process clients (dataflow/in_process_client.h)
// by the same layer driver `moeflow launch` uses. `moeflow serve`,
// `generate`, `chat` and `bench` run it; it is not a second engine.
//
// Role in the data flow: batch model (dataflow_batch_model.h) ─► Step ─►
// LayerDriver ─► in-process attention / experts (the expert requests are
// computed inside the attention compute's reply, so a MoE layer costs two
// function calls and the copies of its routed rows).
//
// Thread-safety: as StepEngine. Failure: Open returns the model's errors
// (the file, its tensors) and INVALID_ARGUMENT for a bad option; Step the
// driver's.
#ifndef MOEFLOW_COORDINATOR_LOCAL_TOPOLOGY_H_
#define MOEFLOW_COORDINATOR_LOCAL_TOPOLOGY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/placement.h"
#include "coordinator/step_engine.h"
#include "cpu_expert_worker/expert_shard.h"
#include "dataflow/in_process_client.h"
#include "gpu_worker/cpu_backend.h"
#include "kernels/cpu/thread_pool.h"

namespace moeflow {

struct LocalTopologyOptions {
  // Threads of the shared pool, the calling thread included.
  int n_threads = 1;
  // Routed experts used per token; 0 = the model's.
  int64_t active_experts = 0;
  // Tokens of one step (the longest prefill chunk; capped at
  // kPrefillTokenChunk, engine/layer_step.h: limits() says what was taken)
  // and sequences of one step.
  int64_t max_batch_tokens = 512;
  int64_t max_sequences = 8;
  // KV memory in positions over all sequences (rounded up to whole pages),
  // and the positions one sequence may hold (0: the model's context; never
  // more than it or the KV memory).
  int64_t kv_tokens = 4096;
  int64_t context_tokens = 0;
  int64_t kv_page_tokens = 16;
  // Called as loading advances: (done, total) parts.
  std::function<void(int64_t done, int64_t total)> progress;
};

class LocalTopology final : public StepEngine {
 public:
  static absl::StatusOr<std::unique_ptr<LocalTopology>> Open(const std::string& gguf_path,
                                                             const LocalTopologyOptions& options);

  const Deepseek2Config& config() const override { return attention_->config(); }
  const StepLimits& limits() const override { return limits_; }
  absl::Status Step(absl::Span<const StepSegment> segments, bool all_logits,
                    absl::Span<float> logits) override;
  int64_t kv_epoch() const override { return 0; }  // the memory lives as long as this

  // Where the weights live (MoveWeightsToOwnMemory's line for the
  // attention compute's matrices; the experts follow the same rule).
  const std::string& weight_memory() const { return attention_->weight_memory(); }
  int64_t active_experts() const { return k_; }
  // The model file, opened once and shared by both components.
  const GgufFile& file() const { return *file_; }

 private:
  LocalTopology() = default;

  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<const GgufFile> file_;
  std::unique_ptr<CpuGpuWorkerBackend> attention_;
  std::unique_ptr<ExpertShard> experts_;
  std::unique_ptr<dataflow::InProcessClient> attention_client_, experts_client_;
  ExpertPlan plan_;
  std::unique_ptr<LayerDriver> driver_;
  StepLimits limits_;
  int64_t k_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_LOCAL_TOPOLOGY_H_
