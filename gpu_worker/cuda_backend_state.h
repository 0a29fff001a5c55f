// The CUDA gpu worker's device memory (cuda_backend.h's State): device
// arrays, the uploaded weights of every layer, the paged KV cache and the
// step buffers. Private to the backend's two files (cuda_backend.cc: the
// step; cuda_backend_load.cc: Configure and Load).
//
// Thread-safety: none (the worker's data-plane thread). Failure: the device
// calls return CudaStatus errors naming what was allocated or copied.
#ifndef MOEFLOW_GPU_WORKER_CUDA_BACKEND_STATE_H_
#define MOEFLOW_GPU_WORKER_CUDA_BACKEND_STATE_H_

#include <cuda_runtime.h>

#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "gpu_worker/cuda_backend.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/weight_only_gemm.h"
#include "kernels/cuda/weight_repack.h"

namespace moeflow {
namespace cuda_backend_internal {

using cuda::CudaStatus;

// One device allocation of n elements of T.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(o.n_) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      Free();
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = o.n_;
    }
    return *this;
  }
  ~DeviceArray() { Free(); }

  absl::Status Allocate(size_t n) {
    Free();
    n_ = n;
    if (n == 0) return absl::OkStatus();
    return CudaStatus(cudaMalloc(&ptr_, n * sizeof(T)),
                      absl::StrCat("cudaMalloc of ", n * sizeof(T), " bytes"));
  }
  absl::Status Upload(const T* host, size_t n) {
    MOEFLOW_RETURN_IF_ERROR(Allocate(n));
    if (n == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpy(ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  T* get() const { return static_cast<T*>(ptr_); }
  size_t size() const { return n_; }

 private:
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
  }
  void* ptr_ = nullptr;
  size_t n_ = 0;
};

// A projection y = W x held as the plan says: int8/int4 repack or BF16.
struct GpuLinear {
  bool bf16 = false;
  int64_t rows = 0;  // all batches together
  int64_t cols = 0;
  cuda::DeviceRepackedMatrix quant;
  DeviceArray<uint16_t> bf16_weights;  // [rows × cols]
};

// A 1-D f32 tensor, or a f32 matrix (the router).
struct GpuF32 {
  DeviceArray<float> data;
};

struct GpuLayer {
  GpuF32 attn_norm, q_a_norm, kv_a_norm, ffn_norm;
  GpuLinear q, q_a, q_b, kv_a, k_b, v_b, attn_output;
  GpuLinear gate, up, down;                    // dense layers
  GpuF32 gate_inp, exp_probs_b;                // router (f32)
  GpuLinear gate_shexp, up_shexp, down_shexp;  // shared experts
};

}  // namespace cuda_backend_internal

struct CudaGpuWorkerBackend::State {
  template <typename T>
  using DeviceArray = cuda_backend_internal::DeviceArray<T>;
  using GpuLayer = cuda_backend_internal::GpuLayer;
  using GpuF32 = cuda_backend_internal::GpuF32;
  using GpuLinear = cuda_backend_internal::GpuLinear;

  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::CublasBf16Gemm> cublas;
  std::vector<GpuLayer> layers;
  GpuF32 output_norm;
  GpuLinear output;
  // The paged cache: one pool per layer of the coordinator's n_pages pages;
  // the step's page tables (every segment's, concatenated) index it.
  std::vector<DeviceArray<uint16_t>> cache;
  DeviceArray<int32_t> page_table;
  // Step buffers, sized for max_batch tokens. x is the step's residual
  // stream, shared the pending MoE layer's shared experts, routed its
  // routed sums.
  DeviceArray<float> x, xn, q_a, q, kv_a, rows, q_abs, ctx, heads_out, attn, ffn_inp, x_norm, gate,
      up, act, ffn_out, shared, routed, router_logits, weights, logits;
  // Host staging of the step start.
  std::vector<float> embedded;
  std::vector<int32_t> positions_host, slots_host;
  DeviceArray<uint16_t> x_bf16;
  DeviceArray<int32_t> positions, slots, ids;

  ~State() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_CUDA_BACKEND_STATE_H_
