// Request scheduling: generation requests go into a FCFS queue served by a
// GenerationBackend.
//
// Role in the data flow: the API layer (openai_api.h) tokenizes a request,
// builds a GenerationRequest (prompt tokens, sampler and stop options,
// callbacks, a cancellation flag) and Submit()s it. The backend calls
// on_token for each sampled token (with the text the StopCondition released)
// and on_done exactly once, from its own thread. A client disconnect sets
// `cancelled`; the backend notices it between prefill chunks and decode
// steps, ends the request (finish "cancelled") and frees its slot.
//
// SerialScheduler is the first backend: one SequenceModel (one KV cache),
// requests run one at a time in arrival order on one thread. Between
// requests the KV cache keeps the last sequence, so a request whose prompt
// shares a prefix with it prefills only the rest (reported as cached tokens).
//
//   Submit ─► queued ─► running (prefill in chunks ─► decode steps) ─► done
//                │              │ cancelled / error
//                └─ cancelled ──┴────────────────────────────────────► done
//
// Continuous batching is BatchingScheduler (batching_scheduler.h), the
// default of `moeflow serve`: several running sequences over the engine's
// paged KV cache, one forward pass per step for all of them. SequenceModel
// below is the single-sequence interface SerialScheduler runs on.
//
// Thread-safety: Submit/Shutdown are thread-safe; callbacks run on the
// scheduler thread and must not block for long (they queue bytes).
// Failure: Submit returns InvalidArgument when prompt + max_tokens cannot
// fit the context (naming both numbers; the API answers 400),
// ResourceExhausted when the queue is full (429), Unavailable after
// Shutdown (503). Engine errors reach on_done as the summary's status.
#ifndef MOEFLOW_SERVER_SCHEDULER_H_
#define MOEFLOW_SERVER_SCHEDULER_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"
#include "server/metrics.h"

namespace moeflow::server {

struct GeneratedToken {
  int32_t token = -1;
  // Text released by the StopCondition with this token (often empty while a
  // possible stop string or a partial UTF-8 character is held back).
  std::string text;
  // Log-probability of `token` under the model's distribution (log-softmax
  // of the logits, before sampling transforms) and the top alternatives;
  // only when the request asked for logprobs.
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

struct GenerationSummary {
  absl::Status status;  // engine errors; OK when cancelled
  // "stop", "length", or "cancelled" (client gone / shutdown).
  std::string finish_reason;
  // Text the StopCondition still held when the loop ended for another reason
  // than stop/length (to be sent after the last token's text).
  std::string flushed_text;
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  int64_t completion_tokens = 0;
  // Times the batching scheduler preempted the request (KV pool exhausted
  // mid-decode) and recomputed its KV later.
  int64_t preemptions = 0;
  double queue_s = 0;
  double prefill_s = 0;
  double decode_s = 0;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  sampling::SamplerOptions sampler;
  // max_tokens 0: until the context is full.
  sampling::StopOptions stop;
  bool ignore_eos = false;
  // -1: no logprobs; 0..20: logprob of the token and this many alternatives.
  int32_t top_logprobs = -1;
  std::function<void(const GeneratedToken&)> on_token;
  std::function<void(const GenerationSummary&)> on_done;
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
};

class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  // See the errors at the top of this file.
  virtual absl::Status Submit(std::shared_ptr<GenerationRequest> request) = 0;
  // Positions one sequence may use (prompt + generated).
  virtual int64_t context_tokens() const = 0;
  // Cancels queued and running requests (their on_done runs) and stops.
  virtual void Shutdown() = 0;
  // Draining (moeflowctl drain, the grace period after SIGTERM): from now on
  // Submit answers Unavailable(reason); what is queued or running goes on.
  // StartAccepting() ends it (moeflowctl undrain). Thread-safe.
  virtual void StopAccepting(std::string reason) = 0;
  virtual void StartAccepting() = 0;
  // Requests queued or running (what a drain waits for). Thread-safe.
  virtual int64_t pending() = 0;
  // Cancels every request queued or running now (a drain's timeout); they
  // end with finish "cancelled" at their next step. The backend goes on
  // serving (unlike Shutdown). Thread-safe.
  virtual void CancelAll() = 0;
};

// The cancel flags of the requests a backend accepted, for CancelAll.
// Thread-safe.
class CancelRegistry {
 public:
  void Add(const std::shared_ptr<std::atomic<bool>>& flag) {
    absl::MutexLock lock(&mu_);
    // Finished requests drop their flags; forget those now and then.
    if (flags_.size() >= 64 && flags_.size() % 64 == 0) {
      flags_.erase(
          std::remove_if(flags_.begin(), flags_.end(),
                         [](const std::weak_ptr<std::atomic<bool>>& f) { return f.expired(); }),
          flags_.end());
    }
    flags_.push_back(flag);
  }
  void CancelAll() {
    absl::MutexLock lock(&mu_);
    for (const std::weak_ptr<std::atomic<bool>>& f : flags_) {
      if (auto flag = f.lock()) flag->store(true);
    }
    flags_.clear();
  }

