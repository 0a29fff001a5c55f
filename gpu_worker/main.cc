// gpu_worker: the process that runs everything but the routed experts
// (gpu_worker/cpu_backend.h; the CUDA backend is not in this build). Started
// by the coordinator (`moeflow launch`), which drives it over gRPC
// (proto/worker.proto) and UCX.
#include "coordinator/worker_runtime.h"
#include "gpu_worker/cpu_backend.h"

int main(int argc, char** argv) {
  moeflow::CpuGpuWorkerBackend backend;
  return moeflow::dataflow::RunWorkerProcess(argc, argv, "gpu_worker", backend);
}
