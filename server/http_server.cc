#include "server/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::server {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// epoll user data: the listening socket and the eventfd use ids 0 and 1;
// connections start at 2.
constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;

}  // namespace

struct HttpServer::Connection {
  uint64_t id = 0;
  int fd = -1;
  std::string in;
  std::string out;
  size_t out_offset = 0;
  std::shared_ptr<HttpResponder> active;  // response outstanding
  bool close_after_write = false;
  // Output done and write side shut down; reading and discarding what the
  // client still sends until EOF or linger_until_ms, so an unread request
  // body does not turn our close into a RST that loses the response.
  bool lingering = false;
  int64_t linger_until_ms = 0;
  bool sent_continue = false;
  int64_t request_started_ms = 0;  // 0: no partial request buffered
  int64_t last_activity_ms = 0;
  uint32_t events = 0;
};

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      queue_(std::make_shared<internal::OutputQueue>()) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string port_text = std::to_string(options_.port);
  const int gai = getaddrinfo(options_.host.c_str(), port_text.c_str(), &hints, &addresses);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--host=", options_.host, ": cannot resolve: ", gai_strerror(gai)));
  }
  int last_errno = 0;
  for (addrinfo* a = addresses; a != nullptr && listen_fd_ < 0; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 512) != 0) {
      last_errno = errno;
      close(fd);
      continue;
    }
    listen_fd_ = fd;
  }
  freeaddrinfo(addresses);
  if (listen_fd_ < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ":",
                                               options_.port, ": ", std::strerror(last_errno)));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  queue_->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  MOEFLOW_CHECK(epoll_fd_ >= 0 && queue_->wake_fd >= 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.u64 = kWakeId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, queue_->wake_fd, &ev);
  next_id_ = 2;

  for (int i = 0; i < std::max(1, options_.worker_threads); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
  io_thread_ = std::thread([this] { IoLoop(); });
  return absl::OkStatus();
}

void HttpServer::StopAccepting() {
  if (!accepting_.exchange(false)) return;
  const uint64_t one = 1;
  if (queue_->wake_fd >= 0) (void)!write(queue_->wake_fd, &one, sizeof(one));
}

void HttpServer::CloseListener() {
  if (listen_fd_ < 0) return;
  if (accept_paused_until_ms_ == 0) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  close(listen_fd_);
  listen_fd_ = -1;
  accept_paused_until_ms_ = 0;
}

void HttpServer::Stop() {
  if (!io_thread_.joinable()) return;
  stopping_ = true;
  const uint64_t one = 1;
  (void)!write(queue_->wake_fd, &one, sizeof(one));
  io_thread_.join();
  {
    absl::MutexLock lock(&work_mu_);
    workers_stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  close(epoll_fd_);
  close(queue_->wake_fd);
  epoll_fd_ = -1;
}

void HttpServer::WorkerLoop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&work_mu_);
      work_mu_.Await(absl::Condition(
          +[](HttpServer* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->work_mu_) {
            return s->workers_stop_ || !s->work_.empty();
          },
          this));
      if (work_.empty()) return;  // stopping and nothing left
      task = std::move(work_.front());
      work_.pop_front();
    }
    task();
  }
}

void HttpServer::IoLoop() {
  std::vector<epoll_event> events(256);
  int64_t last_timeout_check = NowMs();
  int64_t drain_deadline = 0;
  while (true) {
    if (!accepting_) CloseListener();
    if (accept_paused_until_ms_ > 0 && NowMs() >= accept_paused_until_ms_ && listen_fd_ >= 0) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = kListenId;
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
      accept_paused_until_ms_ = 0;
    }
    if (stopping_) {
      if (drain_deadline == 0) {
        drain_deadline = NowMs() + options_.drain_timeout_ms;
        CloseListener();
      }
      // Close connections without a response in flight; finish the others.
      std::vector<uint64_t> idle;
      for (auto& [id, c] : connections_) {
        if (c->active == nullptr && c->out.size() == c->out_offset) idle.push_back(id);
      }
      for (uint64_t id : idle) CloseConnection(id);
      if (connections_.empty() || NowMs() >= drain_deadline) break;
    }
    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                             stopping_ || accept_paused_until_ms_ > 0 ? 100 : 1000);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kListenId) {
        Accept();
        continue;
      }
      if (id == kWakeId) {
        uint64_t count;
        (void)!read(queue_->wake_fd, &count, sizeof(count));
        DrainPending();
        continue;
      }
      auto it = connections_.find(id);
      if (it == connections_.end()) continue;
      Connection& c = *it->second;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) {
        CloseConnection(id);
        continue;
      }
      if (events[i].events & EPOLLOUT) {
        OnWritable(c);
        if (connections_.find(id) == connections_.end()) continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLRDHUP)) OnReadable(c);
    }
    // Output may have been queued while we handled reads.
    DrainPending();
    const int64_t now = NowMs();
    if (now - last_timeout_check >= 1000) {
      last_timeout_check = now;
      CheckTimeouts();
    }
  }
  {
    absl::MutexLock lock(&queue_->mu);
    queue_->accepting = false;
    queue_->pending.clear();
  }
  std::vector<uint64_t> ids;
  for (auto& [id, c] : connections_) ids.push_back(id);
  for (uint64_t id : ids) CloseConnection(id);
  CloseListener();
}

