// transport_bench: round-trip latency and streaming bandwidth of the
// ActivationChannel between two processes, per transport and message size.
//
//   bazel run //transport:transport_bench -- [--json] [--transports=sm,self/tcp]
//
// For each transport the bench forks a client and a server process (the
// parent touches no UCX state); they swap worker addresses over a socketpair
// (out of band, as gRPC does in the real system) and run:
//   latency:   ping-pong of one message each way; median and p99 round trip.
//   bandwidth: the client streams `window` messages, the server acks the
//              batch with a 1-byte message; bytes / time.
// Both use the channel's blocking waits (short spin, then the event fd), the
// same code path as the engine; numbers on a busy 2-core machine are noisy.
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "transport/activation_channel.h"
#include "transport/ucx_handles.h"

ABSL_FLAG(bool, json, false, "Print JSON instead of a table");
ABSL_FLAG(std::string, transports, "sm,self/tcp", "'/'-separated UCX_TLS lists to measure");
ABSL_FLAG(std::string, net_devices, "lo", "UCX_NET_DEVICES for tcp");
ABSL_FLAG(int, spin_before_sleep_us, 20, "ActivationChannelOptions::spin_before_sleep_us");
ABSL_FLAG(double, iterations_scale, 1.0, "Multiplies every iteration count (0.1: quick run)");

namespace moeflow::transport {
namespace {

struct SizeSpec {
  size_t bytes;
  int latency_iterations;
  int bandwidth_rounds;
};

// Iteration counts keep each (transport, size) cell around a second or less.
const SizeSpec kSizes[] = {
    {4 << 10, 4000, 2000},
    {64 << 10, 2000, 500},
    {1 << 20, 300, 60},
    {8 << 20, 60, 10},
};
constexpr int kWindow = 8;             // Messages in flight per bandwidth round.
constexpr size_t kMaxBytes = 8 << 20;  // Largest message.
constexpr int kTimeoutMs = 20000;

struct Row {
  char tls[32];
  uint64_t bytes;
  double rtt_median_us;
  double rtt_p99_us;
  double bandwidth_gbps;  // 1e9 bytes per second.
};

bool WriteAll(int fd, const void* data, size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

#define BENCH_CHECK_OK(expr)                                           \
  do {                                                                 \
    auto bench_s_ = (expr);                                            \
    if (!bench_s_.ok()) {                                              \
      std::fprintf(stderr, "transport_bench: %s: %s\n", #expr,         \
                   std::string(bench_s_.status().ToString()).c_str()); \
      _exit(1);                                                        \
    }                                                                  \
  } while (0)

template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "transport_bench: %s: %s\n", what, v.status().ToString().c_str());
    _exit(1);
  }
  return std::move(*v);
}

