// GPU dequantization of ggml weight blocks (Q8_0, Q4_K, Q6_K) to float32.
//
// Role in the data flow: the CUDA gpu_worker backend turns the GGUF blocks of
// the non-expert weights into the layouts its GEMMs use at load time; these
// kernels are the first step and are checked bit for bit against the CPU
// reference (kernels/cpu/quants.h). Compiled only when nvcc is present.
//
// Thread-safety: stateless; callers serialise on their CUDA stream.
// Failure: CanImplement says InvalidArgument for unsupported types or partial
// blocks; Run returns Internal with the CUDA error string when a launch fails
// (e.g. no device). Nothing is written to `out` on argument errors.
#ifndef MOEFLOW_KERNELS_CUDA_DEQUANT_H_
#define MOEFLOW_KERNELS_CUDA_DEQUANT_H_

#include <cstdint>

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "formats/ggml_types.h"

namespace moeflow::cuda {

struct DequantizeArguments {
  GgmlType type = GgmlType::kQ8_0;
  const void* blocks = nullptr;  // device pointer, RowBytes(type, n_elements) bytes
  float* out = nullptr;          // device pointer, n_elements floats
  int64_t n_elements = 0;        // multiple of the type's block size
  cudaStream_t stream = nullptr;
};

absl::Status CanImplementDequantize(const DequantizeArguments& args);
// Enqueues the kernel on args.stream (asynchronous).
absl::Status RunDequantize(const DequantizeArguments& args);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_DEQUANT_H_
