#include "dataflow/ucx_client.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace moeflow::dataflow {

using transport::TransferId;

UcxClient::UcxClient(std::string name, transport::ActivationChannel* channel, uint8_t source,
                     WorkerLiveness* liveness, int step_timeout_ms)
    : name_(std::move(name)),
      channel_(channel),
      source_(source),
      liveness_(liveness),
      step_timeout_ms_(step_timeout_ms) {}

absl::Span<uint8_t> UcxClient::RequestPayload() {
  return channel_->send_buffer().subspan(sizeof(RequestHeader));
}

absl::Status UcxClient::Post(const RequestHeader& header, size_t payload_bytes, ReplyHook*) {
  if (!liveness_->alive()) {
    return absl::UnavailableError(
        absl::StrCat("worker ", name_, " is down: ", liveness_->why_lost()));
  }
  uint8_t* send = channel_->send_buffer().data();
  std::memcpy(send, &header, sizeof(header));
  const uint32_t seq = seq_++;
  recv_ = channel_->PostRecv(ReplyTag(seq, source_), channel_->recv_buffer());
  send_ = channel_->PostSend(RequestTag(seq),
                             absl::MakeConstSpan(send, sizeof(header) + payload_bytes));
  return absl::OkStatus();
}

absl::StatusOr<size_t> UcxClient::Await(TransferId id, const char* what, int timeout_ms) {
  if (timeout_ms == 0) timeout_ms = step_timeout_ms_;
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  while (true) {
    absl::StatusOr<size_t> r = channel_->Wait(id, 50);
    if (r.ok()) return r;
    if (r.status().code() != absl::StatusCode::kDeadlineExceeded) {
      liveness_->MarkLost(std::string(r.status().message()));
      return absl::UnavailableError(
          absl::StrCat("worker ", name_, " is unavailable (", what, "): ", r.status().message()));
    }
    if (!liveness_->alive()) {
      channel_->Release(id);
      return absl::UnavailableError(
          absl::StrCat("worker ", name_, " is unavailable (", what, "): ", liveness_->why_lost()));
    }
    if (absl::Now() > deadline) {
      channel_->Release(id);
      return absl::DeadlineExceededError(absl::StrCat("worker ", name_, ": no reply to ", what,
                                                      " within ", timeout_ms, " ms"));
    }
  }
}

absl::StatusOr<absl::Span<const uint8_t>> UcxClient::AwaitReply(int64_t expected_bytes) {
  absl::StatusOr<size_t> sent = Await(send_, "request");
  send_ = TransferId();
  if (!sent.ok()) {
    ReleaseTransfers();  // the request did not get there: no reply will come
    return sent.status();
  }
  absl::StatusOr<size_t> got = Await(recv_, "reply");
  recv_ = TransferId();
  if (!got.ok()) return got.status();
  return CheckReply(channel_->recv_buffer().subspan(0, *got), name_, expected_bytes);
}

void UcxClient::Abandon() {
  // A step that failed elsewhere: the reply this worker is sending must still
  // be received. A large reply goes by UCX rendezvous, which completes only
  // when a matching receive takes it: cancelled here, it would keep the
  // worker waiting in its send (and the next step's request behind it).
  // Bounded by kAbandonWaitMs, not step_timeout_ms: the step already failed.
  if (recv_.valid() && liveness_->alive()) {
    // Frees the transfer either way.
    (void)Await(recv_, "reply of an abandoned step", kAbandonWaitMs);
    recv_ = TransferId();
  }
  ReleaseTransfers();
}

void UcxClient::ReleaseTransfers() {
  channel_->Release(send_);
  channel_->Release(recv_);
  send_ = TransferId();
  recv_ = TransferId();
}

}  // namespace moeflow::dataflow
