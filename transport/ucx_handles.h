// RAII owners of UCX handles: the bottom layer of moeflow's data plane.
//
// Role: the coordinator and every worker process create one UcxContext and one
// UcxWorker; the worker's address travels to peers over gRPC
// (WorkerService.GetTransportAddress / Connect); each peer's address becomes a
// UcxEndpoint; buffers that activations move through are UcxMemoryRegions.
// ActivationChannel (activation_channel.h) builds the per-peer message API on
// top of these.
//
// Ownership and order: a UcxWorker must outlive its endpoints, and the
// UcxContext must outlive its workers and memory regions (declare them in
// that order; destruction runs in reverse). None of these classes is movable:
// UCX callbacks hold pointers to them.
//
// Thread-safety: the context is thread-safe. A UcxWorker (and its endpoints)
// is created in UCS_THREAD_MODE_SINGLE: only one thread may use it at a time,
// except UcxWorker::Signal(), which any thread may call to wake it.
//
// Failure: setup calls return absl::Status (INTERNAL for UCX errors, with the
// UCX message; INVALID_ARGUMENT for bad addresses or config values;
// UNAVAILABLE when a peer can't be reached). Peer death is reported by the
// endpoint (failed() / PeerError()) because endpoints are created with
// UCP_ERR_HANDLING_MODE_PEER: a dead peer surfaces as an error, not a hang.
//
// Endpoint lifecycle:
//
//   Create --> CONNECTED --(UCX error callback: peer died / reset)--> FAILED
//                  |                                                   |
//                  +---------------- Close() / destructor -------------+--> CLOSED
//   (Close flushes a CONNECTED endpoint; a FAILED one is closed with FORCE.)
#ifndef MOEFLOW_TRANSPORT_UCX_HANDLES_H_
#define MOEFLOW_TRANSPORT_UCX_HANDLES_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "transport/transport_config.h"

namespace moeflow::transport {

// Status for a failed UCX call: INTERNAL, naming what was attempted.
absl::Status UcxError(absl::string_view what, ucs_status_t status);

// One per process: transports and features (tag matching, RMA, wakeup).
class UcxContext {
 public:
  // Reads the UCX_* environment, then applies `config` on top of it.
  // INVALID_ARGUMENT if UCX rejects a config value, INTERNAL if ucp_init fails.
  static absl::StatusOr<std::unique_ptr<UcxContext>> Create(const TransportConfig& config);
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h get() const { return context_; }
  const TransportConfig& config() const { return config_; }

 private:
  UcxContext(ucp_context_h context, TransportConfig config)
      : context_(context), config_(std::move(config)) {}
  ucp_context_h context_;
  TransportConfig config_;
};

// What a blocking wait on the worker's event fd ended with.
enum class [[nodiscard]] WorkerWait : uint8_t{
    kEvents,   // Something may have arrived: call Progress() until it returns 0.
    kTimeout,  // Nothing happened within timeout_ms.
    kError,    // ucp_worker_arm or poll failed (a bug or a broken fd).
};

// A progress engine with its own address. Progress is driven by the thread
// that owns it; waiting blocks on the worker's event fd, so an idle worker
// costs no CPU.
class UcxWorker {
 public:
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(UcxContext& context);
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  // Runs UCX progress once; returns the number of events processed (call
  // again until 0 before sleeping).
  unsigned Progress() { return ucp_worker_progress(worker_); }

  // Runs enough progress calls for UCP to do one keepalive round: UCP checks
  // peers only on every 32nd ucp_worker_progress call
  // (UCP_WORKER_KEEPALIVE_ITER_SKIP in ucp_worker.c), which a worker that
  // sleeps between events may not reach for seconds. Call on liveness ticks.
  void ProgressKeepalive() {
    for (int i = 0; i < kKeepaliveProgressCalls; ++i) ucp_worker_progress(worker_);
  }

  // Sleeps until the worker has events, Signal() is called, or timeout_ms
  // passes (-1: forever). Call Progress() until it returns 0 first (UCX's
  // arm protocol); if events are already pending this returns kEvents at once.
  WorkerWait WaitForEvents(int timeout_ms);

  // Wakes a WaitForEvents() in progress. Safe from any thread.
  void Signal();

  // Opaque address blob for peers' ucp_ep_create (send it over gRPC).
  const std::string& address() const { return address_; }
  ucp_worker_h get() const { return worker_; }
  UcxContext& context() const { return *context_; }

