// absl::Status from a CUDA runtime error, for the host adapters of
// kernels/cuda: Internal with the CUDA error name and string, prefixed by
// what was being done ("rms_norm launch failed: ..."). Thread-safe.
#ifndef MOEFLOW_KERNELS_CUDA_CUDA_STATUS_H_
#define MOEFLOW_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace moeflow::cuda {

inline absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_CUDA_STATUS_H_
