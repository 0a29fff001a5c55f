// The process skeleton both worker binaries share (gpu_worker,
// cpu_expert_worker): the gRPC WorkerService with its lifecycle
// (proto/worker.proto), the UCX context and worker, and the data-plane
// thread that receives requests from the coordinator, hands them to the
// worker's WorkerCompute and sends the replies (wire.h).
//
// The two worker binaries differ only in their WorkerCompute
// (worker_compute.h).
//
// Thread-safety: WorkerCompute::Configure/Load run on gRPC threads, one at a
// time (the lifecycle forbids overlap); Handle runs on the data-plane thread
// only, after Load. Failure: RPCs return the codes worker.proto lists; a
// request that fails is answered with an error reply and the worker keeps
// serving; losing the coordinator moves the worker to FAILED and it exits.
#ifndef MOEFLOW_DATAFLOW_WORKER_PROCESS_H_
#define MOEFLOW_DATAFLOW_WORKER_PROCESS_H_

#include "dataflow/worker_compute.h"

namespace moeflow::dataflow {

// Parses --listen (default 127.0.0.1:0) and --token_file (else the token in
// $MOEFLOW_WORKER_TOKEN, auth/bearer_auth.h; every call must carry
// it, UNAUTHENTICATED otherwise), refuses to start without a token whatever
// the address (exit 2), serves until Shutdown, prints "PORT <n>" on stdout
// once listening. Returns the process exit code.
int RunWorkerProcess(int argc, char** argv, const char* program, WorkerCompute& compute);

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WORKER_PROCESS_H_
