// The per-layer dataflow driver: runs one step (a batch of segments of
// several sequences) through the attention worker and the expert workers.
//
//   attention: kLayer 0 (+ the step: segments, pages, tokens)
//     per MoE layer: router reply ─► ExpertDispatch::Build ─► expert workers
//                    (their replies) ─► Sum ─► routed sums with kLayer il+1
//     (the attention worker computes the shared experts meanwhile and adds
//      routed + shared to the residual it keeps)
//   attention: kOutput (+ the last MoE layer's sums) ─► logits
//
// Role in the data flow: the same code for every topology — the workers are
// WorkerClients (dataflow/worker_client.h): in process, over UCX, or fakes
// in tests (tests/coordinator/layer_driver_test). With an in-process
// attention worker the expert requests leave from inside its Handle, as
// soon as its router reply is written (before it computes the shared
// experts); with `overlap` off the driver also awaits the expert replies
// there, so that the shared experts run after them (the two pools would
// share this host's cores; coordinator.h).
//
// Thread-safety: one Step at a time. Failure: the first worker error
// (UNAVAILABLE naming a lost worker, DEADLINE_EXCEEDED, the worker's own
// error) ends the step; the transfers still posted are dropped; the
// attention worker starts over with the next step.
#ifndef MOEFLOW_COORDINATOR_LAYER_DRIVER_H_
#define MOEFLOW_COORDINATOR_LAYER_DRIVER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "coordinator/expert_dispatch.h"
#include "coordinator/placement.h"
#include "dataflow/worker_client.h"
#include "model/deepseek2/config.h"
#include "proto/worker.pb.h"

namespace moeflow {

// One sequence's part of a step.
struct StepSegment {
  int64_t sequence = 0;
  absl::Span<const int32_t> tokens;
  int64_t start_pos = 0;
  absl::Span<const int32_t> pages;  // its page table, covering start_pos + tokens
};

// The workers of one step (may change between steps, after a restart).
struct StepClients {
  dataflow::WorkerClient* attention = nullptr;
  std::vector<dataflow::WorkerClient*> experts;  // plan order
};

struct LayerDriverOptions {
  int64_t max_tokens = 64;
  // The attention worker computes the shared experts while the expert
  // workers compute (in process: only when this is on).
  bool overlap_shared_experts = true;
};

class LayerDriver {
 public:
  // `plan` must outlive the driver.
  LayerDriver(const Deepseek2Config& config, const ExpertPlan* plan, LayerDriverOptions options);

  // Runs the step with router top-k `k`. `logits` gets [rows × vocab]: the
  // last row of each segment, or with `all_logits` every row in order.
  // `stats` (n_layers entries, may be null) gets each layer's expert round
  // trip (transport_time_us), combine time, bytes and pairs.
  absl::Status Step(const StepClients& clients, absl::Span<const StepSegment> segments, int64_t k,
                    bool all_logits, absl::Span<float> logits,
                    std::vector<proto::LayerStats>* stats);

 private:
  class RouterHook;
  absl::Status PostExperts(const StepClients& clients, int64_t layer,
                           const dataflow::RouterReply& router, proto::LayerStats& ls);
  absl::Status AwaitExperts(const StepClients& clients, proto::LayerStats& ls);
  void AbandonAll(const StepClients& clients);

  const Deepseek2Config config_;
  const LayerDriverOptions options_;
  ExpertDispatch dispatch_;
  // The layer in flight.
  int64_t n_ = 0, k_ = 0;
  dataflow::RouterReply router_;
  std::vector<ExpertDispatch::Request> requests_;
  std::vector<absl::Span<const uint8_t>> replies_;
  std::vector<absl::Span<uint8_t>> payloads_;
  bool experts_posted_ = false, experts_done_ = false;
  absl::Time dispatch_start_;
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_LAYER_DRIVER_H_
