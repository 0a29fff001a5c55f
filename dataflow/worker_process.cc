#include "dataflow/worker_process.h"

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "auth/bearer_auth.h"
#include "base/knobs.h"
#include "dataflow/layer_stats.h"
#include "proto/worker.grpc.pb.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

namespace moeflow::dataflow {
namespace {

using transport::ActivationChannel;
using transport::UcxContext;
using transport::UcxEndpoint;
using transport::UcxWorker;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

int64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace

namespace {

class WorkerServer final : public proto::WorkerService::Service {
 public:
  WorkerServer(const char* program, WorkerCompute& compute, std::string token)
      : program_(program), compute_(compute), token_(std::move(token)), start_(absl::Now()) {}
  ~WorkerServer() override { StopDataPlane(); }

  grpc::Status Configure(grpc::ServerContext* context, const proto::ConfigureRequest* request,
                         proto::ConfigureResponse* response) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    absl::MutexLock lock(&mu_);
    if (state_ != proto::WORKER_STATE_NEW && state_ != proto::WORKER_STATE_CONFIGURED) {
      return Precondition("Configure");
    }
    if (request->max_batch_tokens() < 1) {
      return grpc::Status(grpc::INVALID_ARGUMENT, "max_batch_tokens must be >= 1");
    }
    if (absl::Status s = SetKnobs(
            std::map<std::string, std::string>(request->knobs().begin(), request->knobs().end()));
        !s.ok()) {
      return ToGrpc(absl::Status(s.code(), absl::StrCat("knobs: ", s.message())));
    }
    if (absl::Status s = compute_.Configure(*request); !s.ok()) return ToGrpc(s);
    transport::TransportConfig config;
    if (!request->transport().tls().empty()) config.tls = request->transport().tls();
    config.net_devices = request->transport().net_devices();
    if (ucx_context_ == nullptr || config.tls != ucx_context_->config().tls ||
        config.net_devices != ucx_context_->config().net_devices) {
      ucx_worker_.reset();
      ucx_context_.reset();
      auto context = UcxContext::Create(config);
      if (!context.ok()) return ToGrpc(context.status());
      ucx_context_ = std::move(*context);
      auto worker = UcxWorker::Create(*ucx_context_);
      if (!worker.ok()) return ToGrpc(worker.status());
      ucx_worker_ = std::move(*worker);
    }
    configure_ = *request;
    state_ = proto::WORKER_STATE_CONFIGURED;
    response->set_state(state_);
    return grpc::Status::OK;
  }

  grpc::Status Load(grpc::ServerContext* context, const proto::LoadRequest*,
                    grpc::ServerWriter<proto::LoadProgress>* writer) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    {
      absl::MutexLock lock(&mu_);
      if (state_ != proto::WORKER_STATE_CONFIGURED) return Precondition("Load");
      state_ = proto::WORKER_STATE_LOADING;
    }
    const absl::Time start = absl::Now();
    absl::Status s = compute_.Load([&](const proto::LoadProgress& p) {
      proto::LoadProgress copy = p;
      copy.set_elapsed_ms(absl::ToInt64Milliseconds(absl::Now() - start));
      writer->Write(copy);
    });
    absl::MutexLock lock(&mu_);
    if (!s.ok()) {
      state_ = proto::WORKER_STATE_FAILED;
      message_ = std::string(s.message());
      return ToGrpc(s);
    }
    state_ = proto::WORKER_STATE_LOADED;
    proto::LoadProgress done;
    done.set_phase(proto::LOAD_PHASE_DONE);
    done.set_bytes_done(compute_.ShardBytes());
    done.set_bytes_total(compute_.ShardBytes());
    done.set_elapsed_ms(absl::ToInt64Milliseconds(absl::Now() - start));
    writer->Write(done);
    return grpc::Status::OK;
  }

  grpc::Status GetTransportAddress(grpc::ServerContext* context,
                                   const proto::GetTransportAddressRequest*,
                                   proto::GetTransportAddressResponse* response) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    absl::MutexLock lock(&mu_);
    if (state_ == proto::WORKER_STATE_NEW || ucx_worker_ == nullptr) {
      return Precondition("GetTransportAddress");
    }
    response->set_ucx_worker_address(ucx_worker_->address());
    *response->mutable_transport() = configure_.transport();
    response->set_worker_name(configure_.worker_name());
    return grpc::Status::OK;
  }

