#include "server/http_responder.h"

#include <unistd.h>

#include <utility>

#include "base/check.h"
#include "server/http_message.h"

namespace moeflow::server {

bool internal::OutputQueue::Push(PendingOutput output) {
  {
    absl::MutexLock lock(&mu);
    if (!accepting) return false;
    pending.push_back(std::move(output));
  }
  const uint64_t one = 1;
  // A full eventfd counter still wakes the loop; nothing to handle.
  (void)!write(wake_fd, &one, sizeof(one));
  return true;
}

bool HttpResponder::Push(std::string data, bool end_of_response, bool close_after) {
  return queue_->Push({connection_id_, std::move(data), end_of_response, close_after});
}

HttpResponder::~HttpResponder() {
  bool started, ended;
  {
    absl::MutexLock lock(&mu_);
    started = started_;
    ended = ended_;
  }
  if (ended || closed()) return;
  if (started) {
    Push(EncodeChunk(""), true, /*close_after=*/true);
  } else {
    const std::string body = HttpErrorBody(500, "the handler sent no response");
    Push(SerializeResponseHead(500, {{"Content-Type", "application/json"}},
                               static_cast<int64_t>(body.size()), false) +
             body,
         true, true);
  }
}

void HttpResponder::Send(int status, HttpHeaders headers, std::string body) {
  {
    absl::MutexLock lock(&mu_);
    MOEFLOW_CHECK(!started_);
    started_ = true;
    ended_ = true;
  }
  if (closed()) return;
  for (const auto& h : extra_headers_) headers.push_back(h);
  std::string data =
      SerializeResponseHead(status, headers, static_cast<int64_t>(body.size()), keep_alive_);
  data += body;
  Push(std::move(data), /*end_of_response=*/true, /*close_after=*/!keep_alive_);
}

void HttpResponder::StartStream(int status, HttpHeaders headers) {
  {
    absl::MutexLock lock(&mu_);
    MOEFLOW_CHECK(!started_);
    started_ = true;
  }
  if (closed()) return;
  for (const auto& h : extra_headers_) headers.push_back(h);
  Push(SerializeResponseHead(status, headers, -1, keep_alive_), false, false);
}

bool HttpResponder::Write(std::string data) {
  if (closed()) return false;
  if (data.empty()) return true;  // an empty chunk would end the body
  return Push(EncodeChunk(data), false, false);
}

void HttpResponder::EndStream() {
  {
    absl::MutexLock lock(&mu_);
    MOEFLOW_CHECK(started_);
    if (ended_) return;
    ended_ = true;
  }
  if (closed()) return;
  Push(EncodeChunk(""), /*end_of_response=*/true, /*close_after=*/!keep_alive_);
}

void HttpResponder::SetOnClose(std::function<void()> callback) {
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    if (!closed()) {
      on_close_ = std::move(callback);
      return;
    }
  }
  callback();
}

void HttpResponder::MarkClosed() {
  std::function<void()> callback;
  {
    absl::MutexLock lock(&mu_);
    if (closed_.exchange(true)) return;
    if (!ended_) callback = std::move(on_close_);
    on_close_ = nullptr;
  }
  if (callback) callback();
}

}  // namespace moeflow::server
