// The coordinator's view of one worker's data plane: post a request, await
// its reply. "In process" is one more implementation (in_process_client.h:
// the compute runs in the caller's thread), next to UCX (ucx_client.h), and
// tests have a fake (tests/coordinator/fake_worker_client.h), so the layer
// driver (coordinator/layer_driver.h) is one code path for every topology.
//
//   RequestPayload ─► fill ─► Post ─► AwaitReply ─► (reply valid until the next Post)
//                                 └─► Abandon (error paths)
//
// Thread-safety: one caller at a time (the coordinator's step thread).
// Failure: Post and AwaitReply return UNAVAILABLE naming the worker when it
// is lost (its process exited, its connection broke), DEADLINE_EXCEEDED when
// its reply takes longer than the step timeout, and the worker's own error
// (its code, its message prefixed with the worker's name) when it refused
// the request. After an error the client may be used again once its worker
// serves again.
#ifndef MOEFLOW_DATAFLOW_WORKER_CLIENT_H_
#define MOEFLOW_DATAFLOW_WORKER_CLIENT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "dataflow/wire.h"

namespace moeflow::dataflow {

// Runs on a reply as soon as it is in.
class ReplyHook {
 public:
  virtual ~ReplyHook() = default;
  virtual absl::Status OnReply(absl::Span<const uint8_t> payload) = 0;
};

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  virtual const std::string& name() const = 0;
  // Where the next request's payload goes (kSectionAlign-aligned).
  virtual absl::Span<uint8_t> RequestPayload() = 0;
  // Sends `header` and the first `payload_bytes` of RequestPayload().
  // `hook` (may be null): an in-process client runs the compute now, inside
  // Post, and calls hook->OnReply as soon as the compute sends its reply —
  // before the compute returns, so that what the hook starts (the expert
  // requests) overlaps what the compute does after its reply (the shared
  // experts); a hook error is Post's. Remote clients never call the hook:
  // their caller awaits the reply and runs it.
  virtual absl::Status Post(const RequestHeader& header, size_t payload_bytes, ReplyHook* hook) = 0;
  // Whether Post ran the hook (in process, with a hook).
  virtual bool hook_ran() const = 0;
  // The reply payload of the request posted last, checked to be
  // `expected_bytes` long (-1: any).
  virtual absl::StatusOr<absl::Span<const uint8_t>> AwaitReply(int64_t expected_bytes) = 0;
  // Forgets a posted request whose reply will not be awaited.
  virtual void Abandon() = 0;
  // True when the compute runs in the caller's thread (nothing to wait for).
  virtual bool in_process() const = 0;
  // The worker's compute is about to wait for, or has just received, work
  // from elsewhere: WorkerCompute::Idle / Busy for an in-process compute
  // whose caller waits on other processes; no-ops for remote workers.
  virtual void Idle() {}
  virtual void Busy() {}
};

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WORKER_CLIENT_H_
