// The routed experts' half of a MoE layer, as the coordinator sees it: from
// the attention worker's routed rows (x_norm, expert ids, weights) to one
// kExperts request per expert worker, and from their replies to the routed
// sums the attention worker adds to the residual.
//
// Role in the data flow: the layer driver (layer_driver.h) calls Build when
// the router's reply is in and Sum when the expert replies are. The sums
// follow the order of the engine's fused MoE operator (kernels/cpu/moe.h,
// EngineRoutedExperts): out[t] = Σ_j w[t, j] · y[t, j] in j order, so with
// placement replicate or shard they are bit-identical to one process
// computing everything. When one worker holds every pair of the step (one
// expert worker; or a shard that owns all of a step's experts), that worker
// is asked for kExpertsCombine and its reply is the sums already (the
// engine's own call, k times fewer bytes back). Slice adds each pair's
// partial outputs of the workers in worker order first (deterministic, equal
// up to float summation).
//
// Thread-safety: none (the step thread). Failure: Build returns INTERNAL
// naming the attention worker when the router chose an expert outside the
// model (nothing is written).
#ifndef MOEFLOW_COORDINATOR_EXPERT_DISPATCH_H_
#define MOEFLOW_COORDINATOR_EXPERT_DISPATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "coordinator/placement.h"
#include "dataflow/wire.h"
#include "model/deepseek2/config.h"

namespace moeflow {

class ExpertDispatch {
 public:
  // `plan` must outlive the dispatch.
  ExpertDispatch(const Deepseek2Config& config, const ExpertPlan* plan, int64_t max_tokens);

  // One expert worker's request of this layer.
  struct Request {
    bool send = false;  // the worker has pairs this layer
    dataflow::RequestHeader header;
    size_t payload_bytes = 0;
    int64_t reply_bytes = 0;  // its reply payload
  };

  // Writes worker w's kExperts request into payloads[w] (at least
  // MaxExpertsRequestBytes of max_tokens rows); requests->size() becomes
  // the number of workers.
  absl::Status Build(int64_t layer, const dataflow::RouterReply& router, int64_t n, int64_t k,
                     absl::Span<const absl::Span<uint8_t>> payloads,
                     std::vector<Request>* requests);
  // routed [n × hidden] from the replies of the requests Build made
  // (replies[w] empty where none was sent).
  void Sum(const dataflow::RouterReply& router, int64_t n, int64_t k,
           absl::Span<const absl::Span<const uint8_t>> replies, float* routed);

  // The worker asked for kExpertsCombine in the last Build, or -1.
  int combined_worker() const { return combined_worker_; }

 private:
  const Deepseek2Config config_;
  const ExpertPlan* const plan_;
  int combined_worker_ = -1;
  // Scratch of the last Build (sized for max_tokens · k pairs).
  std::vector<int32_t> row_of_token_, pair_worker_, pair_pos_;
  std::vector<float> ysum_;
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_EXPERT_DISPATCH_H_
