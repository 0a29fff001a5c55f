#include "server/http_server.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/http_message.h"
#include "tests/server/http_test_client.h"

namespace moeflow::server {
namespace {

using testing::ConnectLocal;
using testing::ParseResponses;
using testing::RawExchange;
using testing::ReadToEof;
using testing::WriteAll;

TEST(HttpMessageTest, ParsesGetWithHeaders) {
  HttpRequest r;
  ParseResult p = ParseHttpRequest("GET /v1/models?x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z \r\n\r\n",
                                   HttpLimits{}, &r);
  ASSERT_EQ(p.status, ParseStatus::kComplete);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.path, "/v1/models");
  EXPECT_EQ(r.Header("x-y"), "z");
  EXPECT_TRUE(r.keep_alive);
}

TEST(HttpMessageTest, WaitsForTheWholeBody) {
  HttpRequest r;
  const std::string full = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_EQ(ParseHttpRequest(full.substr(0, n), HttpLimits{}, &r).status,
              ParseStatus::kIncomplete)
        << n;
  }
  ParseResult p = ParseHttpRequest(full + "GET /b HTTP/1.1\r\n\r\n", HttpLimits{}, &r);
  ASSERT_EQ(p.status, ParseStatus::kComplete);
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(p.consumed, full.size());
}

TEST(HttpMessageTest, DecodesChunkedBodyWithExtensionsAndTrailers) {
  HttpRequest r;
  const std::string full =
      "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Trailer: t\r\n\r\n";
  for (size_t n = 0; n < full.size(); ++n) {
    ASSERT_EQ(ParseHttpRequest(full.substr(0, n), HttpLimits{}, &r).status,
              ParseStatus::kIncomplete)
        << n;
  }
  ParseResult p = ParseHttpRequest(full, HttpLimits{}, &r);
  ASSERT_EQ(p.status, ParseStatus::kComplete) << p.error;
  EXPECT_EQ(r.body, "hello, world!!!!");
  EXPECT_EQ(p.consumed, full.size());
}

TEST(HttpMessageTest, RejectsMalformedAndOversizeRequests) {
  HttpLimits limits;
  limits.max_body_bytes = 10;
  limits.max_header_bytes = 200;
  HttpRequest r;
  struct Case {
    std::string raw;
    int status;
  };
  const Case cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /a HTTP/2.0\r\n\r\n", 505},
      {"GET a HTTP/1.1\r\n\r\n", 400},
      {"GET /a HTTP/1.1\r\nNoColon\r\n\r\n", 400},
      {"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413},
      {"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n", 413},
      {"GET /a HTTP/1.1\r\nX: " + std::string(300, 'a') + "\r\n\r\n", 431},
      {"GET /a HTTP/1.1\r\nX: " + std::string(300, 'a'), 431},
  };
  for (const Case& c : cases) {
    ParseResult p = ParseHttpRequest(c.raw, limits, &r);
    EXPECT_EQ(p.status, ParseStatus::kError) << c.raw;
    EXPECT_EQ(p.http_status, c.status) << c.raw << ": " << p.error;
  }
}

TEST(HttpMessageTest, Http10ClosesUnlessKeepAlive) {
  HttpRequest r;
  ASSERT_EQ(ParseHttpRequest("GET / HTTP/1.0\r\n\r\n", HttpLimits{}, &r).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(r.keep_alive);
  ASSERT_EQ(
      ParseHttpRequest("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", HttpLimits{}, &r).status,
      ParseStatus::kComplete);
  EXPECT_FALSE(r.keep_alive);
}

// An echo server: "METHOD PATH BODY"; /stream answers three chunks from
// another thread; /hang waits for the client to go away.
class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpServerOptions options;
    options.limits.max_body_bytes = 1000;
    options.request_timeout_ms = 1500;
    server_ = std::make_unique<HttpServer>(
        options, [this](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
          if (request.path == "/stream") {
            std::thread([responder] {
              responder->StartStream(200, {{"Content-Type", "text/event-stream"}});
              for (int i = 0; i < 3; ++i) responder->Write(absl::StrCat("data: ", i, "\n\n"));
              responder->EndStream();
            }).detach();
            return;
          }
          if (request.path == "/hang") {
            // Published before the first byte goes out: the client may read
            // "started", hang up and look at hanging_ before this handler
            // returns (a null hanging_ crashed a CI run here).
            {
              absl::MutexLock lock(&hanging_mu_);
              hanging_ = responder;
            }
            responder->SetOnClose([this] { closed_.Notify(); });
            responder->StartStream(200, {});
            responder->Write("started\n");
            return;
          }
          responder->Send(200, {{"Content-Type", "text/plain"}},
                          absl::StrCat(request.method, " ", request.path, " ", request.body));
        });
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
  }
  void TearDown() override { server_->Stop(); }

  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
  absl::Notification closed_;
  absl::Mutex hanging_mu_;
  std::shared_ptr<HttpResponder> hanging_ ABSL_GUARDED_BY(hanging_mu_);

  std::shared_ptr<HttpResponder> Hanging() {
    absl::MutexLock lock(&hanging_mu_);
    return hanging_;
  }
};