// One process's side. `is_client` measures; the server echoes and acks.
// Writes the client's rows to `result_fd`.
int RunSide(bool is_client, const std::string& tls, int sock, int result_fd) {
  TransportConfig config;
  config.tls = tls;
  if (tls.find("tcp") != std::string::npos) config.net_devices = absl::GetFlag(FLAGS_net_devices);
  auto context = OrDie(UcxContext::Create(config), "context");
  auto worker = OrDie(UcxWorker::Create(*context), "worker");
  const uint32_t len = static_cast<uint32_t>(worker->address().size());
  uint32_t peer_len = 0;
  if (!WriteAll(sock, &len, 4) || !WriteAll(sock, worker->address().data(), len) ||
      !ReadAll(sock, &peer_len, 4)) {
    return 1;
  }
  std::string peer(peer_len, '\0');
  if (!ReadAll(sock, peer.data(), peer_len)) return 1;
  auto endpoint = OrDie(
      UcxEndpoint::Create(*worker, peer, is_client ? "bench-server" : "bench-client"), "endpoint");
  ActivationChannelOptions options;
  options.send_buffer_bytes = kWindow * kMaxBytes;
  options.recv_buffer_bytes = kWindow * kMaxBytes;
  options.max_in_flight = 2 * kWindow + 2;
  options.spin_before_sleep_us = absl::GetFlag(FLAGS_spin_before_sleep_us);
  auto channel = OrDie(ActivationChannel::Create(*endpoint, options), "channel");
  ActivationChannel& ch = *channel;
  std::memset(ch.send_buffer().data(), 0x5A, ch.send_buffer().size());
  const double scale = absl::GetFlag(FLAGS_iterations_scale);

  using Clock = std::chrono::steady_clock;
  for (size_t s = 0; s < sizeof(kSizes) / sizeof(kSizes[0]); ++s) {
    const SizeSpec& spec = kSizes[s];
    const int iterations = std::max(10, static_cast<int>(spec.latency_iterations * scale));
    const int warmup = std::max(2, iterations / 10);
    const int rounds = std::max(3, static_cast<int>(spec.bandwidth_rounds * scale));
    const uint16_t latency_layer = static_cast<uint16_t>(2 * s);
    const uint16_t bandwidth_layer = static_cast<uint16_t>(2 * s + 1);
    auto out = ch.send_buffer().subspan(0, spec.bytes);
    auto in = ch.recv_buffer().subspan(0, spec.bytes);

    // Latency: ping-pong.
    std::vector<double> rtt_us;
    rtt_us.reserve(iterations);
    for (int i = 0; i < warmup + iterations; ++i) {
      const ActivationTag ping{static_cast<uint32_t>(i), latency_layer, ActivationKind::kHidden, 0};
      const ActivationTag pong{static_cast<uint32_t>(i), latency_layer,
                               ActivationKind::kExpertOutput, 1};
      if (is_client) {
        const auto t0 = Clock::now();
        TransferId recv = ch.PostRecv(pong, in);
        TransferId send = ch.PostSend(ping, out);
        BENCH_CHECK_OK(ch.Wait(send, kTimeoutMs));
        BENCH_CHECK_OK(ch.Wait(recv, kTimeoutMs));
        if (i >= warmup) {
          rtt_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        }
      } else {
        BENCH_CHECK_OK(ch.Wait(ch.PostRecv(ping, in), kTimeoutMs));
        BENCH_CHECK_OK(ch.Wait(ch.PostSend(pong, out), kTimeoutMs));
      }
    }

    // Bandwidth: windows of kWindow messages, acked per window.
    auto round_trip_start = Clock::now();
    for (int r = 0; r < rounds + 1; ++r) {
      if (r == 1) round_trip_start = Clock::now();  // Round 0 warms up.
      const ActivationTag ack{static_cast<uint32_t>(r), bandwidth_layer, ActivationKind::kControl,
                              1};
      TransferId ids[kWindow];
      if (is_client) {
        TransferId ack_id = ch.PostRecv(ack, ch.recv_buffer().subspan(0, 1));
        for (int w = 0; w < kWindow; ++w) {
          ids[w] = ch.PostSend(ActivationTag{static_cast<uint32_t>(r), bandwidth_layer,
                                             ActivationKind::kHidden, static_cast<uint8_t>(w)},
                               ch.send_buffer().subspan(w * spec.bytes, spec.bytes));
        }
        for (int w = 0; w < kWindow; ++w) BENCH_CHECK_OK(ch.Wait(ids[w], kTimeoutMs));
        BENCH_CHECK_OK(ch.Wait(ack_id, kTimeoutMs));
      } else {
        for (int w = 0; w < kWindow; ++w) {
          ids[w] = ch.PostRecv(ActivationTag{static_cast<uint32_t>(r), bandwidth_layer,
                                             ActivationKind::kHidden, static_cast<uint8_t>(w)},
                               ch.recv_buffer().subspan(w * spec.bytes, spec.bytes));
        }
        for (int w = 0; w < kWindow; ++w) BENCH_CHECK_OK(ch.Wait(ids[w], kTimeoutMs));
        BENCH_CHECK_OK(ch.Wait(ch.PostSend(ack, ch.send_buffer().subspan(0, 1)), kTimeoutMs));
      }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - round_trip_start).count();

    if (is_client) {
      std::sort(rtt_us.begin(), rtt_us.end());
      Row row{};
      std::snprintf(row.tls, sizeof(row.tls), "%s", tls.c_str());
      row.bytes = spec.bytes;
      row.rtt_median_us = rtt_us[rtt_us.size() / 2];
      row.rtt_p99_us = rtt_us[std::min(rtt_us.size() - 1, rtt_us.size() * 99 / 100)];
      row.bandwidth_gbps = static_cast<double>(spec.bytes) * kWindow * rounds / seconds / 1e9;
      if (!WriteAll(result_fd, &row, sizeof(row))) return 1;
    }
  }
  // Shutdown: the client closes first and tells the server, which keeps
  // progressing until then (closing over tcp needs the peer to answer).
  char done = 1;
  channel.reset();
  if (is_client) {
    (void)endpoint->Close(2000);
    WriteAll(sock, &done, 1);
  } else {
    // Keep progressing until the client has closed.
    while (true) {
      while (worker->Progress() != 0) {
      }
      pollfd pfd{sock, POLLIN, 0};
      if (poll(&pfd, 1, 0) > 0) break;
      (void)worker->WaitForEvents(5);
    }
    ReadAll(sock, &done, 1);
    (void)endpoint->Close(2000);
  }
  return 0;
}

int Main() {
  std::vector<Row> rows;
  for (absl::string_view tls_view : absl::StrSplit(absl::GetFlag(FLAGS_transports), '/')) {
    const std::string tls(tls_view);
    int sv[2];
    int results[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || pipe(results) != 0) return 1;
    std::fflush(stdout);
    const pid_t server = fork();
    if (server == 0) {
      close(sv[0]);
      close(results[0]);
      close(results[1]);
      _exit(RunSide(/*is_client=*/false, tls, sv[1], -1));
    }
    const pid_t client = fork();
    if (client == 0) {
      close(sv[1]);
      close(results[0]);
      _exit(RunSide(/*is_client=*/true, tls, sv[0], results[1]));
    }
    close(sv[0]);
    close(sv[1]);
    close(results[1]);
    Row row;
    while (ReadAll(results[0], &row, sizeof(row))) rows.push_back(row);
    close(results[0]);
    int status_client = 0, status_server = 0;
    waitpid(client, &status_client, 0);
    waitpid(server, &status_server, 0);
    if (status_client != 0 || status_server != 0) {
      std::fprintf(stderr, "transport_bench: %s: client status %d, server status %d\n", tls.c_str(),
                   status_client, status_server);
      return 1;
    }
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "  {\"transport\": \"%s\", \"bytes\": %llu, \"rtt_median_us\": %.2f, "
          "\"rtt_p99_us\": %.2f, \"bandwidth_gbps\": %.3f}%s\n",
          r.tls, static_cast<unsigned long long>(r.bytes), r.rtt_median_us, r.rtt_p99_us,
          r.bandwidth_gbps, i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
  } else {
    std::printf("%-10s %10s %16s %14s %16s\n", "transport", "bytes", "rtt median (us)",
                "rtt p99 (us)", "bandwidth (GB/s)");
    for (const Row& r : rows) {
      std::printf("%-10s %10llu %16.1f %14.1f %16.2f\n", r.tls,
                  static_cast<unsigned long long>(r.bytes), r.rtt_median_us, r.rtt_p99_us,
                  r.bandwidth_gbps);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moeflow::transport

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return moeflow::transport::Main();
}
