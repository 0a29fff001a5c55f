#include "dataflow/layer_stats.h"

namespace moeflow::dataflow {

void AddLayerStats(const proto::LayerStats& s, proto::LayerStats& total) {
  total.set_steps(total.steps() + (s.steps() > 0 ? s.steps() : 1));
  total.set_transport_time_us(total.transport_time_us() + s.transport_time_us());
  total.set_compute_time_us(total.compute_time_us() + s.compute_time_us());
  total.set_bytes_sent(total.bytes_sent() + s.bytes_sent());
  total.set_bytes_received(total.bytes_received() + s.bytes_received());
  total.set_rows_computed(total.rows_computed() + s.rows_computed());
}

}  // namespace moeflow::dataflow
