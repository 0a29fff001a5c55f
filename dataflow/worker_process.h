// The process skeleton both worker binaries share (gpu_worker,
// cpu_expert_worker): the gRPC WorkerService with its lifecycle
// (proto/worker.proto), the UCX context and worker, and the data-plane
// thread that receives requests from the coordinator, hands them to the
// worker's WorkerCompute and sends the replies (wire.h).
//
// It lives beside the coordinator because it implements the coordinator's
// side of the contract once; the workers differ only in their WorkerCompute.
//
// Thread-safety: WorkerCompute::Configure/Load run on gRPC threads, one at a
// time (the lifecycle forbids overlap); Handle runs on the data-plane thread
// only, after Load. Failure: RPCs return the codes worker.proto lists; a
// request that fails is answered with an error reply and the worker keeps
// serving; losing the coordinator moves the worker to FAILED and it exits.
#ifndef MOEFLOW_DATAFLOW_WORKER_PROCESS_H_
#define MOEFLOW_DATAFLOW_WORKER_PROCESS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "dataflow/wire.h"
#include "proto/worker.pb.h"

namespace moeflow::dataflow {

// Where a request's reply parts are written and sent from.
class ReplyWriter {
 public:
  virtual ~ReplyWriter() = default;
  // Payload area of reply part `part` (capacity as WorkerCompute declared).
  virtual uint8_t* Payload(int part) = 0;
  // Sends part `part` with `payload_bytes` bytes of its payload.
  virtual absl::Status Send(int part, size_t payload_bytes) = 0;
};

class WorkerCompute {
 public:
  virtual ~WorkerCompute() = default;
  // Validates and records the request (no heavy work). INVALID_ARGUMENT
  // naming the field, FAILED_PRECONDITION for a backend this build lacks.
  virtual absl::Status Configure(const proto::ConfigureRequest& request) = 0;
  // Maps and prepares the shard, reporting progress.
  virtual absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) = 0;
  // Largest request payload (after RequestHeader), valid after Load.
  virtual size_t MaxRequestBytes() const = 0;
  // Payload capacity of each reply part, valid after Load.
  virtual std::vector<size_t> ReplyPartBytes() const = 0;
  // Computes one request. On error nothing has been sent.
  virtual absl::Status Handle(const RequestHeader& header, absl::Span<const uint8_t> payload,
                              ReplyWriter& reply, proto::LayerStats& stats) = 0;
  // Bytes of memory this worker's shard holds (for Health / memory report).
  virtual int64_t ShardBytes() const = 0;
  // The caller is about to wait on another process (for the next request,
  // or for the expert replies): a compute with a thread pool lets its idle
  // threads sleep now (ThreadPool::Rest) rather than spin on cores that
  // process needs. Between Handle calls, or from inside Handle's reply
  // callbacks; never concurrently with a parallel loop of the pool.
  virtual void Idle() {}
  // The opposite: work arrives within microseconds (a request has just been
  // received, or the expert replies the caller awaited): a compute with a
  // thread pool wakes its sleeping threads now (ThreadPool::Wake), so that
  // their wake-up overlaps the request's unpacking instead of delaying its
  // first parallel loop. Same calling rules as Idle.
  virtual void Busy() {}
  // The calling thread runs this compute's Handle from now on (and so the
  // caller's share of its pool's loops): a worker process's data-plane
  // thread, or the coordinator's step thread for the in-process gpu worker.
  // A compute whose pool has its workers pinned one per core pins this
  // thread to the remaining core (PinReport::caller_cpu), unless
  // MOEFLOW_PIN=0. Once per thread, never concurrently with Handle.
  virtual void PinCaller() {}
};

// How long the dataflow's idle threads poll between sched_yield() calls
// before they sleep (ThreadPool::SetYieldBeforeSleep and the channels'
// yield_before_sleep_us), in microseconds: MOEFLOW_YIELD_US, default 3000
// (a decode layer's turn of the other process is ~1-3 ms here), 0 to sleep
// right after the short spin. Read once.
int DataflowYieldMicros();

// Parses --listen (default 127.0.0.1:0) and --token_file (else the token in
// $MOEFLOW_WORKER_TOKEN, auth/bearer_auth.h; every call must carry
// it, UNAUTHENTICATED otherwise), refuses to start without a token whatever
// the address (exit 2), serves until Shutdown, prints "PORT <n>" on stdout
// once listening. Returns the process exit code.
int RunWorkerProcess(int argc, char** argv, const char* program, WorkerCompute& compute);

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WORKER_PROCESS_H_
