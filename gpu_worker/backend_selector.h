// The gpu_worker's compute when the build has CUDA: Configure picks the CUDA
// backend (cuda_backend.h) for `backend: cuda` and the CPU backend
// (cpu_backend.h) otherwise, and every later call — the data-plane hooks
// Idle, Busy and PinCaller included, without which a CUDA build's CPU
// gpu worker would never pin its caller nor let its pool rest — goes to the
// one picked. It holds the two backends as WorkerComputes, so it builds (and
// is tested, tests/gpu_worker/backend_selector_test) without CUDA.
//
// Thread-safety: as WorkerCompute. Failure: those of the backend picked
// (CUDA without a usable device: FAILED_PRECONDITION at Configure). A second
// Configure may pick again (the runtime only calls it before Load).
#ifndef MOEFLOW_GPU_WORKER_BACKEND_SELECTOR_H_
#define MOEFLOW_GPU_WORKER_BACKEND_SELECTOR_H_

#include <memory>
#include <utility>

#include "base/check.h"
#include "dataflow/worker_compute.h"

namespace moeflow {

class GpuWorkerBackendSelector final : public dataflow::WorkerCompute {
 public:
  GpuWorkerBackendSelector(std::unique_ptr<dataflow::WorkerCompute> cpu,
                           std::unique_ptr<dataflow::WorkerCompute> cuda)
      : cpu_(std::move(cpu)), cuda_(std::move(cuda)), active_(cpu_.get()) {
    MOEFLOW_CHECK(cpu_ != nullptr && cuda_ != nullptr);
  }

  absl::Status Configure(const proto::ConfigureRequest& request) override {
    active_ = request.backend() == "cuda" ? cuda_.get() : cpu_.get();
    return active_->Configure(request);
  }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) override {
    return active_->Load(progress);
  }
  size_t MaxRequestBytes() const override { return active_->MaxRequestBytes(); }
  size_t MaxReplyBytes() const override { return active_->MaxReplyBytes(); }
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats& stats) override {
    return active_->Handle(header, payload, reply, stats);
  }
  int64_t ShardBytes() const override { return active_->ShardBytes(); }
  void Idle() override { active_->Idle(); }
  void Busy() override { active_->Busy(); }
  void PinCaller() override { active_->PinCaller(); }

 private:
  std::unique_ptr<dataflow::WorkerCompute> cpu_, cuda_;
  dataflow::WorkerCompute* active_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_BACKEND_SELECTOR_H_
