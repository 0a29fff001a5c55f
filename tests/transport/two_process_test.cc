// End-to-end test of the data plane across two real processes: this test
// (playing the coordinator) starts tests/transport/transport_peer, exchanges
// UCX worker addresses with it over real gRPC calls (WorkerService
// GetTransportAddress + Connect), then streams activations over UCX, over
// "sm,self" and over "tcp" on the loopback device.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "proto/worker.grpc.pb.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

extern char** environ;

namespace moeflow::transport {
namespace {

constexpr size_t kActivationBytes = 64 << 10;
constexpr int kRoundTrips = 1000;
constexpr int kTimeoutMs = 10000;
constexpr char kPeerName[] = "transport_peer";

std::string PeerBinary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  return std::string(srcdir ? srcdir : ".") + "/" + (workspace ? workspace : "moeflow") +
         "/tests/transport/transport_peer";
}

// A transport_peer child process; killed (if still running) on destruction.
class PeerProcess {
 public:
  ~PeerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ != nullptr) std::fclose(stdout_);
  }

  // Starts the peer and reads its gRPC port.
  void Start(const std::string& tls, int stall_at_step) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    const std::string binary = PeerBinary();
    std::string tls_flag = "--tls=" + tls;
    std::string devices_flag = std::string("--net_devices=") + (tls == "tcp" ? "lo" : "");
    std::string stall_flag = "--stall_at_step=" + std::to_string(stall_at_step);
    char* argv[] = {const_cast<char*>(binary.c_str()), tls_flag.data(), devices_flag.data(),
                    stall_flag.data(), nullptr};
    const int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    ASSERT_EQ(rc, 0) << "cannot start " << binary;
    stdout_ = fdopen(fds[0], "r");
    char line[64] = {};
    ASSERT_NE(std::fgets(line, sizeof(line), stdout_), nullptr) << "peer exited before its port";
    ASSERT_EQ(std::sscanf(line, "PORT %d", &port_), 1) << line;
  }

  // Waits for the peer to exit while keeping `worker` progressing (the peer's
  // endpoint flush needs this side to answer). Returns the exit status, or -1
  // if it did not exit within timeout_ms.
  int WaitForExit(UcxWorker& worker, int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      while (worker.Progress() != 0) {
      }
      (void)worker.WaitForEvents(10);
    }
    return -1;
  }

  // Waits for the (killed) peer so it does not linger as a zombie.
  void Reap() {
    if (pid_ > 0 && waitpid(pid_, nullptr, 0) == pid_) pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  FILE* stdout_ = nullptr;
};

class TwoProcessTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Starts the peer, exchanges addresses over gRPC, and builds the channel.
  void Connect(int stall_at_step) {
    peer_.Start(GetParam(), stall_at_step);
    if (HasFatalFailure()) return;
    TransportConfig config;
    config.tls = GetParam();
    if (GetParam() == "tcp") config.net_devices = "lo";
    auto context = UcxContext::Create(config);
    ASSERT_TRUE(context.ok()) << context.status();
    context_ = std::move(*context);
    auto worker = UcxWorker::Create(*context_);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = std::move(*worker);

    stub_ = proto::WorkerService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(peer_.port()), grpc::InsecureChannelCredentials()));
    proto::GetTransportAddressResponse address;
    {
      grpc::ClientContext rpc;
      rpc.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      grpc::Status s = stub_->GetTransportAddress(&rpc, {}, &address);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    EXPECT_EQ(address.transport().tls(), GetParam());
    auto endpoint = UcxEndpoint::Create(*worker_, address.ucx_worker_address(), kPeerName);
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = std::move(*endpoint);
    {
      proto::ConnectRequest request;
      proto::PeerAddress* me = request.add_peers();
      me->set_peer_name("two_process_test");
      me->set_ucx_worker_address(worker_->address());
      request.set_buffer_bytes(kActivationBytes);
      proto::ConnectResponse response;
      grpc::ClientContext rpc;
      rpc.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      grpc::Status s = stub_->Connect(&rpc, request, &response);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    ActivationChannelOptions options;
    options.send_buffer_bytes = kActivationBytes;
    options.recv_buffer_bytes = kActivationBytes;
    auto channel = ActivationChannel::Create(*endpoint_, options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = std::move(*channel);
  }

  static uint8_t Pattern(uint32_t step, size_t i) {
    return static_cast<uint8_t>(i * 29 + step * 13 + (i >> 9));
  }

  // Sends step `step` and checks the peer's echo byte for byte.
  void RoundTrip(uint32_t step) {
    ActivationChannel& ch = *channel_;
    uint8_t* out = ch.send_buffer().data();
    for (size_t i = 0; i < kActivationBytes; ++i) out[i] = Pattern(step, i);
    const ActivationTag tag{step, static_cast<uint16_t>(step % 61), ActivationKind::kHidden, 0};
    ActivationTag reply = tag;
    reply.kind = ActivationKind::kExpertOutput;
    reply.source = 1;
    TransferId recv = ch.PostRecv(reply, ch.recv_buffer());
    TransferId send = ch.PostSend(tag, ch.send_buffer());
    auto sent = ch.Wait(send, kTimeoutMs);
    ASSERT_TRUE(sent.ok()) << "step " << step << ": " << sent.status();
    auto got = ch.Wait(recv, kTimeoutMs);
    ASSERT_TRUE(got.ok()) << "step " << step << ": " << got.status();
    ASSERT_EQ(*got, kActivationBytes);
    const uint8_t* in = ch.recv_buffer().data();
    const uint8_t key = static_cast<uint8_t>(0xA5 + step);
    size_t bad = 0;
    for (size_t i = 0; i < kActivationBytes; ++i) bad += in[i] != (Pattern(step, i) ^ key);
    ASSERT_EQ(bad, 0u) << "step " << step;
  }

  void TearDown() override {
    channel_.reset();
    endpoint_.reset();
    worker_.reset();
    context_.reset();
  }

  PeerProcess peer_;
  std::unique_ptr<UcxContext> context_;
  std::unique_ptr<UcxWorker> worker_;
  std::unique_ptr<UcxEndpoint> endpoint_;
  std::unique_ptr<ActivationChannel> channel_;
  std::unique_ptr<proto::WorkerService::Stub> stub_;
};

TEST_P(TwoProcessTest, ThousandRoundTripsOf64KiBArriveIntact) {
  Connect(/*stall_at_step=*/-1);
  if (HasFatalFailure()) return;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t step = 0; step < kRoundTrips; ++step) {
    RoundTrip(step);
    if (HasFatalFailure()) return;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: %d round trips of %zu B in %.3f s (%.1f us each)\n", GetParam().c_str(),
              kRoundTrips, kActivationBytes, seconds, seconds * 1e6 / kRoundTrips);
  grpc::ClientContext rpc;
  rpc.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  proto::WorkerShutdownResponse response;
  grpc::Status s = stub_->Shutdown(&rpc, {}, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(peer_.WaitForExit(*worker_, 10000), 0);
}

// A worker that dies mid-stream must surface as UNAVAILABLE naming the peer
// within the wait's 2 s bound, never as a hang.
TEST_P(TwoProcessTest, KilledPeerMidStreamFailsTheWait) {
  constexpr uint32_t kStallStep = 100;
  Connect(/*stall_at_step=*/kStallStep);
  if (HasFatalFailure()) return;
  for (uint32_t step = 0; step < kStallStep; ++step) {
    RoundTrip(step);
    if (HasFatalFailure()) return;
  }
  ActivationChannel& ch = *channel_;
  const ActivationTag tag{kStallStep, kStallStep % 61, ActivationKind::kHidden, 0};
  ActivationTag reply = tag;
  reply.kind = ActivationKind::kExpertOutput;
  reply.source = 1;
  TransferId recv = ch.PostRecv(reply, ch.recv_buffer());
  auto sent = ch.Wait(ch.PostSend(tag, ch.send_buffer()), kTimeoutMs);
  ASSERT_TRUE(sent.ok()) << sent.status();

  // Kill the peer while this thread is blocked in Wait.
  const pid_t pid = peer_.pid();
  std::chrono::steady_clock::time_point killed_at;
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    killed_at = std::chrono::steady_clock::now();
    kill(pid, SIGKILL);
    // Reap it: UCX's shared-memory keepalive checks /proc/<pid>, and an
    // unreaped zombie still looks alive there. (A real coordinator reaps the
    // workers it started.)
    peer_.Reap();
  });
  auto got = ch.Wait(recv, /*timeout_ms=*/2000);
  const auto returned_at = std::chrono::steady_clock::now();
  killer.join();
  // Both transports detect the death well inside the bound: tcp sees the
  // socket close, shared memory UCX's keepalive (keepalive_interval_ms).
  ASSERT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_NE(got.status().message().find(kPeerName), absl::string_view::npos) << got.status();
  std::printf("%s: Wait returned %s %.0f ms after the kill\n", GetParam().c_str(),
              got.status().ToString().c_str(),
              std::chrono::duration<double, std::milli>(returned_at - killed_at).count());
  // Posting to a dead peer fails at once.
  TransferId late = ch.PostRecv(reply, ch.recv_buffer());
  EXPECT_EQ(ch.Check(late), TransferState::kError);
  EXPECT_EQ(ch.Wait(late, 10).status().code(), absl::StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Transports, TwoProcessTest, ::testing::Values("sm,self", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "tcp" ? std::string("tcp") : std::string("sm_self");
                         });

}  // namespace
}  // namespace moeflow::transport
