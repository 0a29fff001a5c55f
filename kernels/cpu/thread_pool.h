// A fixed-size pool of CPU threads that runs parallel-for loops over index
// ranges (matrix rows, attention heads).
//
// Role in the data flow: the engine creates one pool with its n_threads and
// passes it explicitly to every kernel that splits work (kernels/cpu/matmul,
// the attention loop); there is no global pool. The calling thread takes part
// as thread 0, so a pool of N threads starts N - 1 workers.
//
// Waiting: after a job, workers spin briefly (a few microseconds, so that the
// next matmul of a decode step starts at once) and then sleep on a condition
// variable; they never busy-wait for long. The caller waits for the others the
// same way.
//
// Thread-safety: ParallelFor may be called from one thread at a time (the
// owner); it is not reentrant (a job must not call ParallelFor on the same
// pool — CHECKed). Failure: none at run time; a thread that cannot be started
// aborts (std::thread throws).
#ifndef MOEFLOW_KERNELS_CPU_THREAD_POOL_H_
#define MOEFLOW_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace moeflow {

class ThreadPool {
 public:
  // n_threads >= 1 threads in all, the caller's included.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into size() contiguous ranges of n / size() (± 1) indices
  // and calls fn(begin, end, thread_index) for each non-empty one, one per
  // thread; returns when all are done. No heap allocation.
  template <typename Fn>
  void ParallelFor(int64_t n, const Fn& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n == 1) {
      fn(int64_t{0}, n, 0);
      return;
    }
    struct Job {
      const Fn* fn;
      int64_t n;
      int threads;
    } job{&fn, n, n_threads_};
    Run(
        [](void* p, int thread) {
          const Job& j = *static_cast<const Job*>(p);
          const int64_t begin = j.n * thread / j.threads;
          const int64_t end = j.n * (thread + 1) / j.threads;
          if (begin < end) (*j.fn)(begin, end, thread);
        },
        &job);
  }

 private:
  using JobFn = void (*)(void*, int);
  // Calls job(ctx, i) on thread i for every i in [0, size()), the caller
  // being thread 0, and waits for all.
  void Run(JobFn job, void* ctx);
  void WorkerLoop(int thread);

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  // Written under mu_ before generation_ is bumped; read by workers after
  // they observe the new generation (acquire).
  JobFn job_ = nullptr;
  void* job_ctx_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> running_{false};
  bool stop_ = false;  // guarded by mu_
};

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_THREAD_POOL_H_
