// In-process tests of transport/: two UCX contexts and workers in one process
// (each driven by its own thread, as two processes would), over "sm,self" and
// over "tcp" on the loopback device.
#include "transport/activation_channel.h"

#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "transport/ucx_handles.h"

namespace moeflow::transport {
namespace {

constexpr size_t kMaxMessageBytes = size_t{8} << 20;
constexpr int kTimeoutMs = 10000;

// One process's side of a connection. Members are destroyed in reverse
// order: channel, endpoint, worker, context.
struct Side {
  std::unique_ptr<UcxContext> context;
  std::unique_ptr<UcxWorker> worker;
  std::unique_ptr<UcxEndpoint> endpoint;
  std::unique_ptr<ActivationChannel> channel;

  void Reset() {
    channel.reset();
    endpoint.reset();
    worker.reset();
    context.reset();
  }
};

TransportConfig ConfigFor(const std::string& tls) {
  TransportConfig config;
  config.tls = tls;
  if (tls == "tcp") config.net_devices = "lo";
  return config;
}

// Connects a and b; each gets a channel with `buffer_bytes` send/recv buffers
// (and `base`'s wait settings when given).
void Connect(const std::string& tls, size_t buffer_bytes, Side& a, Side& b, int max_in_flight = 16,
             const ActivationChannelOptions* base = nullptr) {
  for (Side* side : {&a, &b}) {
    auto context = UcxContext::Create(ConfigFor(tls));
    ASSERT_TRUE(context.ok()) << context.status();
    side->context = std::move(*context);
    auto worker = UcxWorker::Create(*side->context);
    ASSERT_TRUE(worker.ok()) << worker.status();
    side->worker = std::move(*worker);
  }
  auto ab = UcxEndpoint::Create(*a.worker, b.worker->address(), "b");
  ASSERT_TRUE(ab.ok()) << ab.status();
  a.endpoint = std::move(*ab);
  auto ba = UcxEndpoint::Create(*b.worker, a.worker->address(), "a");
  ASSERT_TRUE(ba.ok()) << ba.status();
  b.endpoint = std::move(*ba);
  ActivationChannelOptions options;
  if (base != nullptr) options = *base;
  options.send_buffer_bytes = buffer_bytes;
  options.recv_buffer_bytes = buffer_bytes;
  options.max_in_flight = max_in_flight;
  for (Side* side : {&a, &b}) {
    auto channel = ActivationChannel::Create(*side->endpoint, options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    side->channel = std::move(*channel);
  }
}

// Runs the two sides concurrently, as two processes would; then tears both
// down concurrently too (closing an endpoint flushes it, which over tcp needs
// the peer to make progress).
void RunBothSides(Side& a, Side& b, const std::function<void(Side&)>& run_a,
                  const std::function<void(Side&)>& run_b) {
  std::thread thread_b([&] { run_b(b); });
  run_a(a);
  thread_b.join();
}

void TearDownBoth(Side& a, Side& b) {
  std::thread thread_b([&] { b.Reset(); });
  a.Reset();
  thread_b.join();
}

// Both sides wait `wait_ms` for a message that never comes (the receive
// stays posted); returns the process's CPU seconds (user + system) meanwhile.
double IdleWaitCpuSeconds(Side& a, Side& b, int wait_ms) {
  auto idle_wait = [wait_ms](Side& s) {
    TransferId never = s.channel->PostRecv(ActivationTag{99, 99, ActivationKind::kHidden, 9},
                                           s.channel->recv_buffer());
    EXPECT_EQ(s.channel->Check(never), TransferState::kInProgress);
    auto got = s.channel->Wait(never, wait_ms);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
    EXPECT_EQ(s.channel->Check(never), TransferState::kInProgress);  // Still posted.
    s.channel->Release(never);
  };
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  RunBothSides(a, b, idle_wait, idle_wait);
  getrusage(RUSAGE_SELF, &after);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return seconds(after.ru_utime) - seconds(before.ru_utime) + seconds(after.ru_stime) -
         seconds(before.ru_stime);
}

uint8_t PatternByte(size_t message, size_t i) {
  return static_cast<uint8_t>((i * 131 + message * 7 + 1) ^ (i >> 8));
}

class ActivationChannelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ActivationChannelTest, EchoesMessagesFrom1ByteTo8MiB) {
  Side a, b;
  Connect(GetParam(), kMaxMessageBytes, a, b);
  if (HasFatalFailure()) return;
  const std::vector<size_t> sizes = {1,
                                     2,
                                     7,
                                     64,
                                     4095,
                                     4096,
                                     8193,
                                     65536,
                                     65537,
                                     1 << 20,
                                     (1 << 20) + 3,
                                     4 << 20,
                                     kMaxMessageBytes};
  RunBothSides(
      a, b,
      [&](Side& s) {
        for (size_t m = 0; m < sizes.size(); ++m) {
          const size_t n = sizes[m];
          auto out = s.channel->send_buffer().subspan(0, n);
          for (size_t i = 0; i < n; ++i) out[i] = PatternByte(m, i);
          ActivationTag tag{static_cast<uint32_t>(m), static_cast<uint16_t>(m % 61),
                            ActivationKind::kHidden, 0};
          ActivationTag reply_tag = tag;
          reply_tag.kind = ActivationKind::kExpertOutput;
          reply_tag.source = 1;
          TransferId recv = s.channel->PostRecv(reply_tag, s.channel->recv_buffer());
          TransferId send = s.channel->PostSend(tag, out);
          auto sent = s.channel->Wait(send, kTimeoutMs);
          ASSERT_TRUE(sent.ok()) << sent.status();
          EXPECT_EQ(*sent, n);
          auto got = s.channel->Wait(recv, kTimeoutMs);
          ASSERT_TRUE(got.ok()) << got.status();
          ASSERT_EQ(*got, n);
          const uint8_t* in = s.channel->recv_buffer().data();
          size_t bad = 0;
          for (size_t i = 0; i < n; ++i) bad += in[i] != static_cast<uint8_t>(~PatternByte(m, i));
          EXPECT_EQ(bad, 0u) << "message " << m << " of " << n << " bytes";
        }
      },
      [&](Side& s) {
        for (size_t m = 0; m < sizes.size(); ++m) {
          const size_t n = sizes[m];
          ActivationTag tag{static_cast<uint32_t>(m), static_cast<uint16_t>(m % 61),
                            ActivationKind::kHidden, 0};
          auto got =
              s.channel->Wait(s.channel->PostRecv(tag, s.channel->recv_buffer()), kTimeoutMs);
          ASSERT_TRUE(got.ok()) << got.status();
          ASSERT_EQ(*got, n);
          const uint8_t* in = s.channel->recv_buffer().data();
          size_t bad = 0;
          for (size_t i = 0; i < n; ++i) bad += in[i] != PatternByte(m, i);
          EXPECT_EQ(bad, 0u) << "message " << m << " of " << n << " bytes";
          auto out = s.channel->send_buffer().subspan(0, n);
          for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(~in[i]);
          tag.kind = ActivationKind::kExpertOutput;
          tag.source = 1;
          auto sent = s.channel->Wait(s.channel->PostSend(tag, out), kTimeoutMs);
          ASSERT_TRUE(sent.ok()) << sent.status();
        }
      });
  TearDownBoth(a, b);
}

TEST_P(ActivationChannelTest, TagsKeepLayersAndStepsApart) {
  Side a, b;
  Connect(GetParam(), 1 << 20, a, b);
  if (HasFatalFailure()) return;
  constexpr size_t kBytes = 64 << 10;
  // (step, layer) of the four messages, sent in this order; receives are
  // posted in the reverse order into four different parts of the buffer.
  const std::vector<std::pair<uint32_t, uint16_t>> keys = {{5, 1}, {5, 2}, {6, 1}, {6, 2}};
  RunBothSides(
      a, b,
      [&](Side& s) {
        std::vector<TransferId> sends;
        for (size_t k = 0; k < keys.size(); ++k) {
          auto out = s.channel->send_buffer().subspan(k * kBytes, kBytes);
          std::memset(out.data(), 0x10 + static_cast<int>(k), kBytes);
          sends.push_back(s.channel->PostSend(
              ActivationTag{keys[k].first, keys[k].second, ActivationKind::kHidden, 0}, out));
        }
        for (TransferId id : sends) {
          auto sent = s.channel->Wait(id, kTimeoutMs);
          ASSERT_TRUE(sent.ok()) << sent.status();
        }
      },
      [&](Side& s) {
        std::vector<TransferId> recvs(keys.size());
        for (size_t k = keys.size(); k-- > 0;) {
          recvs[k] = s.channel->PostRecv(
              ActivationTag{keys[k].first, keys[k].second, ActivationKind::kHidden, 0},
              s.channel->recv_buffer().subspan(k * kBytes, kBytes));
        }
        for (size_t k = 0; k < keys.size(); ++k) {
          auto got = s.channel->Wait(recvs[k], kTimeoutMs);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(*got, kBytes);
          const uint8_t* in = s.channel->recv_buffer().data() + k * kBytes;
          EXPECT_EQ(in[0], 0x10 + k);
          EXPECT_EQ(in[kBytes - 1], 0x10 + k);
        }
      });
  TearDownBoth(a, b);
}

// Wall-clock-free property: an idle wait sleeps in the kernel, so a 1 s wait
// on both sides costs (much) less than 0.2 s of CPU. On 2-core machines a
// spinning wait would steal a core from compute.
TEST_P(ActivationChannelTest, IdleWaitUsesAlmostNoCpu) {
  Side a, b;
  Connect(GetParam(), 4096, a, b);
  if (HasFatalFailure()) return;
  const double cpu_s = IdleWaitCpuSeconds(a, b, 1000);
  std::printf("idle wait, %s: %.4f s CPU over 1 s on two threads\n", GetParam().c_str(), cpu_s);
  EXPECT_LT(cpu_s, 0.2);
  TearDownBoth(a, b);
}

// The dataflow's 3 ms sched_yield phase, after traffic: a 1.5 s idle wait
// on both sides still costs (much) less than 0.3 s of CPU — the phase ends
// and the wait sleeps on the event fd.
TEST_P(ActivationChannelTest, IdleWaitAfterTrafficStaysCheapWithAYieldPhase) {
  ActivationChannelOptions base;
  base.yield_before_sleep_us = 3000;
  Side a, b;
  Connect(GetParam(), 4096, a, b, /*max_in_flight=*/16, &base);
  if (HasFatalFailure()) return;
  const ActivationTag ping{1, 1, ActivationKind::kHidden, 0};
  RunBothSides(
      a, b,
      [&](Side& s) {
        std::memset(s.channel->send_buffer().data(), 5, 64);
        auto sent = s.channel->Wait(
            s.channel->PostSend(ping, s.channel->send_buffer().subspan(0, 64)), kTimeoutMs);
        ASSERT_TRUE(sent.ok()) << sent.status();
      },
      [&](Side& s) {
        auto got = s.channel->Wait(s.channel->PostRecv(ping, s.channel->recv_buffer()), kTimeoutMs);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(*got, 64u);
        EXPECT_EQ(s.channel->recv_buffer()[63], 5);
      });
  if (HasFatalFailure()) return;
  const double cpu_s = IdleWaitCpuSeconds(a, b, 1500);
  std::printf("idle wait after traffic, %s: %.4f s CPU over 1.5 s on two threads\n",
              GetParam().c_str(), cpu_s);
  EXPECT_LT(cpu_s, 0.3);
  if (a.channel->late_wakeups() == 0) EXPECT_EQ(a.channel->LateWakeupsNote(), "");
  // A negative yield phase is refused, by name.
  ActivationChannelOptions bad;
  bad.send_buffer_bytes = 4096;
  bad.recv_buffer_bytes = 4096;
  bad.yield_before_sleep_us = -1;
  auto refused = ActivationChannel::Create(*a.endpoint, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("yield_before_sleep_us >= 0 (got -1)"),
            std::string::npos)
      << refused.status();
  TearDownBoth(a, b);
}

TEST_P(ActivationChannelTest, TooManyPostsReturnResourceExhausted) {
  Side a, b;
  Connect(GetParam(), 4096, a, b, /*max_in_flight=*/2);
  if (HasFatalFailure()) return;
  auto buf = a.channel->recv_buffer();
  TransferId t0 = a.channel->PostRecv(ActivationTag{1, 0, ActivationKind::kHidden, 0}, buf);
  TransferId t1 = a.channel->PostRecv(ActivationTag{2, 0, ActivationKind::kHidden, 0}, buf);
  TransferId t2 = a.channel->PostRecv(ActivationTag{3, 0, ActivationKind::kHidden, 0}, buf);
  EXPECT_TRUE(t0.valid());
  EXPECT_TRUE(t1.valid());
  EXPECT_FALSE(t2.valid());
  EXPECT_EQ(a.channel->Check(t2), TransferState::kError);
  EXPECT_EQ(a.channel->Wait(t2, 10).status().code(), absl::StatusCode::kResourceExhausted);
  a.channel->Release(t1);
  TransferId t3 = a.channel->PostRecv(ActivationTag{3, 0, ActivationKind::kHidden, 0}, buf);
  EXPECT_TRUE(t3.valid());
  a.channel->Release(t0);
  a.channel->Release(t3);
  TearDownBoth(a, b);
}

TEST_P(ActivationChannelTest, OversizedMessageIsAnErrorNotACorruption) {
  Side a, b;
  Connect(GetParam(), 4096, a, b);
  if (HasFatalFailure()) return;
  RunBothSides(
      a, b,
      [](Side& s) {
        auto sent =
            s.channel->Wait(s.channel->PostSend(ActivationTag{1, 1, ActivationKind::kHidden, 0},
                                                s.channel->send_buffer().subspan(0, 256)),
                            kTimeoutMs);
        EXPECT_TRUE(sent.ok()) << sent.status();
      },
      [](Side& s) {
        auto got =
            s.channel->Wait(s.channel->PostRecv(ActivationTag{1, 1, ActivationKind::kHidden, 0},
                                                s.channel->recv_buffer().subspan(0, 16)),
                            kTimeoutMs);
        EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal) << got.status();
      });
  TearDownBoth(a, b);
}

TEST_P(ActivationChannelTest, RemoteKeyAllowsPutIntoPeerRegion) {
  Side a, b;
  Connect(GetParam(), 4096, a, b);
  if (HasFatalFailure()) return;
  auto target = UcxMemoryRegion::Allocate(*a.context, 1 << 16);
  ASSERT_TRUE(target.ok()) << target.status();
  auto packed = (*target)->PackRemoteKey();
  ASSERT_TRUE(packed.ok()) << packed.status();
  const uint64_t remote_address = reinterpret_cast<uint64_t>((*target)->data());
  bool put_done = false;  // Written by b's thread before it exits; read after join.
  std::atomic<bool> stop{false};
  RunBothSides(
      a, b,
      [&](Side& s) {  // The target only makes progress (tcp emulates RMA with messages).
        while (!stop.load()) {
          while (s.worker->Progress() != 0) {
          }
          (void)s.worker->WaitForEvents(5);
        }
      },
      [&](Side& s) {
        auto rkey = UcxRemoteKey::Unpack(*s.endpoint, *packed);
        ASSERT_TRUE(rkey.ok()) << rkey.status();
        std::vector<uint8_t> src(1 << 16);
        for (size_t i = 0; i < src.size(); ++i) src[i] = PatternByte(3, i);
        ucp_request_param_t params{};
        void* put = ucp_put_nbx(s.endpoint->get(), src.data(), src.size(), remote_address,
                                (*rkey)->get(), &params);
        void* flush = ucp_ep_flush_nbx(s.endpoint->get(), &params);
        for (void* request : {put, flush}) {
          ASSERT_FALSE(UCS_PTR_IS_ERR(request)) << ucs_status_string(UCS_PTR_STATUS(request));
          while (request != nullptr && ucp_request_check_status(request) == UCS_INPROGRESS) {
            while (s.worker->Progress() != 0) {
            }
            (void)s.worker->WaitForEvents(5);
          }
          if (request != nullptr) {
            EXPECT_EQ(ucp_request_check_status(request), UCS_OK);
            ucp_request_free(request);
          }
        }
        put_done = true;
        stop = true;
      });
  ASSERT_TRUE(put_done);
  size_t bad = 0;
  for (size_t i = 0; i < (*target)->size(); ++i) bad += (*target)->data()[i] != PatternByte(3, i);
  EXPECT_EQ(bad, 0u);
  target->reset();
  TearDownBoth(a, b);
}

TEST(UcxContextTest, RejectsUnknownTransport) {
  TransportConfig config;
  config.tls = "no_such_transport";
  auto context = UcxContext::Create(config);
  // UCX either refuses the name or finds no usable transport when asked to
  // build a worker/endpoint from it; it must not crash or hang.
  if (context.ok()) {
    auto worker = UcxWorker::Create(**context);
    if (worker.ok()) {
      auto endpoint = UcxEndpoint::Create(**worker, (*worker)->address(), "self");
      EXPECT_FALSE(endpoint.ok());
    }
  }
}

TEST(UcxEndpointTest, RejectsTruncatedAddress) {
  auto context = UcxContext::Create(ConfigFor("sm,self"));
  ASSERT_TRUE(context.ok()) << context.status();
  auto worker = UcxWorker::Create(**context);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto endpoint = UcxEndpoint::Create(**worker, "abc", "garbage");
  EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(endpoint.status().message().find("garbage"), absl::string_view::npos);
}

TEST(ActivationTagTest, RoundTripsEveryField) {
  ActivationTag tag{0xDEADBEEF, 60, ActivationKind::kExpertOutput, 7};
  EXPECT_EQ(ActivationTag::Decode(tag.Encode()), tag);
  ActivationTag other = tag;
  other.layer = 61;
  EXPECT_NE(other.Encode(), tag.Encode());
}

INSTANTIATE_TEST_SUITE_P(Transports, ActivationChannelTest, ::testing::Values("sm,self", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "tcp" ? std::string("tcp") : std::string("sm_self");
                         });

}  // namespace
}  // namespace moeflow::transport
