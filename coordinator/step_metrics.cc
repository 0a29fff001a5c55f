#include "coordinator/step_metrics.h"

#include <algorithm>

#include "dataflow/layer_stats.h"

namespace moeflow {

StepMetrics::StepMetrics(int64_t n_layers) : layers_(static_cast<size_t>(n_layers)) {
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i].set_layer(static_cast<int32_t>(i));
}

void StepMetrics::Record(int64_t us, int32_t tokens, const std::vector<proto::LayerStats>& layers) {
  absl::MutexLock lock(&mu_);
  if (step_times_us_.size() >= 4096) {
    step_times_us_.erase(step_times_us_.begin(), step_times_us_.begin() + 2048);
    step_batches_.erase(step_batches_.begin(), step_batches_.begin() + 2048);
  }
  step_times_us_.push_back(us);
  step_batches_.push_back(tokens);
  for (size_t i = 0; i < layers.size() && i < layers_.size(); ++i) {
    dataflow::AddLayerStats(layers[i], layers_[i]);
  }
}

void StepMetrics::Histogram(std::vector<int64_t>* le_us, std::vector<int64_t>* counts) {
  // ms: fine around a decode step's 10-50 ms, coarse beyond.
  static constexpr int64_t kBoundsMs[] = {5,  10, 15,  20,  25,  30,  35,   40,
                                          50, 75, 100, 150, 250, 500, 1000, 0};
  le_us->clear();
  for (int64_t ms : kBoundsMs) le_us->push_back(ms * 1000);
  counts->assign(le_us->size(), 0);
  absl::MutexLock lock(&mu_);
  for (int64_t t : step_times_us_) {
    size_t b = 0;
    while ((*le_us)[b] != 0 && t > (*le_us)[b]) ++b;
    ++(*counts)[b];
  }
}

void StepMetrics::Percentiles(int64_t* p50, int64_t* p99, int32_t* batch_p50) {
  absl::MutexLock lock(&mu_);
  *p50 = *p99 = 0;
  *batch_p50 = 0;
  if (step_times_us_.empty()) return;
  std::vector<int64_t> t = step_times_us_;
  std::sort(t.begin(), t.end());
  *p50 = t[t.size() / 2];
  *p99 = t[std::min(t.size() - 1, t.size() * 99 / 100)];
  std::vector<int32_t> b = step_batches_;
  std::sort(b.begin(), b.end());
  *batch_p50 = b[b.size() / 2];
}

void StepMetrics::Fill(proto::MetricsResponse* metrics, bool reset) {
  absl::MutexLock lock(&mu_);
  proto::WorkerLayerMetrics* own = metrics->add_workers();
  own->set_worker_name("coordinator");
  for (proto::LayerStats& s : layers_) {
    *own->add_layers() = s;
    if (reset) {
      const int32_t layer = s.layer();
      s = proto::LayerStats();
      s.set_layer(layer);
    }
  }
}

}  // namespace moeflow
