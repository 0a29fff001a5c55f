// What the batching scheduler keeps per admitted request (batching_scheduler.h),
// shared by its two halves: admission (batching_admission.cc: the queue, KV
// pages, preemption, restarts after a lost worker) and the steps
// (batching_scheduler.cc: batches, sampling, finishing).
//
// Thread-safety: the scheduler thread only. Failure: none (plain state).
#ifndef MOEFLOW_SERVER_BATCHING_RUNNING_H_
#define MOEFLOW_SERVER_BATCHING_RUNNING_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "sampling/token_step.h"
#include "server/batching_scheduler.h"

namespace moeflow::server {

// Seconds on the steady clock.
inline double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct BatchingScheduler::Running {
  std::shared_ptr<GenerationRequest> request;
  int64_t sequence = -1;
  int64_t pos = 0;  // positions the model holds
  int64_t n_prompt = 0;
  // The prompt, then every generated token fed to the model: what a
  // preempted request recomputes. Prefilling while pos < tokens.size().
  std::vector<int32_t> tokens;
  int64_t reserved = 0;                     // positions the sequence's pages cover
  int64_t limit = 0;                        // most positions it may hold (prompt + max_tokens)
  int32_t pending = -1;                     // sampled, not yet fed (decoding when >= 0)
  std::optional<sampling::TokenStep> step;  // the one sample-and-stop step
  GenerationSummary summary;
  double enqueued_s = 0, prefill_start_s = 0, decode_start_s = 0, last_token_s = 0;
  bool done = false;
  bool preempted = false;  // pages released; waits in preempted_
  // Times a worker was lost during its prefill (it starts over, twice at most).
  int restarts = 0;
  // When it first waited, in preempted_, for a model that was not ready (0: not waiting).
  double not_ready_since_s = 0;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_BATCHING_RUNNING_H_
