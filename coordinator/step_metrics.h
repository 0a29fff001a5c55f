// Counters of the coordinator's steps: step times (percentiles, histogram)
// and tokens per step over the recent steps, and the per-layer expert round
// trips the layer driver measured (moeflowctl stats, the Metrics RPC).
//
// Thread-safety: all methods are thread-safe. Failure: none.
#ifndef MOEFLOW_COORDINATOR_STEP_METRICS_H_
#define MOEFLOW_COORDINATOR_STEP_METRICS_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "proto/control.pb.h"
#include "proto/worker.pb.h"

namespace moeflow {

class StepMetrics {
 public:
  explicit StepMetrics(int64_t n_layers);
  // One step of `tokens` tokens that took `us` microseconds; `layers` (may
  // be empty) its per-layer counters.
  void Record(int64_t us, int32_t tokens, const std::vector<proto::LayerStats>& layers);
  // p50 / p99 of the recent step times (us) and the median tokens per step.
  void Percentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50);
  // Histogram of the same steps (MetricsResponse's step_time_bucket_*).
  void Histogram(std::vector<int64_t>* le_us, std::vector<int64_t>* counts);
  // The coordinator's own per-layer totals as worker "coordinator":
  // transport_time_us is the expert round trip of a MoE layer (staging, the
  // sends, the expert workers' compute, the replies; minus the workers'
  // compute_time_us it is the data plane's cost), compute_time_us the sum
  // of the replies.
  void Fill(proto::MetricsResponse* metrics, bool reset);

 private:
  absl::Mutex mu_;
  std::vector<int64_t> step_times_us_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> step_batches_ ABSL_GUARDED_BY(mu_);
  std::vector<proto::LayerStats> layers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_STEP_METRICS_H_
