// kernels/cpu/numa: pools pinned to a node's cores on this machine, graceful
// degradation on a simulated (HWLOC_SYNTHETIC) two-socket topology whose
// second node's cores do not exist here, and node-bound buffers.
#include "kernels/cpu/numa.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

// The CPUs the calling thread may run on.
std::vector<int> ThreadAffinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

// Affinity of each pool thread, gathered inside one job: each thread records
// its own, then waits (up to 5 s) for the others, so that the caller cannot
// finish the whole range before the workers have woken up.
std::vector<std::vector<int>> WorkerAffinities(ThreadPool& pool) {
  const size_t n = static_cast<size_t>(pool.size());
  std::vector<std::vector<int>> out(n);
  std::vector<std::atomic<bool>> seen(n);
  for (auto& s : seen) s.store(false);
  std::atomic<int> recorded{0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  pool.ParallelFor(pool.size() * 64, [&](int64_t, int64_t, int thread) {
    if (!seen[static_cast<size_t>(thread)].exchange(true)) {
      out[static_cast<size_t>(thread)] = ThreadAffinity();
      recorded.fetch_add(1);
    }
    while (recorded.load() < pool.size() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  });
  return out;
}

// The pool works whatever was pinned: every index of [0, n) runs once.
void ExpectCoversOnce(ThreadPool& pool, int n) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  for (auto& h : hits) h.store(0);
  pool.ParallelFor(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(NumaTest, ThisMachineHasANodeWithCores) {
  auto topo = NumaTopology::Load();
  ASSERT_TRUE(topo.ok()) << topo.status();
  if (!(*topo)->is_this_system()) GTEST_SKIP() << "HWLOC_SYNTHETIC/XML set in the environment";
  ASSERT_GE((*topo)->num_nodes(), 1);
  EXPECT_FALSE((*topo)->node_cpus(0).empty());
  std::printf("%s\n", (*topo)->Describe().c_str());
}

TEST(NumaTest, PoolThreadsArePinnedToTheNodesCores) {
  auto topo = NumaTopology::Load();
  ASSERT_TRUE(topo.ok()) << topo.status();
  if (!(*topo)->is_this_system()) GTEST_SKIP() << "HWLOC_SYNTHETIC/XML set in the environment";
  const std::vector<int>& cpus = (*topo)->node_cpus(0);
  PinReport report;
  NodePoolOptions options;
  options.n_threads = 3;
  auto pool = MakeNodePool(**topo, 0, options, &report);
  std::printf("%s\n", report.message.c_str());
  ASSERT_EQ(pool->size(), 3);
  EXPECT_EQ(report.threads_pinned + report.threads_unpinned, 2);
  const std::vector<std::vector<int>> aff = WorkerAffinities(*pool);
  for (int t = 1; t < 3; ++t) {
    const int want = cpus[static_cast<size_t>(t) % cpus.size()];
    ASSERT_FALSE(aff[static_cast<size_t>(t)].empty()) << "worker " << t << " never joined";
    if (report.threads_unpinned == 0) {
      EXPECT_EQ(aff[static_cast<size_t>(t)], std::vector<int>{want}) << "thread " << t;
    }
  }
  // The caller's own affinity is left alone without pin_caller; the report
  // names the core it belongs on once every worker is pinned.
  EXPECT_GE(ThreadAffinity().size(), 1u);
  EXPECT_EQ(report.caller_cpu, report.threads_unpinned == 0 ? cpus[0] : -1);
}

// MakeCpuPool (the gpu worker's CPU backend): worker i on the i-th CPU this
// process may use, the caller's core in the report, PinCurrentThreadToOsCpu
// pins a thread there; more threads than CPUs are left unpinned, saying why.
TEST(NumaTest, CpuPoolPinsOneThreadPerAllowedCpu) {
  std::vector<int> allowed;
  std::thread([&] { allowed = ThreadAffinity(); }).join();  // a fresh thread: the process mask
  ASSERT_FALSE(allowed.empty());
  const int n = std::min<int>(3, static_cast<int>(allowed.size()));
  PinReport report;
  auto pool = MakeCpuPool(n, &report);
  std::printf("%s\n", report.message.c_str());
  ASSERT_EQ(pool->size(), n);
  EXPECT_EQ(report.threads_pinned, n - 1) << report.message;
  EXPECT_EQ(report.threads_unpinned, 0);
  EXPECT_EQ(report.caller_cpu, allowed[0]);
  const std::vector<std::vector<int>> aff = WorkerAffinities(*pool);
  for (int t = 1; t < n; ++t) {
    EXPECT_EQ(aff[static_cast<size_t>(t)], std::vector<int>{allowed[static_cast<size_t>(t)]})
        << "thread " << t;
  }
  std::vector<int> pinned_caller;
  std::thread([&] {
    EXPECT_TRUE(PinCurrentThreadToOsCpu(report.caller_cpu));
    pinned_caller = ThreadAffinity();
  }).join();
  EXPECT_EQ(pinned_caller, std::vector<int>{allowed[0]});
  EXPECT_FALSE(PinCurrentThreadToOsCpu(-1));
  EXPECT_FALSE(PinCurrentThreadToOsCpu(CPU_SETSIZE));
  // The owner's side: PinCallerThread pins to caller_cpu, and not for -1.
  std::thread([&] {
    EXPECT_FALSE(PinCallerThread(-1));
    EXPECT_EQ(ThreadAffinity(), allowed);
    EXPECT_TRUE(PinCallerThread(report.caller_cpu));
    EXPECT_EQ(ThreadAffinity(), std::vector<int>{allowed[0]});
  }).join();

  PinReport over;
  auto big = MakeCpuPool(static_cast<int>(allowed.size()) + 1, &over);
  std::printf("%s\n", over.message.c_str());
  EXPECT_EQ(over.threads_pinned, 0);
  EXPECT_EQ(over.caller_cpu, -1);
  EXPECT_NE(over.message.find("more threads than"), std::string::npos) << over.message;
  ExpectCoversOnce(*big, 100);
}

TEST(NumaTest, SyntheticTwoSocketTopologyDegradesGracefully) {
  auto topo = NumaTopology::LoadSynthetic("package:2 numa:1 core:32 pu:1");
  ASSERT_TRUE(topo.ok()) << topo.status();
  EXPECT_FALSE((*topo)->is_this_system());
  ASSERT_EQ((*topo)->num_nodes(), 2);
  ASSERT_EQ((*topo)->node_cpus(1).size(), 32u);
  EXPECT_EQ((*topo)->node_cpus(1)[0], 32);
  // Node 1's cores are CPUs 32..63: none exists on a small machine.
  PinReport report;
  NodePoolOptions options;
  options.n_threads = 4;
  auto pool = MakeNodePool(**topo, 1, options, &report);
  std::printf("%s\n", report.message.c_str());
  ASSERT_EQ(pool->size(), 4);
  EXPECT_EQ(report.threads_pinned + report.threads_unpinned, 3);
  cpu_set_t here;
  CPU_ZERO(&here);
  ASSERT_EQ(sched_getaffinity(0, sizeof(here), &here), 0);
  if (!CPU_ISSET(33, &here)) {
    EXPECT_EQ(report.threads_pinned, 0);
    EXPECT_EQ(report.caller_cpu, -1);
    EXPECT_NE(report.message.find("do not exist on this machine"), std::string::npos)
        << report.message;
    EXPECT_NE(report.message.find("33-35"), std::string::npos) << report.message;
  }
  ExpectCoversOnce(*pool, 1000);  // the pool works all the same
  // Memory is never bound on a simulated topology.
  NodeBuffer buf = NodeBuffer::Allocate(**topo, 1, 1 << 20);
  ASSERT_NE(buf.data(), nullptr);
  EXPECT_FALSE(buf.bound());
  EXPECT_NE(buf.binding().find("simulated"), std::string::npos) << buf.binding();
  std::memset(buf.data(), 7, buf.size());
  EXPECT_EQ(buf.data()[buf.size() - 1], 7);
}

TEST(NumaTest, HonoursHwlocSyntheticEnvironment) {
  ASSERT_EQ(setenv("HWLOC_SYNTHETIC", "package:2 numa:1 core:32 pu:1", 1), 0);
  auto topo = NumaTopology::Load();
  unsetenv("HWLOC_SYNTHETIC");
  ASSERT_TRUE(topo.ok()) << topo.status();
  EXPECT_FALSE((*topo)->is_this_system());
  EXPECT_EQ((*topo)->num_nodes(), 2);
  EXPECT_NE((*topo)->Describe().find("HWLOC_SYNTHETIC"), std::string::npos)
      << (*topo)->Describe();
}

TEST(NumaTest, BadSyntheticStringIsAnError) {
  auto topo = NumaTopology::LoadSynthetic("bogus:7 nonsense");
  ASSERT_FALSE(topo.ok());
  EXPECT_EQ(topo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(topo.status().message().find("bogus:7"), std::string::npos) << topo.status();
}

TEST(NumaTest, NodeBufferOnThisMachine) {
  auto topo = NumaTopology::Load();
  ASSERT_TRUE(topo.ok()) << topo.status();
  if (!(*topo)->is_this_system()) GTEST_SKIP() << "HWLOC_SYNTHETIC/XML set in the environment";
  NodeBuffer buf = NodeBuffer::Allocate(**topo, 0, 3 << 20);
  ASSERT_NE(buf.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.data()) % 4096, 0u);
  std::printf("%s\n", buf.binding().c_str());
  if ((*topo)->num_nodes() == 1) {
    EXPECT_FALSE(buf.bound());
    EXPECT_NE(buf.binding().find("one NUMA node"), std::string::npos);
  }
  for (size_t i = 0; i < buf.size(); i += 4096) buf.data()[i] = static_cast<uint8_t>(i >> 12);
  NodeBuffer moved = std::move(buf);
  EXPECT_EQ(buf.data(), nullptr);
  EXPECT_EQ(moved.data()[4096], 1);
}

}  // namespace
}  // namespace moeflow
