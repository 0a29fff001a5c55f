#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>

#include "base/check.h"

namespace moeflow {
namespace {

// Spin iterations before sleeping: ~2000 `pause`s is a few microseconds on
// current x86 cores (Zen 4: ~65 cycles per pause), enough to catch the next
// job of a decode step without burning a shared core for long.
constexpr int kSpinIterations = 2000;

inline void CpuRelax() { _mm_pause(); }

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  MOEFLOW_CHECK(n_threads >= 1);
  workers_.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Run(JobFn job, void* ctx) {
  MOEFLOW_CHECK(!running_.exchange(true));  // not reentrant
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = job;
    job_ctx_ = ctx;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_cv_.notify_all();
  job(ctx, 0);
  for (int spin = 0; spin < kSpinIterations; ++spin) {
    if (pending_.load(std::memory_order_acquire) == 0) {
      running_.store(false);
      return;
    }
    CpuRelax();
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
  }
  running_.store(false);
}

void ThreadPool::WorkerLoop(int thread) {
  uint64_t seen = 0;
  while (true) {
    bool ready = false;
    for (int spin = 0; spin < kSpinIterations; ++spin) {
      if (generation_.load(std::memory_order_acquire) != seen) {
        ready = true;
        break;
      }
      CpuRelax();
    }
    JobFn job;
    void* ctx;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!ready) {
        work_cv_.wait(lock, [&] {
          return stop_ || generation_.load(std::memory_order_acquire) != seen;
        });
      }
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      job = job_;
      ctx = job_ctx_;
    }
    job(ctx, thread);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }
}

}  // namespace moeflow