TEST_F(HttpServerTest, AnswersPipelinedRequestsInOrderOnOneConnection) {
  const std::string raw =
      "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
      "POST /three HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n"
      "GET /four HTTP/1.1\r\nConnection: close\r\n\r\n";
  std::vector<testing::ParsedResponse> r = ParseResponses(RawExchange(port_, raw));
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].body, "GET /one ");
  EXPECT_EQ(r[1].body, "POST /two abc");
  EXPECT_EQ(r[2].body, "POST /three xyz");
  EXPECT_EQ(r[3].body, "GET /four ");
  EXPECT_EQ(r[0].Header("connection"), "keep-alive");
  EXPECT_EQ(r[3].Header("connection"), "close");
}

TEST_F(HttpServerTest, KeepAliveAcrossSeparateWrites) {
  const int fd = ConnectLocal(port_);
  ASSERT_GE(fd, 0);
  WriteAll(fd, "GET /a HTTP/1.1\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  WriteAll(fd, "POST /b HTTP/1.1\r\nContent-Le");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  WriteAll(fd, "ngth: 2\r\nConnection: close\r\n\r\nhi");
  std::vector<testing::ParsedResponse> r = ParseResponses(ReadToEof(fd));
  close(fd);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].body, "POST /b hi");
}

TEST_F(HttpServerTest, OversizeAndMalformedGetErrorsAndTheServerStaysUp) {
  std::vector<testing::ParsedResponse> r = ParseResponses(RawExchange(
      port_, "POST /a HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'x')));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 413);
  EXPECT_NE(r[0].body.find("\"error\""), std::string::npos);
  r = ParseResponses(RawExchange(port_, "NOT HTTP AT ALL\r\n\r\n"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 400);
  r = ParseResponses(RawExchange(port_, "GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 200);
}

TEST_F(HttpServerTest, SlowRequestTimesOutWith408) {
  const int fd = ConnectLocal(port_);
  WriteAll(fd, "GET /slow HTTP/1.1\r\nHost:");
  std::vector<testing::ParsedResponse> r = ParseResponses(ReadToEof(fd));
  close(fd);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 408);
}

TEST_F(HttpServerTest, ExpectContinueGetsInterimResponse) {
  const int fd = ConnectLocal(port_);
  WriteAll(fd,
           "POST /c HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
           "Connection: close\r\n\r\n");
  char buffer[64] = {};
  const ssize_t n = read(fd, buffer, sizeof(buffer) - 1);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buffer, 25), "HTTP/1.1 100 Continue\r\n\r\n");
  WriteAll(fd, "body");
  std::vector<testing::ParsedResponse> r = ParseResponses(ReadToEof(fd));
  close(fd);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].body, "POST /c body");
}

