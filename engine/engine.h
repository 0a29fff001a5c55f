// The layer-step engine: the weights (engine_weights.h) and the components
// of one DeepSeek-V2/V3 layer step on them (layer_step.h). There is no
// second, single-process forward pass: `moeflow generate`, `bench`, `chat`
// and `serve` run these components through the dataflow like `moeflow
// launch` does, over an in-process topology (coordinator/local_topology.h).
//
// Thread-safety and failure: see the two headers.
#ifndef MOEFLOW_ENGINE_ENGINE_H_
#define MOEFLOW_ENGINE_ENGINE_H_

#include "engine/engine_weights.h"
#include "engine/layer_step.h"

#endif  // MOEFLOW_ENGINE_ENGINE_H_
