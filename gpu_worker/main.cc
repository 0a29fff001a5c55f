// gpu_worker: the process that runs everything but the routed experts
// (gpu_worker/cpu_backend.h, and gpu_worker/cuda_backend.h when built with
// CUDA: MOEFLOW_WITH_CUDA). Started
// by the coordinator (`moeflow launch`), which drives it over gRPC
// (proto/worker.proto) and UCX.
#include "dataflow/worker_process.h"
#include "gpu_worker/cpu_backend.h"
#ifdef MOEFLOW_WITH_CUDA
#include "gpu_worker/backend_selector.h"  // backend: cuda or cpu, picked at Configure
#include "gpu_worker/cuda_backend.h"
#endif

int main(int argc, char** argv) {
#ifdef MOEFLOW_WITH_CUDA
  moeflow::GpuWorkerBackendSelector backend(std::make_unique<moeflow::CpuGpuWorkerBackend>(),
                                            std::make_unique<moeflow::CudaGpuWorkerBackend>());
#else
  moeflow::CpuGpuWorkerBackend backend;
#endif
  return moeflow::dataflow::RunWorkerProcess(argc, argv, "gpu_worker", backend);
}