  grpc::Status Connect(grpc::ServerContext* context, const proto::ConnectRequest* request,
                       proto::ConnectResponse* response) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    bool reconnect = false;
    {
      absl::MutexLock lock(&mu_);
      if (state_ != proto::WORKER_STATE_LOADED && state_ != proto::WORKER_STATE_SERVING) {
        return Precondition("Connect");
      }
      reconnect = state_ == proto::WORKER_STATE_SERVING;
    }
    // Connected already: the coordinator renews its data plane (another
    // worker was restarted): this one's goes, the compute's state stays.
    if (reconnect) StopDataPlane();
    absl::MutexLock lock(&mu_);
    const proto::PeerAddress* coordinator = nullptr;
    for (const proto::PeerAddress& p : request->peers()) {
      if (p.role() == proto::WORKER_ROLE_UNSPECIFIED) coordinator = &p;
    }
    if (coordinator == nullptr) {
      return grpc::Status(grpc::INVALID_ARGUMENT,
                          "peers: no peer with role UNSPECIFIED (the coordinator)");
    }
    auto ep = UcxEndpoint::Create(*ucx_worker_, coordinator->ucx_worker_address(),
                                  coordinator->peer_name());
    if (!ep.ok()) return ToGrpc(ep.status());
    transport::ActivationChannelOptions options;
    options.yield_before_sleep_us = DataflowYieldMicros();
    options.recv_buffer_bytes =
        static_cast<int64_t>(AlignUp(sizeof(RequestHeader) + compute_.MaxRequestBytes()));
    // Room for an error reply's message too.
    options.send_buffer_bytes =
        static_cast<int64_t>(AlignUp(sizeof(ReplyHeader) + compute_.MaxReplyBytes() + 4096));
    auto channel = ActivationChannel::Create(**ep, options);
    if (!channel.ok()) return ToGrpc(channel.status());
    endpoint_ = std::move(*ep);
    channel_ = std::move(*channel);
    state_ = proto::WORKER_STATE_SERVING;
    stop_.store(false);
    data_plane_ = std::thread([this] { DataPlaneLoop(); });
    response->set_state(state_);
    return grpc::Status::OK;
  }

  grpc::Status Health(grpc::ServerContext* context, const proto::HealthRequest*,
                      proto::HealthResponse* response) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    absl::MutexLock lock(&mu_);
    response->set_state(state_);
    response->set_message(message_);
    response->set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - start_));
    response->set_resident_bytes(ResidentBytes());
    for (const auto& [name, value] : KnobValues()) (*response->mutable_knobs())[name] = value;
    if (endpoint_ != nullptr) {
      proto::PeerHealth* peer = response->add_peers();
      peer->set_peer_name(endpoint_->peer_name());
      peer->set_reachable(state_ == proto::WORKER_STATE_SERVING);
      peer->set_last_error(peer_error_);
    }
    return grpc::Status::OK;
  }

  grpc::Status Stats(grpc::ServerContext* context, const proto::StatsRequest* request,
                     proto::StatsResponse* response) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    stats_.Fill(response, request->reset());
    return grpc::Status::OK;
  }

  grpc::Status Shutdown(grpc::ServerContext* context, const proto::WorkerShutdownRequest* request,
                        proto::WorkerShutdownResponse*) override {
    if (grpc::Status a = Authorize(*context); !a.ok()) return a;
    {
      absl::MutexLock lock(&mu_);
      state_ = proto::WORKER_STATE_STOPPING;
      message_ = request->reason();
      shutdown_requested_ = true;
    }
    return grpc::Status::OK;
  }

  // Blocks until Shutdown was called or the data plane lost the coordinator.
  void WaitForExit() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&shutdown_requested_));
  }

  void StopDataPlane() {
    stop_.store(true);
    if (data_plane_.joinable()) {
      if (ucx_worker_ != nullptr) ucx_worker_->Signal();
      data_plane_.join();
    }
    if (channel_ != nullptr && channel_->late_wakeups() > 0) {
      std::fprintf(stderr, "%s: %s\n", program_, channel_->LateWakeupsNote().c_str());
    }
    channel_.reset();
    if (endpoint_ != nullptr) (void)endpoint_->Close(200);
    endpoint_.reset();
  }

 private:
  grpc::Status Precondition(const char* rpc) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return grpc::Status(grpc::FAILED_PRECONDITION,
                        absl::StrCat(program_, ": ", rpc, " is not allowed in state ",
                                     proto::WorkerState_Name(state_)));
  }

  class ChannelReplyWriter final : public ReplyWriter {
   public:
    ChannelReplyWriter(WorkerServer& server, uint32_t seq, proto::LayerStats& stats)
        : server_(server), seq_(seq), stats_(stats) {}
    uint8_t* Payload() override {
      return server_.channel_->send_buffer().data() + sizeof(ReplyHeader);
    }
    absl::Status Send(size_t payload_bytes) override {
      uint8_t* base = server_.channel_->send_buffer().data();
      ReplyHeader header;
      header.payload_bytes = static_cast<int64_t>(payload_bytes);
      std::memcpy(base, &header, sizeof(header));
      return server_.SendReply(seq_, base, sizeof(header) + payload_bytes, stats_);
    }

   private:
    WorkerServer& server_;
    uint32_t seq_;
    proto::LayerStats& stats_;
  };

  absl::Status SendReply(uint32_t seq, const uint8_t* data, size_t bytes,
                         proto::LayerStats& stats) {
    const absl::Time t0 = absl::Now();
    const uint8_t source = static_cast<uint8_t>(configure_.transport_source());
    transport::TransferId id =
        channel_->PostSend(ReplyTag(seq, source), absl::MakeConstSpan(data, bytes));
    absl::StatusOr<size_t> sent = channel_->Wait(id, 10000);
    if (!sent.ok()) {
      channel_->Release(id);
      return sent.status();
    }
    stats.set_transport_time_us(stats.transport_time_us() +
                                absl::ToInt64Microseconds(absl::Now() - t0));
    stats.set_bytes_sent(stats.bytes_sent() + static_cast<int64_t>(bytes));
    return absl::OkStatus();
  }

  void SendError(uint32_t seq, const absl::Status& status, proto::LayerStats& stats) {
    uint8_t* base = channel_->send_buffer().data();
    const size_t bytes = WriteErrorReply(status, channel_->send_buffer());
    (void)SendReply(seq, base, bytes, stats);
  }

  void Fail(const std::string& why) {
    std::fprintf(stderr, "%s: %s\n", program_, why.c_str());
    absl::MutexLock lock(&mu_);
    state_ = proto::WORKER_STATE_FAILED;
    message_ = why;
    peer_error_ = why;
    // Without its coordinator the worker has nothing to serve: exit.
    shutdown_requested_ = true;
  }

  void DataPlaneLoop() {
    compute_.PinCaller();  // this thread is the caller of the compute's loops
    uint32_t seq = 0;
    absl::Span<uint8_t> recv = channel_->recv_buffer();
    while (!stop_.load()) {
      transport::TransferId id = channel_->PostRecv(RequestTag(seq), recv);
      absl::StatusOr<size_t> got;
      const absl::Time wait_start = absl::Now();
      while (true) {
        got = channel_->Wait(id, 100);
        if (got.ok() || got.status().code() != absl::StatusCode::kDeadlineExceeded) break;
        if (stop_.load()) {
          channel_->Release(id);
          return;
        }
      }
      if (!got.ok()) {
        if (stop_.load()) return;  // a reconnect or shutdown closed it
        Fail(absl::StrCat("lost the coordinator: ", got.status().message()));
        return;
      }
      compute_.Busy();  // the pool wakes while the request is unpacked
      (void)wait_start;
      RequestHeader header;
      if (*got < sizeof(header)) {
        Fail(absl::StrCat("request ", seq, " is ", *got, " bytes, shorter than its header"));
        return;
      }
      std::memcpy(&header, recv.data(), sizeof(header));
      proto::LayerStats stats;
      stats.set_layer(header.layer);
      stats.set_bytes_received(static_cast<int64_t>(*got));
      const absl::Time t0 = absl::Now();
      ChannelReplyWriter writer(*this, seq, stats);
      absl::Status s = compute_.Handle(
          header, absl::MakeConstSpan(recv.data() + sizeof(header), *got - sizeof(header)), writer,
          stats);
      if (!s.ok()) {
        if (absl::IsUnavailable(s) && channel_->endpoint().failed()) {
          Fail(absl::StrCat("lost the coordinator: ", s.message()));
          return;
        }
        SendError(seq, s, stats);
      }
      stats.set_compute_time_us(absl::ToInt64Microseconds(absl::Now() - t0) -
                                stats.transport_time_us());
      stats_.Record(stats);
      compute_.Idle();
      ++seq;
    }
  }

  // Every call carries the launch's token (empty: none required).
  grpc::Status Authorize(const grpc::ServerContext& context) const {
    return CheckBearer(context, token_,
                       "the coordinator's token: topology worker_token_file, worker --token_file");
  }

  const char* program_;
  WorkerCompute& compute_;
  const std::string token_;
  const absl::Time start_;

  absl::Mutex mu_;
  proto::WorkerState state_ ABSL_GUARDED_BY(mu_) = proto::WORKER_STATE_NEW;
  std::string message_ ABSL_GUARDED_BY(mu_);
  std::string peer_error_ ABSL_GUARDED_BY(mu_);
  bool shutdown_requested_ ABSL_GUARDED_BY(mu_) = false;
  proto::ConfigureRequest configure_;

  // Set up under mu_ before the data-plane thread starts; then owned by it.
  std::unique_ptr<UcxContext> ucx_context_;
  std::unique_ptr<UcxWorker> ucx_worker_;
  std::unique_ptr<UcxEndpoint> endpoint_;
  std::unique_ptr<ActivationChannel> channel_;
  std::thread data_plane_;
  std::atomic<bool> stop_{false};

  LayerStatsTable stats_;
};

}  // namespace

