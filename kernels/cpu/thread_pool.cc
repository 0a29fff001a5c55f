#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <chrono>

#include "base/check.h"

namespace moeflow {
namespace {

// One spin iteration is a `pause` (~65 cycles on Zen 4, ~140 on recent Intel
// cores): kMaxSpin = 4096 iterations is ~60-150 µs at most, kMinSpin = 64 is
// ~1-3 µs.
inline void CpuRelax() { _mm_pause(); }

}  // namespace

thread_local const ThreadPool* ThreadPool::tls_pool_ = nullptr;
thread_local int ThreadPool::tls_thread_ = 0;

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) { StartWorkers(nullptr); }

ThreadPool::ThreadPool(int n_threads, const std::function<void(int thread)>& on_worker_start)
    : n_threads_(n_threads) {
  StartWorkers(&on_worker_start);
}

void ThreadPool::StartWorkers(const std::function<void(int)>* on_worker_start) {
  MOEFLOW_CHECK(n_threads_ >= 1);
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) {
    workers_.emplace_back([this, i, on_worker_start] {
      if (on_worker_start != nullptr && *on_worker_start) (*on_worker_start)(i);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++started_;
      }
      done_cv_.notify_all();
      WorkerLoop(i);
    });
  }
  // Every worker has run its start hook (which refers to the caller's
  // function object) before the constructor returns.
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return started_ == n_threads_ - 1; });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

bool ThreadPool::ClaimChunk(int64_t n, int64_t* begin, int64_t* end) {
  int64_t cur = next_.load(std::memory_order_relaxed);
  const int64_t divisor = 2 * static_cast<int64_t>(n_threads_);
  while (cur < n) {
    const int64_t chunk = std::max<int64_t>(1, (n - cur) / divisor);
    const int64_t stop = std::min(n, cur + chunk);
    if (next_.compare_exchange_weak(cur, stop, std::memory_order_relaxed,
                                    std::memory_order_relaxed)) {
      *begin = cur;
      *end = stop;
      return true;
    }
  }
  return false;
}

void ThreadPool::LeaveJob() {
  const uint64_t prev = state_.fetch_sub(1, std::memory_order_acq_rel);
  if ((prev & kClosed) != 0 && (prev & kCountMask) == 1) {
    // The caller may be asleep waiting for us, the last thread inside.
    std::lock_guard<std::mutex> lock(mu_);
    done_cv_.notify_one();
  }
}

void ThreadPool::Run(JobFn job, void* ctx) {
  MOEFLOW_CHECK(!running_.exchange(true, std::memory_order_acquire));  // one owner at a time
  job_ = job;
  job_ctx_ = ctx;
  rest_.store(false, std::memory_order_relaxed);
  next_.store(0, std::memory_order_relaxed);
  const uint64_t generation = (state_.load(std::memory_order_relaxed) >> 32) + 1;
  state_.store(generation << 32, std::memory_order_seq_cst);  // open, nobody inside
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    // A worker between its predicate check and its wait holds mu_: taking it
    // here means it is either waiting (and gets the notify) or will see the
    // new generation.
    { std::lock_guard<std::mutex> lock(mu_); }
    work_cv_.notify_all();
  }
  const ThreadPool* outer_pool = tls_pool_;
  const int outer_thread = tls_thread_;
  tls_pool_ = this;
  tls_thread_ = 0;
  job(ctx, 0);
  tls_pool_ = outer_pool;
  tls_thread_ = outer_thread;
  // Every index is claimed: close the job to latecomers and wait for the
  // workers still inside (finishing their last chunk).
  const uint64_t prev = state_.fetch_or(kClosed, std::memory_order_acq_rel);
  if ((prev & kCountMask) != 0) {
    bool done = false;
    for (int spin = 0; spin < kMaxSpin; ++spin) {
      if ((state_.load(std::memory_order_acquire) & kCountMask) == 0) {
        done = true;
        break;
      }
      CpuRelax();
    }
    if (!done) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock,
                    [this] { return (state_.load(std::memory_order_acquire) & kCountMask) == 0; });
    }
  }
  running_.store(false, std::memory_order_release);
}

void ThreadPool::Wake() {
  rest_.store(false, std::memory_order_relaxed);
  wakes_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    // As in Run: a worker between its predicate check and its wait holds mu_.
    { std::lock_guard<std::mutex> lock(mu_); }
    work_cv_.notify_all();
  }
}

void ThreadPool::WorkerLoop(int thread) {
  tls_pool_ = this;
  tls_thread_ = thread;
  uint64_t seen = 0;  // generation of the last job this worker saw
  int spin_budget = kMinSpin * 4;
  while (true) {
    uint64_t s = state_.load(std::memory_order_acquire);
    bool rested = false;
    for (int spin = 0; spin < spin_budget && (s >> 32) == seen; ++spin) {
      if ((spin & 15) == 0 && rest_.load(std::memory_order_relaxed)) {
        rested = true;
        break;
      }
      CpuRelax();
      s = state_.load(std::memory_order_acquire);
    }
    const int yield_us = yield_us_.load(std::memory_order_relaxed);
    bool came_while_yielding = false;
    if (yield_us > 0 && (s >> 32) == seen) {
      // Give the core to whoever else wants it, and keep it when nobody does.
      const uint64_t wakes = wakes_.load(std::memory_order_relaxed);
      const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(yield_us);
      bool woken = false;
      while (true) {
        sched_yield();
        s = state_.load(std::memory_order_acquire);
        if ((s >> 32) != seen) break;
        if (wakes_.load(std::memory_order_relaxed) != wakes) {
          woken = true;
          break;
        }
        if (std::chrono::steady_clock::now() >= end ||
            yield_us_.load(std::memory_order_relaxed) == 0) {
          break;
        }
      }
      if (woken) {  // a Wake(): the job is microseconds away, spin for it
        spin_budget = kMaxSpin;
        continue;
      }
      came_while_yielding = (s >> 32) != seen;
    }
    if ((s >> 32) == seen) {
      // Nothing came during the spin: spin less next time, and sleep. After
      // a Rest() the gap was announced, so the budget stays as it was.
      if (!rested) spin_budget = std::max(kMinSpin, spin_budget / 2);
      std::unique_lock<std::mutex> lock(mu_);
      // A Wake() from now on ends the sleep (earlier ones found us awake).
      // Read before announcing the sleep: a Wake that sees the sleeper has
      // incremented past this value.
      const uint64_t wakes = wakes_.load(std::memory_order_seq_cst);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      work_cv_.wait(lock, [&] {
        return stop_ || (state_.load(std::memory_order_seq_cst) >> 32) != seen ||
               wakes_.load(std::memory_order_seq_cst) != wakes;
      });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      if (stop_) return;
      s = state_.load(std::memory_order_acquire);
      if ((s >> 32) == seen) {
        // Woken ahead of a job (Wake): spin for it as long as we ever do.
        early_wake_ups_.fetch_add(1, std::memory_order_relaxed);
        spin_budget = kMaxSpin;
        continue;
      }
    } else if (!came_while_yielding) {
      // Jobs are arriving back to back (a decode step): spin longer.
      spin_budget = std::min(kMaxSpin, spin_budget * 2);
    }
    // Enter the new job unless the caller has already closed it.
    while (true) {
      if ((s & kClosed) != 0) {
        seen = s >> 32;  // missed it: all its work was claimed without us
        break;
      }
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
        seen = s >> 32;
        job_(job_ctx_, thread);
        LeaveJob();
        break;
      }
    }
  }
}

}  // namespace moeflow