 private:
  absl::Mutex mu_;
  std::vector<std::weak_ptr<std::atomic<bool>>> flags_ ABSL_GUARDED_BY(mu_);
};

// One sequence of a model with a KV cache: what SerialScheduler runs on.
class SequenceModel {
 public:
  virtual ~SequenceModel() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t context_tokens() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual absl::string_view TokenBytes(int32_t token) const = 0;
  // Runs `tokens` at positions start_pos.. (cached positions >= start_pos are
  // recomputed) and writes the last position's logits [vocab].
  virtual absl::Status Forward(absl::Span<const int32_t> tokens, int64_t start_pos,
                               absl::Span<float> logits) = 0;
  // False while the model cannot serve (a worker of `moeflow launch` is
  // down or restarting): the scheduler holds new requests until it serves
  // again, for at most its ready_wait_ms. Thread-safe, cheap.
  virtual bool ready() const { return true; }
};

struct SerialSchedulerOptions {
  // Requests waiting (not counting the running one) before Submit answers
  // ResourceExhausted.
  int64_t max_queue = 64;
  // Prefill runs in chunks of this many tokens so a cancellation is noticed
  // within one chunk.
  int64_t prefill_chunk_tokens = 256;
  // Reuse the KV cache of the prefix shared with the previous request.
  bool reuse_prefix = true;
  // A request whose turn comes while the model is not ready() waits this
  // long for it (a worker restart), then ends UNAVAILABLE (the API's 503).
  // A prefill that fails UNAVAILABLE (a worker lost before any token was
  // sent) waits the same way and starts over, at most twice.
  int64_t ready_wait_ms = 30000;
};

class SerialScheduler final : public GenerationBackend {
 public:
  // `model` and `metrics` must outlive the scheduler; metrics may be null.
  SerialScheduler(SequenceModel* model, SerialSchedulerOptions options, ServerMetrics* metrics);
  ~SerialScheduler() override;  // Shutdown()s

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
    double enqueued_s;
  };
  CancelRegistry cancel_;
  void Loop();
  void Run(GenerationRequest& request, double queue_s);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  SequenceModel* const model_;
  const SerialSchedulerOptions options_;
  ServerMetrics* const metrics_;
  std::vector<float> logits_;
  std::vector<int32_t> cached_;  // tokens whose KV the model's cache holds

  absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::string drain_reason_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// Log-softmax of `logits` at `token` and the `top_n` most likely tokens
// (by logit, ties to the lower id), with their log-probabilities.
float LogSoftmaxAt(absl::Span<const float> logits, int32_t token, int32_t top_n,
                   std::vector<std::pair<int32_t, float>>* top);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_SCHEDULER_H_
