// kernels/cpu/thread_pool: every index of a ParallelFor runs exactly once on
// a valid thread, for odd sizes, nested calls, many calls in a row, calls
// separated by sleeps (workers asleep), workers sent to sleep by Rest() and
// woken ahead of a job by Wake(), a
// slowed-down thread (dynamic
// splitting moves work to the other threads), start hooks, and destruction
// while idle.
#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

// Runs ParallelFor(n) and checks that [0, n) is covered exactly once by
// non-empty, in-range chunks on threads < pool.size().
void ExpectCoversOnce(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  for (auto& h : hits) h.store(0);
  std::atomic<bool> bad_chunk{false};
  pool.ParallelFor(n, [&](int64_t b, int64_t e, int thread) {
    if (!(0 <= b && b < e && e <= n) || thread < 0 || thread >= pool.size()) bad_chunk = true;
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  EXPECT_FALSE(bad_chunk.load()) << "n=" << n << " threads=" << pool.size();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
        << "index " << i << " of n=" << n << " threads=" << pool.size();
  }
}

TEST(ThreadPoolTest, CoversEveryIndexOnceForOddSizes) {
  for (int threads : {1, 2, 3, 5, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 3, 5, 7, 8, 9, 31, 100, 1023, 4097, 100003}) ExpectCoversOnce(pool, n);
  }
}

TEST(ThreadPoolTest, EmptyAndNegativeRangesCallNothing) {
  ThreadPool pool(3);
  int calls = 0;
  pool.ParallelFor(0, [&](int64_t, int64_t, int) { ++calls; });
  pool.ParallelFor(-5, [&](int64_t, int64_t, int) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, ManyCallsInARow) {
  ThreadPool pool(3);
  std::vector<int64_t> sums(20000);
  for (size_t call = 0; call < sums.size(); ++call) {
    const int64_t n = 1 + static_cast<int64_t>(call % 97);
    std::atomic<int64_t> sum{0};
    pool.ParallelFor(n, [&](int64_t b, int64_t e, int) {
      int64_t local = 0;
      for (int64_t i = b; i < e; ++i) local += i + 1;
      sum.fetch_add(local);
    });
    sums[call] = sum.load();
    ASSERT_EQ(sums[call], n * (n + 1) / 2) << "call " << call;
  }
}

TEST(ThreadPoolTest, CallsAfterWorkersFellAsleep) {
  ThreadPool pool(2);
  for (int round = 0; round < 5; ++round) {
    // Long enough for the adaptive spin to give up and the worker to block.
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    ExpectCoversOnce(pool, 1000);
  }
}

// Rest() sends spinning workers to sleep; the next ParallelFor must wake them
// (each round's first chunk waits until the worker has taken the second) and
// cover every index, whether the Rest lands before, during or after the
// workers' spin.
TEST(ThreadPoolTest, WorkersRestedBetweenJobsJoinTheNextOne) {
  ThreadPool pool(2);
  for (int round = 0; round < 200; ++round) {
    ExpectCoversOnce(pool, 257);
    pool.Rest();
    if (round % 3 == 1) std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::atomic<bool> worker_joined{false};
    std::atomic<bool> timed_out{false};
    pool.ParallelFor(2, [&](int64_t, int64_t, int thread) {
      if (thread != 0) {
        worker_joined = true;
        return;
      }
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!worker_joined.load()) {
        if (std::chrono::steady_clock::now() > deadline) {
          timed_out = true;
          return;
        }
        std::this_thread::yield();
      }
    });
    ASSERT_FALSE(timed_out.load()) << "round " << round << ": the rested worker never joined";
    pool.Rest();
  }
}

