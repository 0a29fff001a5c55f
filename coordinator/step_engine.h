// One engine over the dataflow: what runs a step of several sequences —
// the coordinator of `moeflow launch` (coordinator.h: worker processes) and
// the single-process topology of `moeflow serve`, `generate`, `bench` and
// `chat` (local_topology.h: everything in this process) — as the batch
// model (dataflow_batch_model.h) sees it. Both run the same layer driver
// over WorkerClients; only where the workers live differs.
//
// Thread-safety: Step from one thread at a time; the accessors from any.
// Failure: Step returns the driver's errors (UNAVAILABLE naming a lost
// worker, DEADLINE_EXCEEDED, INVALID_ARGUMENT for a step that does not fit
// the limits).
#ifndef MOEFLOW_COORDINATOR_STEP_ENGINE_H_
#define MOEFLOW_COORDINATOR_STEP_ENGINE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "coordinator/layer_driver.h"
#include "model/deepseek2/config.h"

namespace moeflow {

struct StepLimits {
  int64_t max_tokens = 64;     // tokens of one step (decode tokens + prefill chunks)
  int64_t max_sequences = 8;   // sequences of one step
  int64_t page_tokens = 16;    // positions per KV page
  int64_t n_pages = 0;         // pages of the attention worker's KV memory
  int64_t context_tokens = 0;  // positions one sequence may hold
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual const Deepseek2Config& config() const = 0;
  virtual const StepLimits& limits() const = 0;
  // One step (layer_driver.h LayerDriver::Step, with the engine's top-k).
  virtual absl::Status Step(absl::Span<const StepSegment> segments, bool all_logits,
                            absl::Span<float> logits) = 0;
  // Changes whenever the attention worker's KV memory was lost (a restart):
  // the pages' contents are gone, the published blocks must be forgotten.
  virtual int64_t kv_epoch() const = 0;
  // False while a worker is down or restarting (Step would fail
  // UNAVAILABLE): the scheduler admits nothing until it serves again.
  // Thread-safe, cheap.
  virtual bool ready() const { return true; }
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_STEP_ENGINE_H_
