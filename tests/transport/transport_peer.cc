// The far side of tests/transport/two_process_test: a stand-in worker process.
//
// It serves the address-exchange part of WorkerService (GetTransportAddress,
// Connect, Health, Shutdown) over gRPC on 127.0.0.1 (port chosen by the
// kernel, printed as "PORT <n>" on stdout), connects a UCX endpoint to the
// peer named in Connect, then echoes activations: it receives step s, layer
// s % 61 (kind kHidden) and sends back every byte XOR (0xA5 + s) as
// kExpertOutput, until Shutdown. With --stall_at_step it stops answering at
// that step (the test then kills it to simulate a crashed worker).
//
// Exit codes: 0 clean shutdown, 2 no Connect in time, 3 receive failed,
// 4 send failed, 5 setup failed.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/worker.grpc.pb.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

ABSL_FLAG(std::string, tls, "sm,self", "UCX transports (UCX_TLS syntax)");
ABSL_FLAG(std::string, net_devices, "", "UCX network devices for tcp; empty: UCX's default");
ABSL_FLAG(int, stall_at_step, -1, "Stop answering after receiving this step; -1: never");
ABSL_FLAG(int, connect_timeout_ms, 20000, "How long to wait for the Connect RPC");

namespace moeflow::transport {
namespace {

class PeerService final : public proto::WorkerService::Service {
 public:
  PeerService(UcxWorker* worker, proto::TransportSpec transport)
      : worker_(worker), transport_(std::move(transport)) {}

  grpc::Status GetTransportAddress(grpc::ServerContext*, const proto::GetTransportAddressRequest*,
                                   proto::GetTransportAddressResponse* response) override {
    response->set_ucx_worker_address(worker_->address());  // Immutable after Create.
    *response->mutable_transport() = transport_;
    response->set_worker_name("transport_peer");
    return grpc::Status::OK;
  }

  grpc::Status Connect(grpc::ServerContext*, const proto::ConnectRequest* request,
                       proto::ConnectResponse* response) override {
    if (request->peers_size() != 1 || request->buffer_bytes() <= 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "transport_peer takes exactly one peer and buffer_bytes > 0");
    }
    {
      absl::MutexLock lock(&mu_);
      if (connect_.HasBeenNotified()) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "already connected");
      }
      connect_request_ = *request;
    }
    connect_.Notify();
    response->set_state(proto::WORKER_STATE_SERVING);
    return grpc::Status::OK;
  }

  grpc::Status Health(grpc::ServerContext*, const proto::HealthRequest*,
                      proto::HealthResponse* response) override {
    response->set_state(connect_.HasBeenNotified() ? proto::WORKER_STATE_SERVING
                                                   : proto::WORKER_STATE_LOADED);
    return grpc::Status::OK;
  }

  grpc::Status Shutdown(grpc::ServerContext*, const proto::WorkerShutdownRequest*,
                        proto::WorkerShutdownResponse*) override {
    shutdown_ = true;
    worker_->Signal();  // Wake the data-plane thread if it sleeps in Wait.
    return grpc::Status::OK;
  }

  bool WaitForConnect(int timeout_ms, proto::ConnectRequest* request) {
    if (!connect_.WaitForNotificationWithTimeout(absl::Milliseconds(timeout_ms))) return false;
    absl::MutexLock lock(&mu_);
    *request = connect_request_;
    return true;
  }
  bool shutdown_requested() const { return shutdown_.load(); }

 private:
  UcxWorker* const worker_;
  const proto::TransportSpec transport_;
  absl::Mutex mu_;
  proto::ConnectRequest connect_request_ ABSL_GUARDED_BY(mu_);
  absl::Notification connect_;
  std::atomic<bool> shutdown_{false};
};

int Run() {
  TransportConfig config;
  config.tls = absl::GetFlag(FLAGS_tls);
  config.net_devices = absl::GetFlag(FLAGS_net_devices);
  auto context = UcxContext::Create(config);
  if (!context.ok()) {
    std::fprintf(stderr, "transport_peer: %s\n", context.status().ToString().c_str());
    return 5;
  }
  auto worker = UcxWorker::Create(**context);
  if (!worker.ok()) {
    std::fprintf(stderr, "transport_peer: %s\n", worker.status().ToString().c_str());
    return 5;
  }
  proto::TransportSpec spec;
  spec.set_tls(config.tls);
  spec.set_net_devices(config.net_devices);
  PeerService service(worker->get(), spec);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "transport_peer: cannot start gRPC server\n");
    return 5;
  }
  std::printf("PORT %d\n", port);
  std::fflush(stdout);

  proto::ConnectRequest connect;
  if (!service.WaitForConnect(absl::GetFlag(FLAGS_connect_timeout_ms), &connect)) {
    std::fprintf(stderr, "transport_peer: no Connect RPC in time\n");
    return 2;
  }
  int exit_code = 0;
  {
    auto endpoint = UcxEndpoint::Create(**worker, connect.peers(0).ucx_worker_address(),
                                        connect.peers(0).peer_name());
    if (!endpoint.ok()) {
      std::fprintf(stderr, "transport_peer: %s\n", endpoint.status().ToString().c_str());
      return 5;
    }
    ActivationChannelOptions options;
    options.send_buffer_bytes = connect.buffer_bytes();
    options.recv_buffer_bytes = connect.buffer_bytes();
    auto channel = ActivationChannel::Create(**endpoint, options);
    if (!channel.ok()) {
      std::fprintf(stderr, "transport_peer: %s\n", channel.status().ToString().c_str());
      return 5;
    }
    ActivationChannel& ch = **channel;
    const int stall_at_step = absl::GetFlag(FLAGS_stall_at_step);
    for (uint32_t step = 0; exit_code == 0; ++step) {
      const ActivationTag tag{step, static_cast<uint16_t>(step % 61), ActivationKind::kHidden, 0};
      TransferId recv = ch.PostRecv(tag, ch.recv_buffer());
      absl::StatusOr<size_t> got;
      while (true) {
        // Short slices so that a Shutdown RPC is noticed within ~200 ms.
        got = ch.Wait(recv, 200);
        if (got.status().code() != absl::StatusCode::kDeadlineExceeded) break;
        if (service.shutdown_requested()) break;
      }
      if (!got.ok()) {
        if (service.shutdown_requested()) {
          ch.Release(recv);
          break;
        }
        std::fprintf(stderr, "transport_peer: %s\n", got.status().ToString().c_str());
        exit_code = 3;
        break;
      }
      if (static_cast<int>(step) == stall_at_step) {
        while (true) std::this_thread::sleep_for(std::chrono::seconds(1));  // Until killed.
      }
      const uint8_t* in = ch.recv_buffer().data();
      uint8_t* out = ch.send_buffer().data();
      const uint8_t key = static_cast<uint8_t>(0xA5 + step);
      for (size_t i = 0; i < *got; ++i) out[i] = in[i] ^ key;
      ActivationTag reply = tag;
      reply.kind = ActivationKind::kExpertOutput;
      reply.source = 1;
      auto sent = ch.Wait(ch.PostSend(reply, ch.send_buffer().subspan(0, *got)), 10000);
      if (!sent.ok()) {
        std::fprintf(stderr, "transport_peer: %s\n", sent.status().ToString().c_str());
        exit_code = 4;
      }
    }
    channel->reset();
    absl::Status closed = (*endpoint)->Close(/*timeout_ms=*/2000);
    if (!closed.ok())
      std::fprintf(stderr, "transport_peer: close: %s\n", closed.ToString().c_str());
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return exit_code;
}

}  // namespace
}  // namespace moeflow::transport

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return moeflow::transport::Run();
}