TEST_F(HttpServerTest, StreamsChunksFromAnotherThread) {
  std::vector<testing::ParsedResponse> r =
      ParseResponses(RawExchange(port_, "GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_TRUE(r[0].chunked);
  EXPECT_EQ(r[0].body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

TEST_F(HttpServerTest, ClientDisconnectRunsOnClose) {
  const int fd = ConnectLocal(port_);
  WriteAll(fd, "GET /hang HTTP/1.1\r\n\r\n");
  char buffer[256];
  ASSERT_GT(read(fd, buffer, sizeof(buffer)), 0);  // the head and "started"
  close(fd);
  EXPECT_TRUE(closed_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  const std::shared_ptr<HttpResponder> hanging = Hanging();
  ASSERT_NE(hanging, nullptr);
  EXPECT_FALSE(hanging->Write("more"));
}

// One client holding many idle sockets (the probe: ~1,000) does not
// lock the others out: at max_connections the idle connection quiet longest
// makes room, a connection with a response in flight is never closed for it.
TEST(HttpServerLimitsTest, IdleConnectionsMakeRoomAndBusyOnesStay) {
  HttpServerOptions options;
  options.max_connections = 16;
  absl::Notification hang_closed;
  std::shared_ptr<HttpResponder> hanging;
  absl::Mutex mu;
  HttpServer server(options,
                    [&](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
                      if (request.path == "/hang") {
                        {
                          absl::MutexLock lock(&mu);
                          hanging = responder;
                        }
                        responder->SetOnClose([&] { hang_closed.Notify(); });
                        responder->StartStream(200, {});
                        responder->Write("started\n");
                        return;
                      }
                      responder->Send(200, {}, "ok");
                    });
  ASSERT_TRUE(server.Start().ok());
  const int busy = ConnectLocal(server.port());
  ASSERT_GE(busy, 0);
  WriteAll(busy, "GET /hang HTTP/1.1\r\n\r\n");
  char buffer[256];
  ASSERT_GT(read(busy, buffer, sizeof(buffer)), 0);
  std::vector<int> idle;
  for (int i = 0; i < 1000; ++i) {
    const int fd = ConnectLocal(server.port());
    if (fd >= 0) idle.push_back(fd);
  }
  EXPECT_EQ(idle.size(), 1000u);
  // The kernel completed the handshakes; wait until the server accepted them
  // all (kept or closed to make room) before asking.
  for (int i = 0; i < 200 && server.evicted_connections() + server.open_connections() < 1001; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int health_fd = ConnectLocal(server.port());
  ASSERT_GE(health_fd, 0) << "connect: " << std::strerror(errno);
  WriteAll(health_fd, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
  const std::string raw = ReadToEof(health_fd);
  const int read_errno = errno;
  close(health_fd);
  std::vector<testing::ParsedResponse> r = ParseResponses(raw);
  ASSERT_EQ(r.size(), 1u) << "read '" << raw << "' errno " << std::strerror(read_errno)
                          << " evicted " << server.evicted_connections() << " open "
                          << server.open_connections() << " refused "
                          << server.refused_connections();
  EXPECT_EQ(r[0].status, 200);
  EXPECT_GE(server.evicted_connections(), 1000 - 16);
  EXPECT_EQ(server.refused_connections(), 0);
  EXPECT_LE(server.open_connections(), 16);
  EXPECT_FALSE(hang_closed.HasBeenNotified()) << "the busy connection was closed";
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(hanging->Write("still here\n"));
    hanging->EndStream();
  }
  for (int fd : idle) close(fd);
  close(busy);
  server.Stop();
}

// StopAccepting (a SIGTERM's first step): new connections are refused,
// open ones are still answered, each response closing its connection.
TEST(HttpServerLimitsTest, StopAcceptingServesOpenConnectionsOnly) {
  HttpServer server(HttpServerOptions{},
                    [](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
                      responder->Send(200, {}, request.path);
                    });
  ASSERT_TRUE(server.Start().ok());
  const int fd = ConnectLocal(server.port());
  ASSERT_GE(fd, 0);
  WriteAll(fd, "GET /a HTTP/1.1\r\n\r\n");
  char buffer[512];
  ASSERT_GT(read(fd, buffer, sizeof(buffer)), 0);
  server.StopAccepting();
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    const int other = ConnectLocal(server.port());
    refused = other < 0;
    if (other >= 0) close(other);
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(refused) << "still accepting after StopAccepting";
  WriteAll(fd, "GET /b HTTP/1.1\r\n\r\n");
  std::vector<testing::ParsedResponse> r = ParseResponses(ReadToEof(fd));
  close(fd);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].body, "/b");
  EXPECT_EQ(r[0].Header("connection"), "close");
  server.Stop();
}

}  // namespace
}  // namespace moeflow::server
