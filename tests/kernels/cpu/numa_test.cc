// kernels/cpu/numa: pools pinned to a node's cores on this machine, graceful
// degradation on a simulated (HWLOC_SYNTHETIC) two-socket topology whose
// second node's cores do not exist here, and node-bound buffers.
#include "kernels/cpu/numa.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cstring>
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
  // The caller's own affinity is left alone without pin_caller.
  EXPECT_GE(ThreadAffinity().size(), 1u);
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
    EXPECT_NE(report.message.find("do not exist on this machine"), std::string::npos)
        << report.message;
    EXPECT_NE(report.message.find("33-35"), std::string::npos) << report.message;
  }
  // The pool works all the same.
  std::vector<std::atomic<int>> hits(1000);
  for (auto& h : hits) h.store(0);
  pool->ParallelFor(1000, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
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