int RunWorkerProcess(int argc, char** argv, const char* program, WorkerCompute& compute) {
  std::string listen = "127.0.0.1:0";
  std::string token_file;
  const char* usage = "[--listen=HOST:PORT] [--token_file=PATH] [--knob=NAME=VALUE]...";
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("usage: %s %s\n\n%s", program, usage, KnobsHelp().c_str());
      return 0;
    }
    if (absl::StartsWith(arg, "--knob=")) {
      if (absl::Status s = SetKnobFromFlag(arg.substr(7)); !s.ok()) {
        std::fprintf(stderr, "%s: %s\n", program, std::string(s.message()).c_str());
        return 2;
      }
    } else if (absl::StartsWith(arg, "--listen=")) {
      listen = std::string(arg.substr(9));
    } else if (absl::StartsWith(arg, "--token_file=")) {
      token_file = std::string(arg.substr(13));
    } else {
      std::fprintf(stderr, "%s: unknown argument '%s' (usage: %s %s)\n", program, argv[i], program,
                   usage);
      return 2;
    }
  }
  // The token: --token_file, else the launcher's environment variable
  // (removed here so that nothing this process starts inherits it).
  std::string token;
  if (!token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(token_file);
    if (!t.ok()) {
      std::fprintf(stderr, "%s: --token_file: %s\n", program,
                   std::string(t.status().message()).c_str());
      return 2;
    }
    token = *std::move(t);
  } else if (const char* env = std::getenv(kWorkerTokenEnv); env != nullptr) {
    token = env;
    unsetenv(kWorkerTokenEnv);
    if (absl::Status s = ValidateToken(token, kWorkerTokenEnv); !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", program, std::string(s.message()).c_str());
      return 2;
    }
  }
  // Every worker needs a token, loopback included: any local user (or a
  // browser page's request) could otherwise configure or stop it.
  if (token.empty()) {
    std::fprintf(stderr,
                 "%s: refusing to listen on %s without a token: anyone who reaches that "
                 "address could configure or stop this worker. Put a secret in a file "
                 "(e.g. head -c 32 /dev/urandom | base64 > worker.token; chmod 600 "
                 "worker.token), pass --token_file=PATH here and name the same file as "
                 "worker_token_file in the topology (workers started by `moeflow launch` get "
                 "one from it)\n",
                 program, listen.c_str());
    return 2;
  }
  WorkerServer server(program, compute, std::move(token));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&server);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || port == 0) {
    std::fprintf(stderr, "%s: cannot listen on %s\n", program, listen.c_str());
    return 1;
  }
  std::printf("PORT %d\n", port);
  std::fflush(stdout);
  // Later output goes to stderr (the launcher reads stdout only for the port).
  dup2(STDERR_FILENO, STDOUT_FILENO);
  server.WaitForExit();
  server.StopDataPlane();
  grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
  return 0;
}

}  // namespace moeflow::dataflow