bool HttpServer::EvictIdleConnection() {
  // Quiet longest first; a connection that has sent nothing (or only part of
  // a request) goes before a keep-alive one between requests of equal age,
  // since it costs the server a socket and gives it nothing.
  // Bytes already waiting in a socket make it busy, not idle: a client that
  // connected and sent its request a moment ago is read before it could be
  // closed for the next one.
  Connection* victim = nullptr;
  for (auto& [id, c] : connections_) {
    if (c->active != nullptr || c->close_after_write || c->out.size() != c->out_offset) continue;
    // Quiet longest; on a tie the one accepted first.
    if (victim != nullptr &&
        (c->last_activity_ms > victim->last_activity_ms ||
         (c->last_activity_ms == victim->last_activity_ms && c->id > victim->id))) {
      continue;
    }
    int waiting = 0;
    if (ioctl(c->fd, FIONREAD, &waiting) == 0 && waiting > 0) continue;
    victim = c.get();
  }
  if (victim == nullptr) return false;
  CloseConnection(victim->id);
  evicted_connections_++;
  return true;
}

void HttpServer::Accept() {
  if (listen_fd_ < 0) return;
  // A bounded batch per event: the new connections' first bytes are read
  // between batches, so a burst of idle ones does not crowd them out.
  for (int batch = 0; batch < 64; ++batch) {
    if (static_cast<int>(connections_.size()) >= options_.max_connections &&
        !EvictIdleConnection()) {
      // Every connection has a response in flight: refuse this one.
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      close(fd);
      refused_connections_++;
      continue;
    }
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: make room, or stop polling the listening
        // socket for a moment (it stays readable; polling it would spin).
        if (EvictIdleConnection()) continue;
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        accept_paused_until_ms_ = NowMs() + 100;
      }
      return;  // EAGAIN, or an error on this one connection
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->fd = fd;
    c->last_activity_ms = NowMs();
    c->events = EPOLLIN | EPOLLRDHUP;
    epoll_event ev{};
    ev.events = c->events;
    ev.data.u64 = c->id;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    open_connections_++;
    connections_[c->id] = std::move(c);
  }
}

void HttpServer::OnReadable(Connection& c) {
  const uint64_t id = c.id;
  char buffer[65536];
  bool peer_closed = false;
  // Bounded per event so one busy client cannot starve the others.
  for (int round = 0; round < 16; ++round) {
    const ssize_t n = read(c.fd, buffer, sizeof(buffer));
    if (n > 0) {
      c.in.append(buffer, static_cast<size_t>(n));
      c.last_activity_ms = NowMs();
      if (c.request_started_ms == 0) c.request_started_ms = c.last_activity_ms;
      continue;
    }
    if (n == 0) {
      peer_closed = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      peer_closed = true;
    }
    break;
  }
  if (c.lingering) {
    c.in.clear();
    if (peer_closed) CloseConnection(id);
    return;
  }
  if (peer_closed) {
    // The client is gone (or half-closed: HTTP clients do not, so treat it
    // the same): cancel what it asked for.
    CloseConnection(id);
    return;
  }
  // Bytes pipelined behind an outstanding response are kept, within bounds.
  const int64_t max_buffer =
      options_.limits.max_header_bytes + options_.limits.max_body_bytes + 64 * 1024;
  if (static_cast<int64_t>(c.in.size()) > max_buffer && c.active != nullptr) {
    CloseConnection(id);
    return;
  }
  TryDispatch(c);
}

