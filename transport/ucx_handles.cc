#include "transport/ucx_handles.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace moeflow::transport {
namespace {

// Below this an address can't be a ucp_worker_get_address blob (the smallest
// measured with Debian's UCX 1.13 is 50 B for tcp; see
// ../shared/notes/bazel-offline.md). A cheap guard against empty or truncated
// blobs; UCX itself checks the rest when it unpacks the address.
constexpr size_t kMinWorkerAddressBytes = 16;

// Allocated regions are aligned to the page size so that registration and
// shared-memory/CMA copies work on whole pages.
constexpr size_t kRegionAlignmentBytes = 4096;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Whether a UCX_TLS list selects a shared-memory (mm) transport.
bool UsesSharedMemory(absl::string_view tls) {
  for (absl::string_view name : absl::StrSplit(tls, ',')) {
    if (name == "sm" || name == "shm" || name == "mm" || name == "posix" || name == "sysv" ||
        name == "all" || absl::StartsWith(name, "^")) {
      return true;
    }
  }
  return false;
}

}  // namespace

absl::Status UcxError(absl::string_view what, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

// ---------------------------------------------------------------- UcxContext

absl::StatusOr<std::unique_ptr<UcxContext>> UcxContext::Create(const TransportConfig& config) {
  ucp_config_t* ucp_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &ucp_config);
  if (st != UCS_OK) return UcxError("ucp_config_read", st);

  auto set = [&](const char* name, const std::string& value) -> absl::Status {
    ucs_status_t s = ucp_config_modify(ucp_config, name, value.c_str());
    if (s != UCS_OK) {
      return absl::InvalidArgumentError(absl::StrCat("UCX rejected transport setting ", name, "=\"",
                                                     value, "\": ", ucs_status_string(s)));
    }
    return absl::OkStatus();
  };
  absl::Status status = [&]() -> absl::Status {
    if (config.keepalive_interval_ms <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("keepalive_interval_ms must be > 0, got ", config.keepalive_interval_ms));
    }
    const std::string tls = config.tls.empty() ? std::string("sm,self") : config.tls;
    absl::Status s = set("TLS", tls);
    if (s.ok() && !config.net_devices.empty()) s = set("NET_DEVICES", config.net_devices);
    if (s.ok()) s = set("KEEPALIVE_INTERVAL", absl::StrCat(config.keepalive_interval_ms, "ms"));
    if (s.ok() && config.rndv_threshold_bytes < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rndv_threshold_bytes must be >= 0, got ", config.rndv_threshold_bytes));
    }
    if (s.ok() && config.rndv_threshold_bytes > 0) {
      s = set("RNDV_THRESH", absl::StrCat(config.rndv_threshold_bytes));
    }
    // UCX 1.13 leaves error handling off for the shared-memory transports
    // (UCX_{POSIX,SYSV}_ERROR_HANDLING=n, both inheriting MM_ERROR_HANDLING),
    // which keeps them out of endpoints created in peer-error mode: "sm,self"
    // would then find no transport. With it on, keepalive detects dead peers.
    if (s.ok() && UsesSharedMemory(tls)) s = set("MM_ERROR_HANDLING", "y");
    return s;
  }();
  if (!status.ok()) {
    ucp_config_release(ucp_config);
    return status;
  }

  ucp_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucp_context_h context = nullptr;
  st = ucp_init(&params, ucp_config, &context);
  ucp_config_release(ucp_config);
  if (st != UCS_OK) {
    return UcxError(absl::StrCat("ucp_init (tls=\"", config.tls, "\")"), st);
  }
  return std::unique_ptr<UcxContext>(new UcxContext(context, config));
}

UcxContext::~UcxContext() { ucp_cleanup(context_); }

// ----------------------------------------------------------------- UcxWorker

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(UcxContext& context) {
  ucp_worker_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  ucs_status_t st = ucp_worker_create(context.get(), &params, &worker);
  if (st != UCS_OK) return UcxError("ucp_worker_create", st);

  int event_fd = -1;
  st = ucp_worker_get_efd(worker, &event_fd);
  if (st != UCS_OK) {
    ucp_worker_destroy(worker);
    return UcxError("ucp_worker_get_efd", st);
  }
  ucp_address_t* address = nullptr;
  size_t address_bytes = 0;
  st = ucp_worker_get_address(worker, &address, &address_bytes);
  if (st != UCS_OK) {
    ucp_worker_destroy(worker);
    return UcxError("ucp_worker_get_address", st);
  }
  std::string blob(reinterpret_cast<const char*>(address), address_bytes);
  ucp_worker_release_address(worker, address);
  return std::unique_ptr<UcxWorker>(new UcxWorker(&context, worker, event_fd, std::move(blob)));
}

UcxWorker::~UcxWorker() { ucp_worker_destroy(worker_); }

WorkerWait UcxWorker::WaitForEvents(int timeout_ms) {
  ucs_status_t st = ucp_worker_arm(worker_);
  if (st == UCS_ERR_BUSY) return WorkerWait::kEvents;  // Events arrived since the last Progress().
  if (st != UCS_OK) return WorkerWait::kError;
  pollfd pfd{event_fd_, POLLIN, 0};
  int n = poll(&pfd, 1, timeout_ms);
  if (n > 0) return WorkerWait::kEvents;
  if (n == 0) return WorkerWait::kTimeout;
  return errno == EINTR ? WorkerWait::kEvents : WorkerWait::kError;
}

void UcxWorker::Signal() { ucp_worker_signal(worker_); }

// --------------------------------------------------------------- UcxEndpoint