// Waits up to 5 s for pred(); false on timeout.
template <typename Pred>
bool WaitFor(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

// Wake() ends a sleeping worker's sleep without a job (it spins, then sleeps
// again when none comes), cancels a Rest(), and leaves every ParallelFor
// after it correct, whether the job comes at once, later, or not at all.
TEST(ThreadPoolTest, WakeEndsSleepsAheadOfTheNextJob) {
  ThreadPool pool(2);
  // A job the worker surely enters (its first chunk waits for the worker),
  // so that the sleep counted below is the one after it, not an older one.
  std::atomic<bool> worker_joined{false};
  pool.ParallelFor(2, [&](int64_t, int64_t, int thread) {
    if (thread != 0) {
      worker_joined = true;
      return;
    }
    WaitFor([&] { return worker_joined.load(); });
  });
  ASSERT_TRUE(worker_joined.load());
  pool.Rest();
  ASSERT_TRUE(WaitFor([&] { return pool.sleeping_workers() == 1; })) << "the worker never slept";
  EXPECT_EQ(pool.early_wake_ups(), 0);
  pool.Wake();
  ASSERT_TRUE(WaitFor([&] { return pool.early_wake_ups() == 1; })) << "Wake did not wake it";
  // No job came: it goes back to sleep after its spin.
  ASSERT_TRUE(WaitFor([&] { return pool.sleeping_workers() == 1; }));
  for (int round = 0; round < 200; ++round) {
    if (round % 2 == 0) pool.Rest();
    pool.Wake();
    if (round % 3 == 1) std::this_thread::sleep_for(std::chrono::microseconds(200));
    ExpectCoversOnce(pool, 1 + round % 97);
  }
  ThreadPool single(1);
  single.Wake();  // no workers: nothing to wake
  ExpectCoversOnce(single, 10);
}

// SetYieldBeforeSleep: an idle worker yields its core instead of sleeping
// for as long as asked (nobody sleeps during a 10 s window, checked early in
// it), sleeps once the window is set to 0, and every ParallelFor before,
// during and after the window is correct.
TEST(ThreadPoolTest, YieldBeforeSleepKeepsWorkersOffTheSleepUntilTurnedOff) {
  ThreadPool pool(3);
  ExpectCoversOnce(pool, 1000);
  pool.SetYieldBeforeSleep(10 * 1000 * 1000);
  for (int round = 0; round < 50; ++round) {
    if (round % 5 == 0) pool.Rest();  // a Rest ends the spin, not the yielding
    if (round % 7 == 3) pool.Wake();
    ExpectCoversOnce(pool, 1 + round * 13 % 101);
  }
  // Woken by the jobs above, every worker is out of its sleep (a loaded
  // machine may take a while to run them) and then stays out of it.
  ASSERT_TRUE(WaitFor([&] { return pool.sleeping_workers() == 0; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(pool.sleeping_workers(), 0) << "a worker slept inside its yield window";
  ExpectCoversOnce(pool, 77);
  pool.SetYieldBeforeSleep(0);
  ASSERT_TRUE(WaitFor([&] { return pool.sleeping_workers() == 2; }))
      << "the workers kept yielding after the window was set to 0";
  ExpectCoversOnce(pool, 500);
  pool.SetYieldBeforeSleep(-5);  // negative is 0
  ASSERT_TRUE(WaitFor([&] { return pool.sleeping_workers() == 2; }));
  ExpectCoversOnce(pool, 3);
}

TEST(ThreadPoolTest, NestedCallRunsInlineOnTheCallingThread) {
  ThreadPool pool(3);
  const int64_t outer = 17, inner = 13;
  std::vector<std::atomic<int>> hits(static_cast<size_t>(outer * inner));
  for (auto& h : hits) h.store(0);
  std::atomic<bool> wrong_thread{false};
  pool.ParallelFor(outer, [&](int64_t b, int64_t e, int thread) {
    for (int64_t o = b; o < e; ++o) {
      // A nested 1-index loop keeps the outer thread's index too.
      pool.ParallelFor(1, [&](int64_t, int64_t, int one_thread) {
        if (one_thread != thread) wrong_thread = true;
      });
      pool.ParallelFor(inner, [&](int64_t ib, int64_t ie, int inner_thread) {
        if (inner_thread != thread || ib != 0 || ie != inner) wrong_thread = true;
        for (int64_t i = ib; i < ie; ++i) hits[static_cast<size_t>(o * inner + i)].fetch_add(1);
      });
    }
  });
  EXPECT_FALSE(wrong_thread.load());
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, NestedCallOnAnotherPool) {
  ThreadPool outer_pool(2);
  ThreadPool inner_pool(2);
  std::atomic<int64_t> sum{0};
  // Only one thread may own inner_pool at a time: nest from a 1-index loop.
  outer_pool.ParallelFor(1, [&](int64_t, int64_t, int) {
    inner_pool.ParallelFor(1000, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
    });
  });
  EXPECT_EQ(sum.load(), 999 * 1000 / 2);
}

TEST(ThreadPoolTest, SlowThreadGetsLessWork) {
  // Thread 0 (the caller) sleeps in each of its chunks, as if another
  // process held its core: with dynamic splitting the other thread takes
  // most of the indices. (A static split would give each thread half.)
  ThreadPool pool(2);
  std::vector<std::atomic<int>> owner(200);
  for (auto& o : owner) o.store(-1);
  std::atomic<int64_t> by_thread[2] = {{0}, {0}};
  pool.ParallelFor(200, [&](int64_t b, int64_t e, int thread) {
    if (thread == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
    for (int64_t i = b; i < e; ++i) owner[static_cast<size_t>(i)].store(thread);
    by_thread[thread].fetch_add(e - b);
  });
  for (auto& o : owner) ASSERT_NE(o.load(), -1);
  EXPECT_EQ(by_thread[0].load() + by_thread[1].load(), 200);
  // A static split gives each thread exactly 100; the first claim is 50
  // (remaining / (2 · threads)), so thread 1 does more than 100 even if it
  // wakes late on a busy machine and thread 0 gets a second chunk.
  EXPECT_GT(by_thread[1].load(), 100) << "thread 0 did " << by_thread[0].load();
}

TEST(ThreadPoolTest, StartHookRunsOnEveryWorkerBeforeConstructorReturns) {
  std::vector<std::atomic<int>> started(4);
  for (auto& s : started) s.store(0);
  std::vector<std::thread::id> ids(4);
  {
    ThreadPool pool(4, [&](int thread) {
      ids[static_cast<size_t>(thread)] = std::this_thread::get_id();
      started[static_cast<size_t>(thread)].fetch_add(1);
    });
    EXPECT_EQ(started[0].load(), 0);  // the caller is thread 0: no hook
    for (int t = 1; t < 4; ++t) EXPECT_EQ(started[static_cast<size_t>(t)].load(), 1) << t;
    // Worker t runs as thread t.
    std::vector<std::thread::id> ran(4);
    std::atomic<bool> mismatch{false};
    for (int rep = 0; rep < 200; ++rep) {
      pool.ParallelFor(64, [&](int64_t, int64_t, int thread) {
        if (thread > 0 && std::this_thread::get_id() != ids[static_cast<size_t>(thread)]) {
          mismatch = true;
        }
      });
    }
    EXPECT_FALSE(mismatch.load());
  }
}

TEST(ThreadPoolTest, DestructWhileIdle) {
  for (int threads : {1, 2, 4}) {
    for (int sleep_ms : {0, 5}) {
      ThreadPool pool(threads);
      ExpectCoversOnce(pool, 50);
      std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    }  // destroyed with workers spinning (0 ms) or asleep (5 ms)
  }
  ThreadPool never_used(3);  // destroyed before any job
}

}  // namespace
}  // namespace moeflow
