// A fixed-size pool of CPU threads that runs parallel-for loops over index
// ranges (matrix rows, attention heads, expert tiles).
//
// Role in the data flow: the engine (and each cpu_expert_worker) creates one
// pool with its n_threads and passes it explicitly to every kernel that
// splits work (kernels/cpu/matmul, the attention loop); there is no global
// pool. The calling thread takes part as thread 0, so a pool of N threads
// starts N - 1 workers. kernels/cpu/numa builds pools whose workers are
// pinned to the cores of one NUMA node (a start hook, below).
//
// Work splitting is dynamic: threads claim chunks of the index range from a
// shared atomic counter (guided scheduling — each claim takes
// remaining / (2 · threads) indices, never fewer than one), so a thread that
// is slowed down (another process on its core, a cold cache) simply claims
// fewer chunks and all threads finish within one small chunk of each other.
// A worker that has not woken up by the time the work is gone is not waited
// for: the caller closes the job once every index is claimed and waits only
// for the threads that are actually inside it, so an oversubscribed machine
// degrades to the caller doing the work instead of stalling on a descheduled
// worker.
//
// Which thread runs which chunk is not deterministic. Callers must make each
// index's result independent of the chunk it falls in and of the thread that
// runs it (the matmul kernels do: a (row, token) result never depends on the
// tile or the thread). `thread` is only meant to pick per-thread scratch.
//
// Waiting: idle workers spin briefly (an adaptive budget of `pause`s that
// grows while jobs keep arriving during the spin and shrinks when they do
// not, at most a few tens of microseconds), then sleep on a condition
// variable; the caller waits for the last chunks the same way. Nothing
// busy-waits for long. Rest() cuts the spin short: the owner calls it before
// it blocks on another process (an expert worker between requests, the
// coordinator awaiting expert replies), so that the idle pool leaves this
// host's cores to that process at once instead of spinning on them.
// SetYieldBeforeSleep(us) adds a polite phase between the spin and the
// sleep (off by default): the worker calls sched_yield() in a loop for up to
// `us`, so its core runs any other runnable thread at once (the other
// process's compute) and comes back to the worker when there is none,
// instead of halting and being woken through the kernel. Measured on a
// 2-vCPU VM with two processes taking turns on the same cores (one layer
// each, ~1.4 ms): the cross-process wake-ups cost ~1 ms per token less.
//
// Thread-safety: ParallelFor may be called from one thread at a time (the
// owner; CHECKed). Called from inside a job of the same pool (nesting), it
// runs the whole range inline on the calling thread. Failure: none at run
// time; a thread that cannot be started aborts (std::thread throws).
#ifndef MOEFLOW_KERNELS_CPU_THREAD_POOL_H_
#define MOEFLOW_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moeflow {

class ThreadPool {
 public:
  // n_threads >= 1 threads in all, the caller's included.
  explicit ThreadPool(int n_threads);
  // As above; each worker thread (1 .. n_threads - 1) first runs
  // on_worker_start(thread) — e.g. to pin itself to a core — and the
  // constructor returns once every worker has done so.
  ThreadPool(int n_threads, const std::function<void(int thread)>& on_worker_start);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // The owner will not start a job for a while (it is about to wait on
  // another process): workers spinning for the next job sleep now, without
  // shrinking their spin budget. The next ParallelFor wakes them. Called by
  // the owner between ParallelFors; cheap (one atomic store).
  void Rest() { rest_.store(true, std::memory_order_relaxed); }

  // The owner will start a job within microseconds (a request from another
  // process has just arrived): sleeping workers wake now and spin for it
  // (the longest spin budget, then sleep again if nothing came), so that
  // their wake-up overlaps the owner's preparation instead of delaying the
  // first ParallelFor. Cancels a Rest(). Called by the owner between
  // ParallelFors; one atomic increment, plus a notify when workers sleep.
  void Wake();

  // Workers that found no job after their spin yield their core
  // (sched_yield) for up to `microseconds` before they sleep; 0 (the
  // default) sleeps right after the spin. Any thread; a worker already
  // yielding stops at once when set to 0, other values apply from the
  // workers' next wait.
  void SetYieldBeforeSleep(int microseconds) {
    yield_us_.store(microseconds < 0 ? 0 : microseconds, std::memory_order_relaxed);
  }

  // Diagnostics: workers asleep now, and sleeps a Wake() has ended so far.
  int sleeping_workers() const { return sleepers_.load(std::memory_order_relaxed); }
  int64_t early_wake_ups() const { return early_wake_ups_.load(std::memory_order_relaxed); }

  // Calls fn(begin, end, thread) on disjoint chunks [begin, end) that cover
  // [0, n) exactly once, on up to size() threads (thread < size()); returns
  // when all chunks are done. No heap allocation.
  template <typename Fn>
  void ParallelFor(int64_t n, const Fn& fn) {
    if (n <= 0) return;
    if (tls_pool_ == this) {  // nested call from a job of this pool: its thread runs it all
      fn(int64_t{0}, n, tls_thread_);
      return;
    }
    if (n_threads_ == 1 || n == 1) {
      fn(int64_t{0}, n, 0);
      return;
    }
    struct Job {
      ThreadPool* pool;
      const Fn* fn;
      int64_t n;
    } job{this, &fn, n};
    Run(
        [](void* p, int thread) {
          const Job& j = *static_cast<const Job*>(p);
          int64_t begin, end;
          while (j.pool->ClaimChunk(j.n, &begin, &end)) (*j.fn)(begin, end, thread);
        },
        &job);
  }

 private:
  using JobFn = void (*)(void*, int);
  // Runs job(ctx, thread) on the caller (thread 0) and on every worker that
  // joins before the job closes; returns when all who joined are done.
  void Run(JobFn job, void* ctx);
  void WorkerLoop(int thread);
  void StartWorkers(const std::function<void(int)>* on_worker_start);
  // Claims the next chunk of [0, n) (guided size); false when none is left.
  bool ClaimChunk(int64_t n, int64_t* begin, int64_t* end);
  // Called by a worker that leaves the current job.
  void LeaveJob();

  // state_: generation (bits 32..63) | closed (bit 31) | threads inside the
  // job (bits 0..30). A new generation is an open job with nobody inside.
  static constexpr uint64_t kClosed = uint64_t{1} << 31;
  static constexpr uint64_t kCountMask = kClosed - 1;
  static constexpr int kMinSpin = 64;
  static constexpr int kMaxSpin = 4096;

  static thread_local const ThreadPool* tls_pool_;
  static thread_local int tls_thread_;

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;  // workers sleep here between jobs
  std::condition_variable done_cv_;  // the caller sleeps here for the last workers
  // Written by the caller before it publishes a new generation (release);
  // read by workers only after they have entered that generation.
  JobFn job_ = nullptr;
  void* job_ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<int64_t> next_{0};  // first unclaimed index
  alignas(64) std::atomic<int> sleepers_{0};  // workers blocked on work_cv_ (changed under mu_)
  std::atomic<bool> running_{false};
  std::atomic<bool> rest_{false};  // Rest() called since the last job started
  alignas(64) std::atomic<uint64_t> wakes_{0};  // Wake() calls so far
  std::atomic<int64_t> early_wake_ups_{0};      // sleeps ended by Wake(), not a job
  std::atomic<int> yield_us_{0};                // SetYieldBeforeSleep
  bool stop_ = false;  // guarded by mu_
  int started_ = 0;    // workers past on_worker_start, guarded by mu_
};

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_THREAD_POOL_H_
