#include "dataflow/in_process_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/check.h"

namespace moeflow::dataflow {
namespace {

uint8_t* AlignedBytes(size_t bytes) {
  void* p = std::aligned_alloc(64, AlignUp(std::max<size_t>(bytes, 64)));
  MOEFLOW_CHECK(p != nullptr);
  return static_cast<uint8_t*>(p);
}

}  // namespace

class InProcessClient::Writer final : public ReplyWriter {
 public:
  Writer(InProcessClient& client, ReplyHook* hook) : client_(client), hook_(hook) {}
  uint8_t* Payload() override { return client_.reply_.data(); }
  absl::Status Send(size_t payload_bytes) override {
    MOEFLOW_CHECK(payload_bytes <= client_.reply_.size());
    client_.reply_bytes_ = payload_bytes;
    client_.replied_ = true;
    if (hook_ == nullptr) return absl::OkStatus();
    client_.hook_ran_ = true;
    client_.hook_error_ = hook_->OnReply(absl::MakeConstSpan(client_.reply_.data(), payload_bytes));
    return client_.hook_error_;
  }

 private:
  InProcessClient& client_;
  ReplyHook* hook_;
};

InProcessClient::InProcessClient(std::string name, WorkerCompute* compute, bool rest_between_calls)
    : name_(std::move(name)), compute_(compute), rest_between_calls_(rest_between_calls) {
  const size_t request = compute_->MaxRequestBytes(), reply = compute_->MaxReplyBytes();
  request_memory_.reset(AlignedBytes(request));
  reply_memory_.reset(AlignedBytes(reply));
  request_ = absl::MakeSpan(request_memory_.get(), request);
  reply_ = absl::MakeSpan(reply_memory_.get(), reply);
}

absl::Status InProcessClient::Post(const RequestHeader& header, size_t payload_bytes,
                                   ReplyHook* hook) {
  MOEFLOW_CHECK(payload_bytes <= request_.size());
  if (std::this_thread::get_id() != caller_) {
    caller_ = std::this_thread::get_id();
    compute_->PinCaller();  // this thread runs the compute's loops from now on
  }
  replied_ = false;
  hook_ran_ = false;
  hook_error_ = absl::OkStatus();
  reply_bytes_ = 0;
  proto::LayerStats stats;
  stats.set_layer(header.layer);
  const absl::Time t0 = absl::Now();
  Writer writer(*this, hook);
  absl::Status s = compute_->Handle(header, request_.subspan(0, payload_bytes), writer, stats);
  stats.set_compute_time_us(absl::ToInt64Microseconds(absl::Now() - t0));
  stats_.Record(stats);
  if (!hook_error_.ok()) return hook_error_;  // the hook's own error, not the compute's
  if (!s.ok()) {
    replied_ = false;
    return absl::Status(s.code(), absl::StrCat(name_, ": ", s.message()));
  }
  if (!replied_) return absl::InternalError(absl::StrCat(name_, ": the compute sent no reply"));
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<const uint8_t>> InProcessClient::AwaitReply(int64_t expected_bytes) {
  if (!replied_) return absl::InternalError(absl::StrCat(name_, ": no reply to await"));
  if (expected_bytes >= 0 && reply_bytes_ != static_cast<size_t>(expected_bytes)) {
    return absl::InternalError(absl::StrCat(name_, ": reply payload of ", reply_bytes_,
                                            " bytes, expected ", expected_bytes));
  }
  return absl::MakeConstSpan(reply_.data(), reply_bytes_);
}

void InProcessClient::Idle() {
  if (rest_between_calls_) compute_->Idle();
}

void InProcessClient::Busy() {
  if (rest_between_calls_) compute_->Busy();
}

}  // namespace moeflow::dataflow
