// ActivationChannel: the per-peer message API of moeflow's data plane.
//
// Role: the coordinator holds one channel per worker (and each worker one per
// peer). Each layer of each step, the coordinator stages hidden states in the
// channel's send buffer and posts a send; the worker has posted a receive for
// that (step, layer, kind) into its receive buffer, computes, and posts the
// reply the same way. Both buffers are registered with UCX once, at Create,
// with the size the deployment needs (max batch tokens × row bytes): no step
// allocates or registers memory.
//
// The API follows NIXL's shape: post, check (in progress is a value, not an
// error), wait, release. Tags (activation_tag.h) keep layers, steps and kinds
// apart.
//
// Thread-safety: none. A channel, its endpoint and its worker are used by one
// thread (the process's data-plane thread); several channels may share that
// worker and thread. Other threads wake it only through UcxWorker::Signal().
//
// Failure: Post/Check return TransferState (hot path, no allocation). Wait
// returns absl::Status:
//   DEADLINE_EXCEEDED   nothing arrived in timeout_ms; the transfer stays
//                       posted (Wait again, or Release it).
//   UNAVAILABLE         the peer died or the connection reset; the message
//                       names the peer and the tag.
//   RESOURCE_EXHAUSTED  the Post found no free slot (max_in_flight).
//   INTERNAL            a UCX error, or a message larger than the receive span.
// Programmer errors (a span outside the registered buffer, a stale or foreign
// TransferId) abort with MOEFLOW_CHECK.
//
// Transfer slot lifecycle:
//
//   FREE --PostSend/PostRecv--> IN_PROGRESS --(UCX completes)--> DONE
//     ^                              |    \---(error, dead peer)--> ERROR
//     |                              |                               |
//     +---- Wait() returns OK or an error other than DEADLINE_EXCEEDED,
//           or Release() from any state (an in-progress receive is cancelled)
#ifndef MOEFLOW_TRANSPORT_ACTIVATION_CHANNEL_H_
#define MOEFLOW_TRANSPORT_ACTIVATION_CHANNEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "transport/activation_tag.h"
#include "transport/transport_config.h"
#include "transport/ucx_handles.h"

namespace moeflow::transport {

enum class [[nodiscard]] TransferState : uint8_t{
    kDone,
    kInProgress,
    kError,
};

// Names one posted transfer of one channel. A plain value; stale ids (used
// after their slot was released) are caught by the generation.
struct TransferId {
  static constexpr uint32_t kNoSlot = ~uint32_t{0};
  uint32_t slot = kNoSlot;
  uint32_t generation = 0;
  bool valid() const { return slot != kNoSlot; }
};

class ActivationChannel {
 public:
  // Registers send and receive buffers of the sizes in `options` for traffic
  // with `endpoint`'s peer. The endpoint (and its worker) must outlive the
  // channel. INVALID_ARGUMENT for bad options, INTERNAL if registration fails.
  static absl::StatusOr<std::unique_ptr<ActivationChannel>> Create(
      UcxEndpoint& endpoint, const ActivationChannelOptions& options);
  // Releases every transfer still posted.
  ~ActivationChannel();
  ActivationChannel(const ActivationChannel&) = delete;
  ActivationChannel& operator=(const ActivationChannel&) = delete;

  // The registered buffers. Stage outgoing bytes in send_buffer(); received
  // bytes land in the part of recv_buffer() a PostRecv names.
  absl::Span<uint8_t> send_buffer() const;
  absl::Span<uint8_t> recv_buffer() const;

  // Posts a tagged send of `bytes`, which must lie inside send_buffer() and
  // stay unchanged until the transfer is DONE. Returns an invalid id (Check:
  // kError, Wait: RESOURCE_EXHAUSTED) if max_in_flight transfers are posted.
  [[nodiscard]] TransferId PostSend(ActivationTag tag, absl::Span<const uint8_t> bytes);
  // Posts a receive of the message with exactly `tag` into `into`, which must
  // lie inside recv_buffer(); the message may be shorter than `into`.
  [[nodiscard]] TransferId PostRecv(ActivationTag tag, absl::Span<uint8_t> into);

  // Makes progress without blocking and reports the transfer's state. Does
  // not release the slot.
  TransferState Check(TransferId id);

  // Blocks (spinning at most spin_before_sleep_us, polling between
  // sched_yield() calls for yield_before_sleep_us, then sleeping on the
  // worker's event fd) until the transfer completes, fails, or timeout_ms
  // passes. On OK returns the bytes moved (received length for receives).
  // Releases the slot unless it returns DEADLINE_EXCEEDED.
  absl::StatusOr<size_t> Wait(TransferId id, int timeout_ms);

  // Returns the slot to FREE. An in-progress receive is cancelled; an
  // in-progress send keeps moving inside UCX (don't overwrite its bytes until
  // the peer has them). No-op for an invalid id.
  void Release(TransferId id);

  // Sleeps in Wait() that ran to their timeout (liveness_poll_ms) although
  // the transfer had completed meanwhile (found by the progress right
  // after): the event fd was not signalled. Diagnostics (0 in every launch
  // measured on UCX 1.13 sm,self); owner thread only.
  int64_t late_wakeups() const { return late_wakeups_; }
  // One line for a log when late_wakeups() > 0 ("N waits ..."); empty when 0.
  std::string LateWakeupsNote() const;

  UcxEndpoint& endpoint() const { return *endpoint_; }
  const ActivationChannelOptions& options() const { return options_; }

 private:
  enum class SlotState : uint8_t { kFree, kInProgress, kDone, kError };
  struct Slot {
    uint32_t generation = 0;
    SlotState state = SlotState::kFree;
    bool is_recv = false;
    // Set by the UCX completion callbacks (inside Progress, same thread).
    bool completed = false;
    ucs_status_t status = UCS_OK;
    void* request = nullptr;
    size_t bytes = 0;
    ActivationTag tag;
    ucp_tag_recv_info_t recv_info{};
  };

  ActivationChannel(UcxEndpoint* endpoint, const ActivationChannelOptions& options,
                    std::unique_ptr<UcxMemoryRegion> send_region,
                    std::unique_ptr<UcxMemoryRegion> recv_region);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnRecvDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                         void* user_data);

  Slot* AcquireSlot(uint32_t* index);
  Slot& SlotFor(TransferId id);
  // Moves a completed IN_PROGRESS slot to DONE/ERROR and frees its request.
  void Reap(Slot& slot);
  // Records the outcome of a post that UCX answered at once.
  TransferId Posted(uint32_t index, Slot& slot, void* request);
  absl::Status SlotError(const Slot& slot) const;
  void FreeSlot(Slot& slot);

  UcxEndpoint* endpoint_;
  UcxWorker* worker_;
  ActivationChannelOptions options_;
  std::unique_ptr<UcxMemoryRegion> send_region_;
  std::unique_ptr<UcxMemoryRegion> recv_region_;
  // Sized once (max_in_flight); never reallocated, so callbacks may hold
  // Slot pointers.
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  int64_t late_wakeups_ = 0;
};

}  // namespace moeflow::transport

#endif  // MOEFLOW_TRANSPORT_ACTIVATION_CHANNEL_H_