void HttpServer::TryDispatch(Connection& c) {
  if (c.active != nullptr || c.close_after_write || stopping_) return;
  if (c.in.empty()) {
    c.request_started_ms = 0;
    return;
  }
  HttpRequest request;
  ParseResult parsed = ParseHttpRequest(c.in, options_.limits, &request);
  if (parsed.status == ParseStatus::kError) {
    SendErrorAndClose(c, parsed.http_status, parsed.error);
    return;
  }
  if (parsed.status == ParseStatus::kIncomplete) {
    if (parsed.headers_complete && request.expect_continue && !c.sent_continue) {
      c.sent_continue = true;
      c.out += "HTTP/1.1 100 Continue\r\n\r\n";
      OnWritable(c);
    }
    return;
  }
  c.in.erase(0, parsed.consumed);
  c.sent_continue = false;
  c.request_started_ms = c.in.empty() ? 0 : NowMs();
  // Once the server stops accepting, every response closes its connection.
  if (!accepting_) request.keep_alive = false;
  auto responder = std::shared_ptr<HttpResponder>(
      new HttpResponder(queue_, c.id, request.keep_alive, extra_headers_));
  c.active = responder;
  auto shared_request = std::make_shared<HttpRequest>(std::move(request));
  absl::MutexLock lock(&work_mu_);
  work_.push_back([this, shared_request, responder] { handler_(*shared_request, responder); });
}

void HttpServer::SendErrorAndClose(Connection& c, int status, const std::string& message) {
  const std::string body = HttpErrorBody(status, message);
  c.out += SerializeResponseHead(status, {{"Content-Type", "application/json"}},
                                 static_cast<int64_t>(body.size()), /*keep_alive=*/false);
  c.out += body;
  c.close_after_write = true;
  c.in.clear();
  OnWritable(c);
}

void HttpServer::OnWritable(Connection& c) {
  const uint64_t id = c.id;
  while (c.out_offset < c.out.size()) {
    const ssize_t n =
        send(c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_offset += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    CloseConnection(id);  // EPIPE, ECONNRESET: the client is gone
    return;
  }
  if (c.out_offset == c.out.size()) {
    c.out.clear();
    c.out_offset = 0;
    if (c.close_after_write) {
      if (c.active != nullptr || stopping_) {
        CloseConnection(id);
        return;
      }
      shutdown(c.fd, SHUT_WR);
      c.lingering = true;
      c.linger_until_ms = NowMs() + 2000;
      c.in.clear();
      return;
    }
  } else if (c.out_offset > (1 << 20)) {
    c.out.erase(0, c.out_offset);
    c.out_offset = 0;
  }
  UpdateEvents(c);
}

void HttpServer::UpdateEvents(Connection& c) {
  uint32_t want = EPOLLIN | EPOLLRDHUP;
  if (c.out.size() > c.out_offset) want |= EPOLLOUT;
  if (want == c.events) return;
  c.events = want;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
}

void HttpServer::DrainPending() {
  std::vector<internal::PendingOutput> pending;
  {
    absl::MutexLock lock(&queue_->mu);
    pending.swap(queue_->pending);
  }
  std::vector<uint64_t> touched;
  for (internal::PendingOutput& p : pending) {
    auto it = connections_.find(p.connection_id);
    if (it == connections_.end()) continue;  // closed; its responder was marked closed
    Connection& c = *it->second;
    c.out += p.data;
    c.last_activity_ms = NowMs();
    if (p.end_of_response) {
      c.active = nullptr;
      if (p.close_after) c.close_after_write = true;
    }
    if (static_cast<int64_t>(c.out.size() - c.out_offset) > options_.max_output_bytes) {
      CloseConnection(c.id);  // the client stopped reading
      continue;
    }
    if (touched.empty() || touched.back() != c.id) touched.push_back(c.id);
  }
  for (uint64_t id : touched) {
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    OnWritable(*it->second);
    it = connections_.find(id);
    if (it != connections_.end()) TryDispatch(*it->second);
  }
}

void HttpServer::CheckTimeouts() {
  const int64_t now = NowMs();
  std::vector<uint64_t> idle;
  std::vector<uint64_t> slow;
  for (auto& [id, c] : connections_) {
    if (c->lingering && now > c->linger_until_ms) {
      idle.push_back(id);
      continue;
    }
    if (c->active != nullptr || c->close_after_write) continue;
    if (c->request_started_ms != 0 && now - c->request_started_ms > options_.request_timeout_ms) {
      slow.push_back(id);
    } else if (c->in.empty() && c->out.size() == c->out_offset &&
               now - c->last_activity_ms > options_.idle_timeout_ms) {
      idle.push_back(id);
    }
  }
  for (uint64_t id : slow) {
    auto it = connections_.find(id);
    if (it != connections_.end())
      SendErrorAndClose(*it->second, 408, "request not received in time");
  }
  for (uint64_t id : idle) CloseConnection(id);
}

void HttpServer::CloseConnection(uint64_t id) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  std::unique_ptr<Connection> c = std::move(it->second);
  connections_.erase(it);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  open_connections_--;
  if (c->active != nullptr) c->active->MarkClosed();
}

}  // namespace moeflow::server