absl::StatusOr<std::unique_ptr<UcxEndpoint>> UcxEndpoint::Create(UcxWorker& worker,
                                                                 absl::string_view peer_address,
                                                                 std::string peer_name) {
  if (peer_address.size() < kMinWorkerAddressBytes) {
    return absl::InvalidArgumentError(absl::StrCat("UCX address of peer '", peer_name, "' is ",
                                                   peer_address.size(),
                                                   " bytes; not a worker address"));
  }
  std::unique_ptr<UcxEndpoint> endpoint(new UcxEndpoint(&worker, std::move(peer_name)));
  ucp_ep_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxEndpoint::OnError;
  params.err_handler.arg = endpoint.get();
  ucs_status_t st = ucp_ep_create(worker.get(), &params, &endpoint->ep_);
  if (st != UCS_OK) {
    endpoint->ep_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("cannot create UCX endpoint to peer '", endpoint->peer_name_, "' (tls=\"",
                     worker.context().config().tls, "\"): ", ucs_status_string(st)));
  }
  return endpoint;
}

void UcxEndpoint::OnError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* self = static_cast<UcxEndpoint*>(arg);
  if (self->error_ == UCS_OK) self->error_ = status;
}

absl::Status UcxEndpoint::PeerError() const {
  if (error_ == UCS_OK) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("UCX peer '", peer_name_, "' failed: ", ucs_status_string(error_)));
}

absl::Status UcxEndpoint::Close(int timeout_ms) {
  if (ep_ == nullptr) return PeerError();
  ucp_request_param_t params;
  std::memset(&params, 0, sizeof(params));
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = failed() ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* request = ucp_ep_close_nbx(ep_, &params);
  ep_ = nullptr;
  if (request == nullptr) return PeerError();
  if (UCS_PTR_IS_ERR(request)) {
    if (error_ == UCS_OK) error_ = UCS_PTR_STATUS(request);
    return PeerError();
  }
  const int64_t deadline_ms = NowMs() + timeout_ms;
  while (true) {
    while (worker_->Progress() != 0) {
    }
    ucs_status_t st = ucp_request_check_status(request);
    if (st != UCS_INPROGRESS) {
      ucp_request_free(request);
      if (st != UCS_OK && error_ == UCS_OK) error_ = st;
      return PeerError();
    }
    const int64_t left_ms = deadline_ms - NowMs();
    if (left_ms <= 0) break;
    if (worker_->WaitForEvents(static_cast<int>(std::min<int64_t>(left_ms, 10))) ==
        WorkerWait::kError) {
      break;
    }
  }
  // UCX frees the request when the close completes (or with the worker).
  ucp_request_free(request);
  return absl::DeadlineExceededError(absl::StrCat("closing UCX endpoint to peer '", peer_name_,
                                                  "' did not finish in ", timeout_ms, " ms"));
}

UcxEndpoint::~UcxEndpoint() {
  // 1 s: enough to flush a few in-flight messages on a live peer; a dead
  // peer is force-closed without waiting.
  (void)Close(/*timeout_ms=*/1000);
}

// ----------------------------------------------------------- UcxMemoryRegion

absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> UcxMemoryRegion::Allocate(UcxContext& context,
                                                                           size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("cannot register a 0-byte region");
  const size_t rounded =
      (bytes + kRegionAlignmentBytes - 1) / kRegionAlignmentBytes * kRegionAlignmentBytes;
  void* data = nullptr;
  if (posix_memalign(&data, kRegionAlignmentBytes, rounded) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
  }
  std::memset(data, 0, rounded);  // Fault the pages in now, not during a step.
  auto region = Register(context, data, bytes);
  if (!region.ok()) {
    std::free(data);
    return region.status();
  }
  (*region)->owned_ = true;
  return region;
}

absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> UcxMemoryRegion::Register(UcxContext& context,
                                                                           void* data,
                                                                           size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("cannot register a 0-byte region");
  ucp_mem_map_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = data;
  params.length = bytes;
  ucp_mem_h memh = nullptr;
  ucs_status_t st = ucp_mem_map(context.get(), &params, &memh);
  if (st != UCS_OK) return UcxError(absl::StrCat("ucp_mem_map of ", bytes, " bytes"), st);
  return std::unique_ptr<UcxMemoryRegion>(
      new UcxMemoryRegion(&context, static_cast<uint8_t*>(data), bytes, /*owned=*/false, memh));
}

UcxMemoryRegion::~UcxMemoryRegion() {
  ucp_mem_unmap(context_->get(), memh_);
  if (owned_) std::free(data_);
}

absl::StatusOr<std::string> UcxMemoryRegion::PackRemoteKey() const {
  void* buffer = nullptr;
  size_t bytes = 0;
  ucs_status_t st = ucp_rkey_pack(context_->get(), memh_, &buffer, &bytes);
  if (st != UCS_OK) return UcxError("ucp_rkey_pack", st);
  std::string packed(static_cast<const char*>(buffer), bytes);
  ucp_rkey_buffer_release(buffer);
  return packed;
}

// -------------------------------------------------------------- UcxRemoteKey

absl::StatusOr<std::unique_ptr<UcxRemoteKey>> UcxRemoteKey::Unpack(UcxEndpoint& endpoint,
                                                                   absl::string_view packed) {
  if (packed.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("empty remote key from peer '", endpoint.peer_name(), "'"));
  }
  ucp_rkey_h rkey = nullptr;
  ucs_status_t st = ucp_ep_rkey_unpack(endpoint.get(), packed.data(), &rkey);
  if (st != UCS_OK) {
    return absl::InvalidArgumentError(absl::StrCat("cannot unpack remote key from peer '",
                                                   endpoint.peer_name(),
                                                   "': ", ucs_status_string(st)));
  }
  return std::unique_ptr<UcxRemoteKey>(new UcxRemoteKey(rkey));
}

UcxRemoteKey::~UcxRemoteKey() { ucp_rkey_destroy(rkey_); }

}  // namespace moeflow::transport
