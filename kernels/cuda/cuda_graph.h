// CUDA graphs for decode steps: the kernels one decode step enqueues on a
// stream are captured once per batch size and replayed with one launch
// afterwards, removing the per-kernel launch cost (tens of launches per
// layer) that dominates small-batch decode.
//
// Contract for `enqueue`: it only enqueues work on the given stream (no
// synchronization, no allocation, no host reads of results) and uses the
// same device buffers and the same pointers every time; what changes from
// step to step (token positions, cache slots, activations) must be written
// into those buffers before Run — a replay reads them when it executes.
// Host-to-device copies inside the step must come from pinned buffers that
// stay valid.
//
// Thread-safety: not thread-safe; one owner per stream.
// Failure: Run returns the enqueue callback's error (nothing is kept), or
// Internal with the CUDA error of capture, instantiation or launch.
#ifndef MOEFLOW_KERNELS_CUDA_CUDA_GRAPH_H_
#define MOEFLOW_KERNELS_CUDA_CUDA_GRAPH_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>

#include "absl/status/status.h"

namespace moeflow::cuda {

class DecodeGraphCache {
 public:
  explicit DecodeGraphCache(cudaStream_t stream) : stream_(stream) {}
  ~DecodeGraphCache();
  DecodeGraphCache(const DecodeGraphCache&) = delete;
  DecodeGraphCache& operator=(const DecodeGraphCache&) = delete;

  // The first call for `batch_size` captures `enqueue` into a graph and
  // launches it; later calls launch the captured graph (enqueue is not
  // called). Asynchronous like any launch on the stream.
  absl::Status Run(int64_t batch_size, const std::function<absl::Status()>& enqueue);

  // Batch sizes captured so far.
  int64_t captured() const { return static_cast<int64_t>(graphs_.size()); }
  // Drops every graph (after the buffers they use were reallocated).
  void Clear();

 private:
  cudaStream_t stream_;
  std::map<int64_t, cudaGraphExec_t> graphs_;
};

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_CUDA_GRAPH_H_
