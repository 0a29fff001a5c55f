// Per-layer counters of a worker's data plane (proto::LayerStats summed per
// layer): what the Stats RPC of a worker process reports, and what an
// in-process compute reports through its client.
//
// Thread-safety: all methods are thread-safe (the data plane records, a
// control thread reads). Failure: none.
#ifndef MOEFLOW_DATAFLOW_LAYER_STATS_H_
#define MOEFLOW_DATAFLOW_LAYER_STATS_H_

#include <cstdint>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "proto/worker.pb.h"

namespace moeflow::dataflow {

// total += s, field by field (steps: +s.steps(), or +1 when s has none).
void AddLayerStats(const proto::LayerStats& s, proto::LayerStats& total);

class LayerStatsTable {
 public:
  void Record(const proto::LayerStats& s) {
    absl::MutexLock lock(&mu_);
    proto::LayerStats& total = layers_[s.layer()];
    total.set_layer(s.layer());
    AddLayerStats(s, total);
  }
  // The totals by layer (and their sums); with `reset` they start again.
  void Fill(proto::StatsResponse* response, bool reset) {
    absl::MutexLock lock(&mu_);
    int64_t sent = 0, received = 0, steps = 0;
    for (const auto& [layer, s] : layers_) {
      *response->add_layers() = s;
      sent += s.bytes_sent();
      received += s.bytes_received();
      steps += s.steps();
    }
    response->set_steps(steps);
    response->set_bytes_sent(sent);
    response->set_bytes_received(received);
    response->set_window_ms(absl::ToInt64Milliseconds(absl::Now() - start_));
    if (reset) {
      layers_.clear();
      start_ = absl::Now();
    }
  }

 private:
  absl::Mutex mu_;
  std::map<int32_t, proto::LayerStats> layers_ ABSL_GUARDED_BY(mu_);
  absl::Time start_ ABSL_GUARDED_BY(mu_) = absl::Now();
};

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_LAYER_STATS_H_
