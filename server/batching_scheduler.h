// Continuous batching: several requests share every forward pass.
//
// Role in the data flow: the one scheduler. The API layer (openai_api.h) of
// `moeflow serve` and `moeflow launch`, and `moeflowctl generate`, hand
// requests to a BatchingScheduler, which drives a BatchModel
// (coordinator/dataflow_batch_model.h: the dataflow engine over the
// single-process topology or over `moeflow launch`'s workers) from one
// thread. Each step it
//   1. admits waiting requests in arrival order while fewer than
//      `max_running` run and the model can take the KV pages of the head of
//      the queue (prompt + `decode_reserve_tokens` positions, at most the
//      request's limit, minus the prefix blocks it reuses); the head waits
//      until pages free up, and nobody behind it overtakes it (FCFS, no
//      starvation). Preempted requests (below) come back first. It also
//      waits while a running
//      request is still prefilling whole 16-token blocks the head's prompt
//      starts with, so that a burst of requests with a new shared prefix
//      (a system prompt) computes it once and the others reuse it;
//   2. grows the page table of every decoding request whose next position
//      is past its pages, one page at a time (GrowSequence). When the pool
//      has no page left, the newest running request is preempted: its pages
//      are released (its full blocks stay published, so most are reused) and
//      it goes back to the head of the line with its prompt and the tokens
//      it generated; re-admitted, it recomputes their KV (a prefill) and goes
//      on with the token it had sampled — its output does not change, and
//      nothing it streamed is lost or repeated. A lone request never needs
//      preemption: its limit is at most the whole cache;
//   3. builds one batch: the pending token of every decoding request, then
//      prefill chunks (≤ `chunk_tokens` each) of prefilling requests in
//      admission order, up to `max_batch_tokens` in all (decode tokens always
//      go; a prefill that does not fit waits for the next step);
//   4. runs it, samples one token for every request whose prompt is done
//      (the one sample-and-stop step, sampling/token_step.h: sampler, stop
//      strings, logprobs),
//      and ends finished or cancelled requests, freeing their pages.
// The weights are read once per step for all of its tokens, which is what
// makes N concurrent decodes cheaper than N sequential ones.
//
//   Submit ─► queued ─► admitted (pages taken, prefix reused) ─► prefill
//   chunks ─► decode steps (pages grow) ─► done (pages released; full
//   blocks stay cached)     │  ▲
//                 preempted ▼  │ re-admitted (recompute prompt + generated)
//   cancelled (client gone) / Shutdown / engine error ──► done
//
// A request's limit: prompt + max_tokens, or without max_tokens (0) the
// smaller of the context and the whole KV cache, where it ends with
// finish_reason "length".
//
// Thread-safety: Submit/Shutdown are thread-safe; callbacks run on the
// scheduler thread. Failure: Submit returns InvalidArgument (400) for an
// empty prompt, a token id outside the vocabulary (it would fail the whole
// batch), prompt + max_tokens beyond the context, or a request whose
// KV pages (prompt + max_tokens, or prompt + 1 without max_tokens) exceed
// the whole cache (naming the numbers); ResourceExhausted
// (429) when the queue is full; Unavailable after Shutdown or while draining.
// An engine error ends every request of that step with the error, except
// that a request which has not sent a token yet, when the error is
// Unavailable (a worker lost), waits for the model to be ready() again (at
// most ready_wait_ms) and starts over, twice at most. While the model is not
// ready() nothing is admitted; a request that waits ready_wait_ms ends
// Unavailable.
#ifndef MOEFLOW_SERVER_BATCHING_SCHEDULER_H_
#define MOEFLOW_SERVER_BATCHING_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "sampling/token_step.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace moeflow::server {

