// A WorkerClient over a UCX activation channel to a worker process
// (transport/activation_channel.h): the request goes out tagged
// RequestTag(seq), its reply comes back tagged ReplyTag(seq, source).
//
// Role in the data flow: the coordinator's clients of the expert workers
// and of a gpu worker in its own process (coordinator/worker_supervisor.h
// makes one per connection).
//
// Thread-safety: one caller at a time (as WorkerClient); `liveness` is read
// from the caller's thread while the supervisor's monitor writes it.
// Failure: as WorkerClient: UNAVAILABLE naming the worker (and why it is
// down) when the channel breaks or the worker is marked lost — noticed
// within one 50 ms wait slice of the mark; DEADLINE_EXCEEDED after
// step_timeout_ms without a reply.
#ifndef MOEFLOW_DATAFLOW_UCX_CLIENT_H_
#define MOEFLOW_DATAFLOW_UCX_CLIENT_H_

#include <cstdint>
#include <string>

#include "dataflow/worker_client.h"
#include "transport/activation_channel.h"

namespace moeflow::dataflow {

// Whether the worker behind a client still serves, as its supervisor sees it.
class WorkerLiveness {
 public:
  virtual ~WorkerLiveness() = default;
  virtual bool alive() const = 0;
  // Why it is not (its last error).
  virtual std::string why_lost() const = 0;
  // The data plane found it gone.
  virtual void MarkLost(const std::string& why) = 0;
};

class UcxClient final : public WorkerClient {
 public:
  // `channel` and `liveness` must outlive the client.
  UcxClient(std::string name, transport::ActivationChannel* channel, uint8_t source,
            WorkerLiveness* liveness, int step_timeout_ms);
  ~UcxClient() override { ReleaseTransfers(); }

  const std::string& name() const override { return name_; }
  absl::Span<uint8_t> RequestPayload() override;
  absl::Status Post(const RequestHeader& header, size_t payload_bytes, ReplyHook* hook) override;
  bool hook_ran() const override { return false; }
  absl::StatusOr<absl::Span<const uint8_t>> AwaitReply(int64_t expected_bytes) override;
  // Receives the reply of a posted request first (at most kAbandonWaitMs)
  // while the worker is alive, so that the worker's send completes.
  void Abandon() override;
  static constexpr int kAbandonWaitMs = 2000;
  bool in_process() const override { return false; }

 private:
  // Frees the transfers without waiting (a receive still posted is cancelled).
  void ReleaseTransfers();
  // Waits for `id` at most `timeout_ms` (step_timeout_ms when 0).
  absl::StatusOr<size_t> Await(transport::TransferId id, const char* what, int timeout_ms = 0);

  const std::string name_;
  transport::ActivationChannel* const channel_;
  const uint8_t source_;
  WorkerLiveness* const liveness_;
  const int step_timeout_ms_;
  uint32_t seq_ = 0;
  transport::TransferId send_, recv_;
};

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_UCX_CLIENT_H_
