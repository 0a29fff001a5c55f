// A small HTTP/1.1 server on POSIX sockets: keep-alive, pipelining,
// Content-Length and chunked request bodies, size limits, timeouts, and
// streamed (chunked) responses for SSE / NDJSON with a flush per write.
//
// Threads:
//   * one I/O thread: epoll over the listening socket, every connection and
//     an eventfd; it accepts, reads, parses (http_message.h), writes queued
//     output and enforces timeouts. It never runs handlers.
//   * a pool of `worker_threads` handler threads: each complete request is
//     handed to the handler on one of them. A handler answers through its
//     HttpResponder, either at once or later from any thread (the generation
//     scheduler's thread streams tokens through it), so a worker is never
//     held by a long generation.
// Requests on one connection are answered in order: the next pipelined
// request is dispatched only after the previous response has ended.
//
// Client disconnect: when the peer closes (EOF, RST, EPOLLRDHUP) while a
// response is outstanding, the responder becomes closed(), its Write()s
// return false, and its on-close callback runs once (on the I/O thread) so
// the request can be cancelled.
//
// Lifecycle:
//   Create ─► Start() ─► serving ─► StopAccepting() (optional: the listening
//   socket closes, open connections are still served, each response then
//   says Connection: close) ─► Stop(): stop accepting, let outstanding
//   responses finish up to drain_timeout_ms, close every connection, join.
//
// Thread-safety: Start/Stop from one thread; HttpResponder is thread-safe.
// Failure: Start returns UNAVAILABLE when the address cannot be bound
// (naming host:port and errno); bad requests are answered with 4xx/5xx and
// the connection is closed; the server itself keeps running.
#ifndef MOEFLOW_SERVER_HTTP_SERVER_H_
#define MOEFLOW_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/http_message.h"
#include "server/http_responder.h"

namespace moeflow::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  // 0: pick a free port (see HttpServer::port()).
  int port = 0;
  HttpLimits limits;
  int worker_threads = 2;
  // A request (head and body) must arrive within this time of its first byte.
  int64_t request_timeout_ms = 30000;
  // An idle keep-alive connection (or one that never sent a byte) is closed
  // after this long.
  int64_t idle_timeout_ms = 60000;
  // Stop() waits this long for outstanding responses.
  int64_t drain_timeout_ms = 5000;
  // Queued response bytes of one connection past which the client counts as
  // gone (it stopped reading).
  int64_t max_output_bytes = 16 * 1024 * 1024;
  // Open connections at most. At the limit (or when the process runs out of
  // file descriptors) a new connection makes room by closing the idle one
  // that was quiet longest (no response outstanding: a keep-alive
  // connection between requests, or one that sent nothing or half a
  // request), so one client holding sockets cannot lock the others (or
  // /health) out; it is refused only when every connection has a response
  // in flight.
  int max_connections = 1024;
};

using HttpHandler =
    std::function<void(const HttpRequest& request, std::shared_ptr<HttpResponder> responder)>;

class HttpServer {
 public:
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();  // Stop()s

  // Headers added to every response (e.g. Access-Control-Allow-Origin).
  void SetExtraHeaders(HttpHeaders headers) { extra_headers_ = std::move(headers); }

  absl::Status Start();
  // Closes the listening socket (new connections are refused by the
  // kernel); connections already open go on being served, and each
  // response from now on closes its connection. Thread-safe, idempotent.
  void StopAccepting();
  void Stop();
  int port() const { return port_; }

  // Open connections and responses not yet ended (for /metrics and tests).
  int64_t open_connections() const { return open_connections_.load(); }
  // Idle connections closed to make room for new ones (max_connections or
  // out of file descriptors), and connections refused because none was idle.
  int64_t evicted_connections() const { return evicted_connections_.load(); }
  int64_t refused_connections() const { return refused_connections_.load(); }

 private:
  friend class HttpResponder;
  struct Connection;

  void IoLoop();
  void WorkerLoop();
  void Accept();
  void OnReadable(Connection& c);
  void OnWritable(Connection& c);
  void TryDispatch(Connection& c);
  void SendErrorAndClose(Connection& c, int status, const std::string& message);
  void CloseConnection(uint64_t id);
  void UpdateEvents(Connection& c);
  void DrainPending();
  void CheckTimeouts();
  // Closes the idle connection quiet longest (see max_connections); false
  // when every connection has a response in flight.
  bool EvictIdleConnection();
  void CloseListener();

  const HttpServerOptions options_;
  const HttpHandler handler_;
  HttpHeaders extra_headers_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> accepting_{true};
  std::atomic<int64_t> open_connections_{0};
  std::atomic<int64_t> evicted_connections_{0};
  std::atomic<int64_t> refused_connections_{0};
  // Out of file descriptors with nothing to evict: the listening socket is
  // out of the epoll set until then (I/O thread only).
  int64_t accept_paused_until_ms_ = 0;
  std::thread io_thread_;
  std::vector<std::thread> workers_;

  // Connections, touched by the I/O thread only.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Connection>> connections_;
  uint64_t next_id_ = 1;

  std::shared_ptr<internal::OutputQueue> queue_;

  // Work for the handler threads.
  absl::Mutex work_mu_;
  std::deque<std::function<void()>> work_ ABSL_GUARDED_BY(work_mu_);
  bool workers_stop_ ABSL_GUARDED_BY(work_mu_) = false;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_HTTP_SERVER_H_
