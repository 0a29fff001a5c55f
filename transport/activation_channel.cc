#include "transport/activation_channel.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::transport {
namespace {

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Statuses with which UCX completes requests whose peer is gone.
bool IsPeerFailure(ucs_status_t status) {
  switch (status) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CANCELED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_IO_ERROR:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ActivationChannel>> ActivationChannel::Create(
    UcxEndpoint& endpoint, const ActivationChannelOptions& options) {
  if (options.send_buffer_bytes <= 0 || options.recv_buffer_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "channel to '", endpoint.peer_name(), "': send_buffer_bytes (", options.send_buffer_bytes,
        ") and recv_buffer_bytes (", options.recv_buffer_bytes, ") must be > 0"));
  }
  if (options.max_in_flight <= 0 || options.spin_before_sleep_us < 0 ||
      options.yield_before_sleep_us < 0 || options.liveness_poll_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "channel to '", endpoint.peer_name(), "': need max_in_flight > 0 (got ",
        options.max_in_flight, "), spin_before_sleep_us >= 0 (got ", options.spin_before_sleep_us,
        "), yield_before_sleep_us >= 0 (got ", options.yield_before_sleep_us,
        "), liveness_poll_ms > 0 (got ", options.liveness_poll_ms, ")"));
  }
  UcxContext& context = endpoint.worker().context();
  auto send_region = UcxMemoryRegion::Allocate(context, options.send_buffer_bytes);
  if (!send_region.ok()) return send_region.status();
  auto recv_region = UcxMemoryRegion::Allocate(context, options.recv_buffer_bytes);
  if (!recv_region.ok()) return recv_region.status();
  return std::unique_ptr<ActivationChannel>(
      new ActivationChannel(&endpoint, options, std::move(*send_region), std::move(*recv_region)));
}

ActivationChannel::ActivationChannel(UcxEndpoint* endpoint, const ActivationChannelOptions& options,
                                     std::unique_ptr<UcxMemoryRegion> send_region,
                                     std::unique_ptr<UcxMemoryRegion> recv_region)
    : endpoint_(endpoint),
      worker_(&endpoint->worker()),
      options_(options),
      send_region_(std::move(send_region)),
      recv_region_(std::move(recv_region)),
      slots_(options.max_in_flight) {
  free_slots_.reserve(slots_.size());
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) free_slots_.push_back(i);
}

ActivationChannel::~ActivationChannel() {
  for (Slot& slot : slots_) {
    if (slot.state != SlotState::kFree) FreeSlot(slot);
  }
}

absl::Span<uint8_t> ActivationChannel::send_buffer() const {
  return absl::MakeSpan(send_region_->data(), send_region_->size());
}

absl::Span<uint8_t> ActivationChannel::recv_buffer() const {
  return absl::MakeSpan(recv_region_->data(), recv_region_->size());
}

ActivationChannel::Slot* ActivationChannel::AcquireSlot(uint32_t* index) {
  if (free_slots_.empty()) return nullptr;
  *index = free_slots_.back();
  free_slots_.pop_back();
  Slot& slot = slots_[*index];
  slot.state = SlotState::kInProgress;
  slot.completed = false;
  slot.status = UCS_OK;
  slot.request = nullptr;
  slot.bytes = 0;
  return &slot;
}

ActivationChannel::Slot& ActivationChannel::SlotFor(TransferId id) {
  MOEFLOW_CHECK(id.slot < slots_.size());
  Slot& slot = slots_[id.slot];
  MOEFLOW_CHECK(slot.generation == id.generation && slot.state != SlotState::kFree);
  return slot;
}

void ActivationChannel::OnSendDone(void* /*request*/, ucs_status_t status, void* user_data) {
  auto* slot = static_cast<Slot*>(user_data);
  slot->status = status;
  slot->completed = true;
}

void ActivationChannel::OnRecvDone(void* /*request*/, ucs_status_t status,
                                   const ucp_tag_recv_info_t* info, void* user_data) {
  auto* slot = static_cast<Slot*>(user_data);
  slot->status = status;
  if (status == UCS_OK) slot->bytes = info->length;
  slot->completed = true;
}

