// The gpu_worker's backend when the build has CUDA: Configure picks the CUDA
// backend (cuda_backend.h) for `backend: cuda` and the CPU backend
// (cpu_backend.h) otherwise, and every later call goes to the one picked.
//
// Thread-safety: as WorkerCompute. Failure: those of the backend picked
// (CUDA without a usable device: FAILED_PRECONDITION at Configure). A second
// Configure may pick again (the runtime only calls it before Load).
#ifndef MOEFLOW_GPU_WORKER_CUDA_BACKEND_SELECTOR_H_
#define MOEFLOW_GPU_WORKER_CUDA_BACKEND_SELECTOR_H_

#include "gpu_worker/cpu_backend.h"
#include "gpu_worker/cuda_backend.h"

namespace moeflow {

class GpuWorkerBackendSelector final : public dataflow::WorkerCompute {
 public:
  absl::Status Configure(const proto::ConfigureRequest& request) override {
    active_ = request.backend() == "cuda" ? static_cast<dataflow::WorkerCompute*>(&cuda_)
                                          : static_cast<dataflow::WorkerCompute*>(&cpu_);
    return active_->Configure(request);
  }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override {
    return active_->Load(progress);
  }
  size_t MaxRequestBytes() const override { return active_->MaxRequestBytes(); }
  std::vector<size_t> ReplyPartBytes() const override { return active_->ReplyPartBytes(); }
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override {
    return active_->Handle(header, payload, reply, stats);
  }
  int64_t ShardBytes() const override { return active_->ShardBytes(); }

 private:
  CpuGpuWorkerBackend cpu_;
  CudaGpuWorkerBackend cuda_;
  dataflow::WorkerCompute* active_ = &cpu_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_CUDA_BACKEND_SELECTOR_H_