 private:
  static constexpr int kKeepaliveProgressCalls = 32;
  UcxWorker(UcxContext* context, ucp_worker_h worker, int event_fd, std::string address)
      : context_(context), worker_(worker), event_fd_(event_fd), address_(std::move(address)) {}
  UcxContext* context_;
  ucp_worker_h worker_;
  int event_fd_;
  std::string address_;
};

// A connection to one peer's worker, with peer-failure detection.
class UcxEndpoint {
 public:
  // `peer_address` is the peer's UcxWorker::address(); `peer_name` names the
  // peer in errors. INVALID_ARGUMENT for an empty address, UNAVAILABLE if UCX
  // finds no usable transport to it (e.g. tls mismatch).
  static absl::StatusOr<std::unique_ptr<UcxEndpoint>> Create(UcxWorker& worker,
                                                             absl::string_view peer_address,
                                                             std::string peer_name);
  // Closes the endpoint (see Close); errors are ignored here.
  ~UcxEndpoint();
  UcxEndpoint(const UcxEndpoint&) = delete;
  UcxEndpoint& operator=(const UcxEndpoint&) = delete;

  // Flushes outstanding sends (or force-closes a failed endpoint), progressing
  // the worker for at most timeout_ms. DEADLINE_EXCEEDED if the flush did not
  // finish (the endpoint is then released with the worker), UNAVAILABLE if the
  // peer failed. Idempotent.
  absl::Status Close(int timeout_ms);

  // True once UCX reported the peer dead or the connection reset.
  bool failed() const { return error_ != UCS_OK; }
  // UNAVAILABLE naming the peer and UCX's reason; OK if not failed.
  absl::Status PeerError() const;

  const std::string& peer_name() const { return peer_name_; }
  ucp_ep_h get() const { return ep_; }
  UcxWorker& worker() const { return *worker_; }

 private:
  UcxEndpoint(UcxWorker* worker, std::string peer_name)
      : worker_(worker), peer_name_(std::move(peer_name)) {}
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  UcxWorker* worker_;
  std::string peer_name_;
  ucp_ep_h ep_ = nullptr;
  // Written by the error callback, which runs inside Progress() on the
  // owning thread: no synchronization needed.
  ucs_status_t error_ = UCS_OK;
};

// Memory registered with UCX (ucp_mem_map): zero-copy transfers from and into
// it, and an rkey that lets peers access it remotely. Either owns its memory
// (Allocate: page-aligned and pre-faulted, so no step ever page-faults) or
// registers caller-owned memory (Register) that must outlive it.
class UcxMemoryRegion {
 public:
  static absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> Allocate(UcxContext& context,
                                                                   size_t bytes);
  static absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> Register(UcxContext& context, void* data,
                                                                   size_t bytes);
  ~UcxMemoryRegion();
  UcxMemoryRegion(const UcxMemoryRegion&) = delete;
  UcxMemoryRegion& operator=(const UcxMemoryRegion&) = delete;

  // Packed remote key, to send to a peer (over gRPC) for RMA into this region.
  absl::StatusOr<std::string> PackRemoteKey() const;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool Contains(const void* p, size_t n) const {
    auto* b = static_cast<const uint8_t*>(p);
    return b >= data_ && n <= size_ && b - data_ <= static_cast<ptrdiff_t>(size_ - n);
  }
  ucp_mem_h get() const { return memh_; }

 private:
  UcxMemoryRegion(UcxContext* context, uint8_t* data, size_t size, bool owned, ucp_mem_h memh)
      : context_(context), data_(data), size_(size), owned_(owned), memh_(memh) {}
  UcxContext* context_;
  uint8_t* data_;
  size_t size_;
  bool owned_;
  ucp_mem_h memh_;
};

// A peer's unpacked remote key, bound to the endpoint it was unpacked on
// (which must outlive it).
class UcxRemoteKey {
 public:
  // INVALID_ARGUMENT if `packed` is not a key UCX can unpack for `endpoint`.
  static absl::StatusOr<std::unique_ptr<UcxRemoteKey>> Unpack(UcxEndpoint& endpoint,
                                                              absl::string_view packed);
  ~UcxRemoteKey();
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  ucp_rkey_h get() const { return rkey_; }

 private:
  explicit UcxRemoteKey(ucp_rkey_h rkey) : rkey_(rkey) {}
  ucp_rkey_h rkey_;
};

}  // namespace moeflow::transport

#endif  // MOEFLOW_TRANSPORT_UCX_HANDLES_H_