TransferId ActivationChannel::Posted(uint32_t index, Slot& slot, void* request) {
  if (request == nullptr) {  // Completed inside the post.
    slot.state = SlotState::kDone;
    if (slot.is_recv) slot.bytes = slot.recv_info.length;
  } else if (UCS_PTR_IS_ERR(request)) {
    slot.status = UCS_PTR_STATUS(request);
    slot.state = SlotState::kError;
  } else {
    slot.request = request;
  }
  return TransferId{index, slot.generation};
}

TransferId ActivationChannel::PostSend(ActivationTag tag, absl::Span<const uint8_t> bytes) {
  MOEFLOW_CHECK(send_region_->Contains(bytes.data(), bytes.size()));
  uint32_t index = 0;
  Slot* slot = AcquireSlot(&index);
  if (slot == nullptr) return TransferId{};
  slot->is_recv = false;
  slot->tag = tag;
  slot->bytes = bytes.size();
  if (endpoint_->failed()) {
    slot->state = SlotState::kError;
    return TransferId{index, slot->generation};
  }
  ucp_request_param_t params;
  params.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH;
  params.cb.send = &ActivationChannel::OnSendDone;
  params.user_data = slot;
  params.memh = send_region_->get();
  void* request =
      ucp_tag_send_nbx(endpoint_->get(), bytes.data(), bytes.size(), tag.Encode(), &params);
  return Posted(index, *slot, request);
}

TransferId ActivationChannel::PostRecv(ActivationTag tag, absl::Span<uint8_t> into) {
  MOEFLOW_CHECK(recv_region_->Contains(into.data(), into.size()));
  uint32_t index = 0;
  Slot* slot = AcquireSlot(&index);
  if (slot == nullptr) return TransferId{};
  slot->is_recv = true;
  slot->tag = tag;
  slot->recv_info = ucp_tag_recv_info_t{};
  if (endpoint_->failed()) {
    slot->state = SlotState::kError;
    return TransferId{index, slot->generation};
  }
  ucp_request_param_t params;
  // Receives always complete through the callback: measured with Debian's
  // UCX 1.13, an immediately completed ucp_tag_recv_nbx (message already in
  // the unexpected queue) leaves recv_info.tag_info zeroed, so the received
  // length would read as 0.
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_MEMH | UCP_OP_ATTR_FIELD_RECV_INFO |
                        UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  params.cb.recv = &ActivationChannel::OnRecvDone;
  params.user_data = slot;
  params.memh = recv_region_->get();
  params.recv_info.tag_info = &slot->recv_info;
  void* request = ucp_tag_recv_nbx(worker_->get(), into.data(), into.size(), tag.Encode(),
                                   kActivationTagMaskAll, &params);
  return Posted(index, *slot, request);
}

void ActivationChannel::Reap(Slot& slot) {
  if (slot.state != SlotState::kInProgress || !slot.completed) return;
  ucp_request_free(slot.request);
  slot.request = nullptr;
  slot.state = slot.status == UCS_OK ? SlotState::kDone : SlotState::kError;
}

TransferState ActivationChannel::Check(TransferId id) {
  if (!id.valid()) return TransferState::kError;
  Slot& slot = SlotFor(id);
  if (slot.state == SlotState::kInProgress) {
    worker_->Progress();
    Reap(slot);
  }
  switch (slot.state) {
    case SlotState::kDone:
      return TransferState::kDone;
    case SlotState::kInProgress:
      // A receive whose only sender is dead will never complete.
      return endpoint_->failed() ? TransferState::kError : TransferState::kInProgress;
    default:
      return TransferState::kError;
  }
}

absl::Status ActivationChannel::SlotError(const Slot& slot) const {
  const char* what = slot.is_recv ? "receive" : "send";
  if (endpoint_->failed() || IsPeerFailure(slot.status)) {
    absl::Status peer = endpoint_->PeerError();
    return absl::UnavailableError(
        absl::StrCat(what, " of ", slot.tag.ToString(), " failed: ",
                     peer.ok() ? absl::StrCat("UCX peer '", endpoint_->peer_name(),
                                              "': ", ucs_status_string(slot.status))
                               : std::string(peer.message())));
  }
  if (slot.status == UCS_ERR_MESSAGE_TRUNCATED) {
    return absl::InternalError(absl::StrCat("message ", slot.tag.ToString(), " from peer '",
                                            endpoint_->peer_name(),
                                            "' is larger than its receive span"));
  }
  return absl::InternalError(absl::StrCat(what, " of ", slot.tag.ToString(), " to/from peer '",
                                          endpoint_->peer_name(),
                                          "': ", ucs_status_string(slot.status)));
}

