// NCCL all-reduce for tensor parallelism inside one gpu_worker process: one
// communicator per card of the worker (ncclCommInitAll), and an in-place sum
// of f32 buffers across the cards — what follows the row-parallel
// projections (attn_output, the FFN down projections) and the
// vocabulary-parallel embedding when heads and FFN rows are split over 2–4
// cards (model/memory_plan.h describes the split).
//
// Thread-safety: one thread drives a group (the calls for all cards are
// issued together inside ncclGroupStart/End). Failure: Create and
// AllReduceSum return Internal with the NCCL error string, InvalidArgument
// for mismatched buffer / stream lists.
#ifndef MOEFLOW_KERNELS_CUDA_NCCL_ALL_REDUCE_H_
#define MOEFLOW_KERNELS_CUDA_NCCL_ALL_REDUCE_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moeflow::cuda {

class NcclAllReduceGroup {
 public:
  // One rank per entry of `devices` (CUDA ordinals, distinct, 1..8 of them).
  static absl::StatusOr<std::unique_ptr<NcclAllReduceGroup>> Create(
      const std::vector<int>& devices);
  ~NcclAllReduceGroup();
  NcclAllReduceGroup(const NcclAllReduceGroup&) = delete;
  NcclAllReduceGroup& operator=(const NcclAllReduceGroup&) = delete;

  int size() const { return static_cast<int>(devices_.size()); }

  // buffers[i] (count floats on devices[i]) becomes the sum over all ranks,
  // enqueued on streams[i]. Asynchronous.
  absl::Status AllReduceSum(const std::vector<float*>& buffers, int64_t count,
                            const std::vector<cudaStream_t>& streams);

 private:
  NcclAllReduceGroup() = default;
  std::vector<int> devices_;
  std::vector<void*> comms_;  // ncclComm_t
};

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_NCCL_ALL_REDUCE_H_
