// Opt-in wall-clock breakdown of the layer steps by phase (attention,
// router, routed experts, shared experts, dense FFN, output head).
//
// Role in the data flow: the layer driver wraps each step (kForward), the
// attention worker (gpu_worker/cpu_backend.cc) and the expert compute
// (cpu_expert_worker/expert_shard.cc) each of their phases in an
// EnginePhaseTimer; the sums are per process (a separate worker prints its
// own). With the environment variable MOEFLOW_PROFILE=1 the
// times are summed per phase, separately for prefill batches (> 1 token) and
// decode steps (1 token), and printed as a table to stderr when the process
// exits (so `MOEFLOW_PROFILE=1 moeflow bench ...` shows where the time goes).
// Without it a timer costs one load of a cached flag.
//
// Thread-safety: timers may run on any thread; the sums are atomics. The
// phases nest only under kForward (the whole pass), so the other phases add
// up to at most the forward time. Failure: none.
#ifndef MOEFLOW_ENGINE_ENGINE_PROFILE_H_
#define MOEFLOW_ENGINE_ENGINE_PROFILE_H_

#include <chrono>
#include <cstdint>

namespace moeflow {

enum class EnginePhase {
  kForward = 0,  // the whole ForwardInto, the others included
  kAttention,
  kRouter,
  kRoutedExperts,
  kSharedExperts,
  kDenseFfn,
  kOutputHead,
  kCount,
};

// Whether MOEFLOW_PROFILE=1 (read once).
bool EngineProfileEnabled();

// Adds `seconds` to `phase` of the prefill (n_tokens > 1) or decode sums and
// counts one call of kForward. Registers the exit-time print on first use.
void EngineProfileAdd(EnginePhase phase, int64_t n_tokens, double seconds);

class EnginePhaseTimer {
 public:
  EnginePhaseTimer(EnginePhase phase, int64_t n_tokens)
      : phase_(phase), n_tokens_(n_tokens), on_(EngineProfileEnabled()) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~EnginePhaseTimer() {
    if (!on_) return;
    EngineProfileAdd(
        phase_, n_tokens_,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  EnginePhaseTimer(const EnginePhaseTimer&) = delete;
  EnginePhaseTimer& operator=(const EnginePhaseTimer&) = delete;

 private:
  EnginePhase phase_;
  int64_t n_tokens_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_ENGINE_PROFILE_H_
