// MOEFLOW_PIN=0 (set by the BUILD rule): the CPU backend's pool is left to
// the scheduler, and the report says why.
#include <sched.h>

#include <atomic>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/numa.h"

namespace moeflow {
namespace {

TEST(NumaPinOffTest, CpuPoolIsNotPinned) {
  EXPECT_FALSE(PinCallersEnabled());
  PinReport report;
  auto pool = MakeCpuPool(2, &report);
  ASSERT_EQ(pool->size(), 2);
  EXPECT_EQ(report.threads_pinned, 0);
  EXPECT_EQ(report.threads_unpinned, 1);
  EXPECT_EQ(report.caller_cpu, -1);
  EXPECT_NE(report.message.find("MOEFLOW_PIN=0"), std::string::npos) << report.message;
  // Nor does an owner pin its caller thread, whatever core it is given.
  cpu_set_t mask;
  CPU_ZERO(&mask);
  ASSERT_EQ(sched_getaffinity(0, sizeof(mask), &mask), 0);
  int first = 0;
  while (!CPU_ISSET(first, &mask)) ++first;
  EXPECT_FALSE(PinCallerThread(first));
  std::vector<std::atomic<int>> hits(64);
  for (auto& h : hits) h.store(0);
  pool->ParallelFor(64, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

}  // namespace
}  // namespace moeflow
