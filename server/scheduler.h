// What a generation request is, and what serves one: the GenerationBackend
// interface (its one implementation is BatchingScheduler,
// batching_scheduler.h).
//
// Role in the data flow: the API layer (openai_api.h) tokenizes a request,
// builds a GenerationRequest (prompt tokens, sampler and stop options,
// callbacks, a cancellation flag) and Submit()s it. The backend calls
// on_token for each sampled token (with the text the StopCondition released)
// and on_done exactly once, from its own thread. A client disconnect sets
// `cancelled`; the backend notices it between prefill chunks and decode
// steps, ends the request (finish "cancelled") and frees its slot.
//
//   Submit ─► queued ─► running (prefill chunks ─► decode steps) ─► done
//                │              │ cancelled / error
//                └─ cancelled ──┴────────────────────────────────────► done
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
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"

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
  // "stop": the stop token (-1: none) or the stop string that ended it.
  int32_t matched_stop_token = -1;
  std::string matched_stop_string;
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

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_SCHEDULER_H_
