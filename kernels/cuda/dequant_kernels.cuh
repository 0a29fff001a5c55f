// Device-side declarations of the GPU dequantization kernels (see dequant.h).
// Plain C++ so that nvcc never sees Abseil headers.
#ifndef MOEFLOW_KERNELS_CUDA_DEQUANT_KERNELS_CUH_
#define MOEFLOW_KERNELS_CUDA_DEQUANT_KERNELS_CUH_

#include <cstdint>

#include <cuda_runtime.h>

namespace moeflow::cuda {

// blocks: n_blocks ggml blocks in device memory; out: n_blocks * block_size floats.
cudaError_t LaunchDequantizeQ8_0(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream);
cudaError_t LaunchDequantizeQ4_K(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream);
cudaError_t LaunchDequantizeQ6_K(const void* blocks, float* out, int64_t n_blocks,
                                 cudaStream_t stream);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_DEQUANT_KERNELS_CUH_
