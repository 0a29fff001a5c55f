// A WorkerClient whose worker compute runs in the caller's process and
// thread: "in process" as one more transport. Post runs the compute's Handle
// at once; its reply lands in this client's buffer (and, with a hook, is
// handed to the hook the moment the compute sends it).
//
// Role in the data flow: the single-process topology (coordinator/
// local_topology.h: attention and expert computes both in process) and
// `moeflow launch`'s default CPU gpu worker (in the coordinator's process).
//
// Thread-safety: one caller at a time (as WorkerClient). Failure: the
// compute's Handle errors, prefixed with the worker's name.
#ifndef MOEFLOW_DATAFLOW_IN_PROCESS_CLIENT_H_
#define MOEFLOW_DATAFLOW_IN_PROCESS_CLIENT_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "dataflow/layer_stats.h"
#include "dataflow/worker_client.h"
#include "dataflow/worker_compute.h"

namespace moeflow::dataflow {

class InProcessClient final : public WorkerClient {
 public:
  // `compute` (loaded) must outlive the client. `rest_between_calls`: the
  // caller waits on other processes between its calls (Idle / Busy reach
  // the compute); false when every worker runs in this process, where the
  // pool's threads are better left spinning.
  InProcessClient(std::string name, WorkerCompute* compute, bool rest_between_calls);

  const std::string& name() const override { return name_; }
  absl::Span<uint8_t> RequestPayload() override { return request_; }
  absl::Status Post(const RequestHeader& header, size_t payload_bytes, ReplyHook* hook) override;
  bool hook_ran() const override { return hook_ran_; }
  absl::StatusOr<absl::Span<const uint8_t>> AwaitReply(int64_t expected_bytes) override;
  void Abandon() override { replied_ = false; }
  bool in_process() const override { return true; }
  void Idle() override;
  void Busy() override;

  WorkerCompute& compute() { return *compute_; }
  // The compute's per-layer counters (as a worker process's Stats RPC).
  LayerStatsTable& stats() { return stats_; }

 private:
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  class Writer;

  const std::string name_;
  WorkerCompute* const compute_;
  const bool rest_between_calls_;
  std::unique_ptr<uint8_t, FreeDeleter> request_memory_, reply_memory_;
  absl::Span<uint8_t> request_;
  absl::Span<uint8_t> reply_;
  size_t reply_bytes_ = 0;
  bool replied_ = false;
  bool hook_ran_ = false;
  absl::Status hook_error_;
  std::thread::id caller_;  // the thread the compute last pinned
  LayerStatsTable stats_;
};

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_IN_PROCESS_CLIENT_H_
