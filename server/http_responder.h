// The answer to one HTTP request, written from any thread: HttpResponder
// hands response bytes to the HttpServer's I/O thread (http_server.h)
// through a shared OutputQueue and learns when the client goes away.
//
// Role in the data flow: the server gives each complete request's handler
// (OpenAiApi) a responder; the handler answers at once (Send) or streams
// (StartStream, Write per SSE event / NDJSON line, EndStream) from the
// generation scheduler's thread. When the peer closes first, the server
// marks the responder closed(): Write() returns false and the on-close
// callback runs once, so the request can be cancelled.
//
// Thread-safety: every method may be called from any thread; a responder
// may outlive its connection and the server (its output is then dropped).
// Failure: none reported beyond Write()'s false; a responder dropped
// without ending its response ends it itself (500, or the chunked body
// closed) so the connection never hangs.
#ifndef MOEFLOW_SERVER_HTTP_RESPONDER_H_
#define MOEFLOW_SERVER_HTTP_RESPONDER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace moeflow::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

class HttpServer;

namespace internal {
// Output handed from responders (any thread) to the I/O thread. Shared with
// the responders, so a responder that outlives the server only sees
// `accepting == false`.
struct PendingOutput {
  uint64_t connection_id;
  std::string data;
  bool end_of_response;
  bool close_after;
};
struct OutputQueue {
  absl::Mutex mu;
  std::vector<PendingOutput> pending ABSL_GUARDED_BY(mu);
  bool accepting ABSL_GUARDED_BY(mu) = true;
  int wake_fd = -1;  // eventfd of the I/O thread
  // Returns false when the server is gone.
  bool Push(PendingOutput output);
};
}  // namespace internal

// The answer to one request. Either Send() once, or StartStream() then
// Write()* then EndStream(). Thread-safe; may outlive the connection.
class HttpResponder {
 public:
  // A complete response.
  void Send(int status, HttpHeaders headers, std::string body);
  // A chunked response; Write() sends one chunk at once (a flush per event).
  void StartStream(int status, HttpHeaders headers);
  // Returns false when the client is gone (the data is dropped).
  bool Write(std::string data);
  void EndStream();

  // The client went away before the response ended.
  bool closed() const { return closed_.load(); }
  // Runs `callback` once when the client goes away before the response ends
  // (at once if it already has). Not called after the response ended.
  void SetOnClose(std::function<void()> callback);

  // A responder dropped without ending its response ends it (500 when
  // nothing was sent, else the chunked body is closed) so the connection
  // does not hang.
  ~HttpResponder();

  // Headers added to every response (CORS); set by the server.
  const HttpHeaders& extra_headers() const { return extra_headers_; }

 private:
  friend class HttpServer;
  HttpResponder(std::shared_ptr<internal::OutputQueue> queue, uint64_t connection_id,
                bool keep_alive, HttpHeaders extra)
      : queue_(std::move(queue)),
        connection_id_(connection_id),
        keep_alive_(keep_alive),
        extra_headers_(std::move(extra)) {}
  void MarkClosed();
  bool Push(std::string data, bool end_of_response, bool close_after);

  std::shared_ptr<internal::OutputQueue> queue_;
  const uint64_t connection_id_;
  const bool keep_alive_;
  const HttpHeaders extra_headers_;
  std::atomic<bool> closed_{false};
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_close_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_HTTP_RESPONDER_H_
