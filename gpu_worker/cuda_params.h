// The model's rules in the form the CUDA layer kernels take them
// (kernels/cuda/layer_kernels.cuh): YaRN RoPE constants and the router's
// top-k rules. Lives here, not in kernels/cuda, so that the kernels know no
// model (kernels/ depend on block formats only).
//
// Thread-safety: pure functions. Failure: none (the kernels' CanImplement
// checks the values).
#ifndef MOEFLOW_GPU_WORKER_CUDA_PARAMS_H_
#define MOEFLOW_GPU_WORKER_CUDA_PARAMS_H_

#include <cstdint>

#include "kernels/cuda/layer_kernels.cuh"
#include "model/deepseek2/config.h"
#include "model/deepseek2/reference.h"

namespace moeflow::cuda {

// The device form of Deepseek2RopeParams (host-side logs and powers).
RopeDeviceParams RopeDeviceParamsFrom(const Deepseek2RopeParams& rope);

// The router's rules from the model config; k = 0: the model's top-k.
RouterDeviceParams RouterDeviceParamsFrom(const Deepseek2Config& config, int64_t k = 0);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_GPU_WORKER_CUDA_PARAMS_H_