// A model with several sequences over a paged KV cache: what
// BatchingScheduler runs on. Called from the scheduler thread only.
class BatchModel {
 public:
  struct Started {
    int64_t sequence = -1;
    int64_t cached_tokens = 0;  // prompt positions reused; the first Forward starts here
  };
  struct Entry {
    int64_t sequence = -1;
    absl::Span<const int32_t> tokens;
    int64_t start_pos = 0;
  };
  virtual ~BatchModel() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t context_tokens() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual absl::string_view TokenBytes(int32_t token) const = 0;
  virtual int64_t kv_page_tokens() const = 0;
  virtual int64_t kv_pages_total() const = 0;
  virtual int64_t kv_pages_used() const = 0;
  virtual int64_t kv_pages_cached() const = 0;
  // Takes the pages for `reserve_tokens` positions; ResourceExhausted when
  // they are not available now.
  virtual absl::StatusOr<Started> StartSequence(absl::Span<const int32_t> prompt,
                                                int64_t reserve_tokens) = 0;
  // Grows the sequence's pages to cover `reserve_tokens` positions;
  // ResourceExhausted (nothing changes) when they are not available now.
  virtual absl::Status GrowSequence(int64_t sequence, int64_t reserve_tokens) = 0;
  virtual void EndSequence(int64_t sequence) = 0;
  // Last-position logits of each entry, [entries × vocab].
  virtual absl::Status Forward(absl::Span<const Entry> entries, absl::Span<float> logits) = 0;
  // False while the model cannot serve (a worker of `moeflow launch` is
  // down or restarting): nothing is admitted until it serves again, and a
  // request that waited ready_wait_ms for it ends UNAVAILABLE.
  virtual bool ready() const { return true; }
};

struct BatchingSchedulerOptions {
  // Requests waiting (not admitted) before Submit answers ResourceExhausted.
  int64_t max_queue = 64;
  // Requests admitted at once (decoding or prefilling).
  int64_t max_running = 8;
  // Tokens per forward pass (decode tokens + prefill chunks).
  int64_t max_batch_tokens = 512;
  // Largest prefill chunk of one request per step.
  int64_t chunk_tokens = 256;
  // KV positions reserved beyond the prompt at admission (capped by the
  // request's limit); later pages are taken one at a time as it decodes.
  int64_t decode_reserve_tokens = 128;
  // How long the head of the queue waits for a model that is not ready().
  int64_t ready_wait_ms = 30000;
};

class BatchingScheduler final : public GenerationBackend {
 public:
  // `model` and `metrics` must outlive the scheduler; metrics may be null.
  BatchingScheduler(BatchModel* model, BatchingSchedulerOptions options, ServerMetrics* metrics);
  ~BatchingScheduler() override;  // Shutdown()s

  absl::Status Submit(std::shared_ptr<GenerationRequest> request) override;
  int64_t context_tokens() const override { return model_->context_tokens(); }
  void Shutdown() override;
  void StopAccepting(std::string reason) override;
  void StartAccepting() override;
  int64_t pending() override;
  void CancelAll() override { cancel_.CancelAll(); }

 private:
  struct Queued {
    std::shared_ptr<GenerationRequest> request;
    double enqueued_s = 0;
  };
  struct Running;

  void Loop();
  // Admits from the queue head while there is room; false when stopping.
  bool Admit();
  bool AdmitFromQueue();
  // A step's Forward failed: each of its requests ends with `status`, or,
  // when a worker was lost before it sent a token, starts over.
  void FailStep(absl::Span<Running* const> who, const absl::Status& status);
  // Moves the preempted requests of running_ to preempted_ (arrival order).
  void MovePreempted();
  absl::Status NotReadyError() const;
  // Whether a running request is still prefilling whole blocks that
  // `prompt` starts with (admitting now would compute them twice).
  bool AwaitsSharedPrefix(absl::Span<const int32_t> prompt) const;
  // Takes the model's pages for `r` (its tokens + decode_reserve_tokens,
  // at most its limit); false when they are not available now.
  absl::StatusOr<bool> StartRunning(Running& r);
  // Gives every decoding request the page its next position needs,
  // preempting the newest running requests when the pool is exhausted.
  void GrowOrPreempt();
  void Preempt(Running& r);
  void Step();
  void Finish(Running& r, absl::Status status, std::string reason);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Most KV positions a request without max_tokens may hold.
  int64_t MaxPositions() const;

  BatchModel* const model_;
  const BatchingSchedulerOptions options_;
  CancelRegistry cancel_;
  ServerMetrics* const metrics_;

  // Scheduler thread only.
  std::vector<std::unique_ptr<Running>> running_;   // admission order
  std::deque<std::unique_ptr<Running>> preempted_;  // oldest preemption first
  std::vector<float> logits_;
  double window_start_s_ = 0;
  int64_t window_prefill_ = 0, window_decode_ = 0;

  absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  int64_t n_running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t n_preempted_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::string drain_reason_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_BATCHING_SCHEDULER_H_
