// The worker compute interface: what a worker process (or the single-process
// topology) runs for each dataflow request — the attention worker
// (gpu_worker/cpu_backend.h, gpu_worker/cuda_backend.h) and the expert
// worker (cpu_expert_worker/expert_shard.h) implement it.
//
// Role in the data flow: the worker process skeleton (worker_process.h)
// calls Configure and Load from its gRPC service, then Handle for every
// request its data plane receives; an InProcessClient (in_process_client.h)
// calls Handle directly for a compute that runs inside the coordinator.
//
//   Configure ─► Load ─► Handle* (one request at a time, replies in order)
//
// Thread-safety: Configure/Load one at a time (the worker lifecycle forbids
// overlap); Handle, Idle, Busy and PinCaller from one thread (the data-plane
// thread, or the coordinator's step thread), after Load.
// Failure: Configure INVALID_ARGUMENT naming the field, FAILED_PRECONDITION
// for a backend this build lacks; Load the model's errors; Handle returns an
// error (and has sent nothing) for a request it refuses or cannot compute —
// the caller answers it with an error reply and the compute keeps serving.
#ifndef MOEFLOW_DATAFLOW_WORKER_COMPUTE_H_
#define MOEFLOW_DATAFLOW_WORKER_COMPUTE_H_

#include <cstddef>
#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "dataflow/wire.h"
#include "proto/worker.pb.h"

namespace moeflow::dataflow {

// Where a request's reply is written and sent from.
class ReplyWriter {
 public:
  virtual ~ReplyWriter() = default;
  // The reply's payload area (MaxReplyBytes, kSectionAlign-aligned).
  virtual uint8_t* Payload() = 0;
  // Sends the reply with `payload_bytes` bytes of its payload. Once per
  // request; the compute may go on computing after it (state for the next
  // request, e.g. the shared experts).
  virtual absl::Status Send(size_t payload_bytes) = 0;
};

class WorkerCompute {
 public:
  virtual ~WorkerCompute() = default;
  // Validates and records the request (no heavy work).
  virtual absl::Status Configure(const proto::ConfigureRequest& request) = 0;
  // Maps and prepares the shard, reporting progress.
  virtual absl::Status Load(const std::function<void(const proto::LoadProgress&)>& progress) = 0;
  // Largest request payload (after RequestHeader) and reply payload (after
  // ReplyHeader), valid after Load.
  virtual size_t MaxRequestBytes() const = 0;
  virtual size_t MaxReplyBytes() const = 0;
  // Computes one request and Sends its reply; on error nothing was sent.
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
  // thread pool wakes its sleeping threads now (ThreadPool::Wake).
  virtual void Busy() {}
  // The calling thread runs this compute's Handle from now on (and so the
  // caller's share of its pool's loops): a compute whose pool has its
  // workers pinned one per core pins this thread to the remaining core
  // (PinReport::caller_cpu), unless the pin knob is off. Once per thread,
  // never concurrently with Handle.
  virtual void PinCaller() {}
};

// How long the dataflow's idle threads poll between sched_yield() calls
// before they sleep (ThreadPool::SetYieldBeforeSleep and the channels'
// yield_before_sleep_us), in microseconds: the yield_us knob (base/knobs.h).
int DataflowYieldMicros();

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WORKER_COMPUTE_H_
