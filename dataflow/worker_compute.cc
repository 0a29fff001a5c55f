#include "dataflow/worker_compute.h"

#include "base/knobs.h"

namespace moeflow::dataflow {

int DataflowYieldMicros() {
  static const int us = static_cast<int>(KnobInt(Knob::kYieldUs));
  return us;
}

}  // namespace moeflow::dataflow