absl::StatusOr<size_t> ActivationChannel::Wait(TransferId id, int timeout_ms) {
  if (!id.valid()) {
    return absl::ResourceExhaustedError(absl::StrCat("channel to '", endpoint_->peer_name(),
                                                     "': all ", options_.max_in_flight,
                                                     " transfer slots in use (max_in_flight)"));
  }
  Slot& slot = SlotFor(id);
  const int64_t start_us = NowUs();
  const int64_t deadline_us = start_us + int64_t{timeout_ms} * 1000;
  // Short spin: a reply that is microseconds away is not worth a sleep.
  const int64_t spin_end_us = start_us + options_.spin_before_sleep_us;
  while (slot.state == SlotState::kInProgress && !slot.completed && NowUs() < spin_end_us) {
    worker_->Progress();
  }
  // Polite poll: other runnable threads first, then this transfer.
  const int64_t yield_end_us = spin_end_us + options_.yield_before_sleep_us;
  while (slot.state == SlotState::kInProgress && !slot.completed && NowUs() < yield_end_us) {
    if (worker_->Progress() == 0) sched_yield();
  }
  bool slept_to_timeout = false;  // the last sleep ended by its timeout, not an event
  while (true) {
    while (worker_->Progress() != 0) {
    }
    Reap(slot);
    if (slot.state != SlotState::kInProgress) {
      if (slept_to_timeout) ++late_wakeups_;  // it had arrived, and the fd said nothing
      break;
    }
    if (endpoint_->failed()) {
      absl::Status error = SlotError(slot);
      FreeSlot(slot);
      return error;
    }
    const int64_t left_us = deadline_us - NowUs();
    if (left_us <= 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          slot.is_recv ? "receive of " : "send of ", slot.tag.ToString(), " from/to peer '",
          endpoint_->peer_name(), "' did not complete in ", timeout_ms, " ms"));
    }
    const int sleep_ms =
        static_cast<int>(std::min<int64_t>((left_us + 999) / 1000, options_.liveness_poll_ms));
    slept_to_timeout = false;
    switch (worker_->WaitForEvents(sleep_ms)) {
      case WorkerWait::kEvents:
        break;
      case WorkerWait::kTimeout:
        slept_to_timeout = true;
        worker_->ProgressKeepalive();  // A quiet peer may be a dead one.
        break;
      case WorkerWait::kError:
        return absl::InternalError(absl::StrCat(
            "waiting on the UCX worker's event fd failed (peer '", endpoint_->peer_name(), "')"));
    }
  }
  if (slot.state == SlotState::kDone) {
    const size_t bytes = slot.bytes;
    FreeSlot(slot);
    return bytes;
  }
  absl::Status error = SlotError(slot);
  FreeSlot(slot);
  return error;
}

std::string ActivationChannel::LateWakeupsNote() const {
  if (late_wakeups_ == 0) return "";
  return absl::StrCat(late_wakeups_, " waits on the channel to '", endpoint_->peer_name(),
                      "' found their transfer complete only at a timed-out poll (the event fd "
                      "was not signalled)");
}

void ActivationChannel::Release(TransferId id) {
  if (!id.valid()) return;
  FreeSlot(SlotFor(id));
}

void ActivationChannel::FreeSlot(Slot& slot) {
  if (slot.state == SlotState::kInProgress && !slot.completed) {
    if (slot.is_recv) ucp_request_cancel(worker_->get(), slot.request);
  }
  if (slot.request != nullptr) ucp_request_free(slot.request);  // No callback after this.
  slot.request = nullptr;
  slot.state = SlotState::kFree;
  ++slot.generation;
  free_slots_.push_back(static_cast<uint32_t>(&slot - slots_.data()));
}

}  // namespace moeflow::transport
