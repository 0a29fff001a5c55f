#include "kernels/cuda/cuda_graph.h"

#include "kernels/cuda/cuda_status.h"

namespace moeflow::cuda {

DecodeGraphCache::~DecodeGraphCache() { Clear(); }

void DecodeGraphCache::Clear() {
  for (auto& [batch, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

absl::Status DecodeGraphCache::Run(int64_t batch_size,
                                   const std::function<absl::Status()>& enqueue) {
  auto it = graphs_.find(batch_size);
  if (it == graphs_.end()) {
    if (absl::Status s =
            CudaStatus(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                       "cudaStreamBeginCapture");
        !s.ok()) {
      return s;
    }
    const absl::Status enqueued = enqueue();
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (!enqueued.ok() || ended != cudaSuccess) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return enqueued.ok() ? CudaStatus(ended, "cudaStreamEndCapture") : enqueued;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (absl::Status s = CudaStatus(instantiated, "cudaGraphInstantiate"); !s.ok()) return s;
    it = graphs_.emplace(batch_size, exec).first;
  }
  return CudaStatus(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
}

}  // namespace moeflow::cuda
