// Sampler: turns one step's logits into the next token id.
//
// Role in the data flow: the generation loop (coordinator, `moeflow
// generate`) gets the final-layer logits of the last position, calls
// Sample(), feeds the chosen id back through Accept() (and to the
// StopCondition, stop_condition.h) and runs the next decode step. One Sampler
// per sequence; it owns that sequence's PRNG and its penalty history.
//
// Pipeline, in this order (each step is skipped at its neutral value):
//   1. logit_bias        logit[t] += bias[t]
//   2. penalties         over the accepted history:
//        repetition (llama.cpp): for t in the last repetition_last_n tokens,
//          logit > 0 ? logit / r : logit * r
//        presence / frequency (OpenAI): logit[t] -= presence * [count[t] > 0]
//          + frequency * count[t], counts over the whole accepted history
//   3. temperature == 0  greedy: argmax, the lowest id on ties; stop here
//   4. top_k             keep the k largest logits (ties: lower id first)
//   5. temperature       logit /= temperature
//   6. softmax
//   7. top_p             keep the smallest most-probable prefix whose mass is
//                        >= top_p (at least one token)
//   8. min_p             keep tokens with p >= min_p * max p
//   9. sample            one draw from the renormalized survivors
//
// With a grammar (constrained decoding, grammar_constraint.h), steps 3-9
// run first on the unmasked logits; if the grammar allows the token drawn it
// is taken (llama.cpp's fast path), else the logits the grammar rejects are
// set to -infinity and steps 3-9 run again (another draw). Greedy picks the
// best allowed token either way; with temperature alone the draw follows the
// masked distribution exactly, while top-k / top-p / min-p are applied to
// the masked logits only on the second pass (as llama.cpp). Sample() then
// moves the grammar past the token it returns: the caller must append it.
//
// Determinism: the PRNG is a per-sampler std::mt19937_64 seeded with
// `seed`, and uniforms are built from its raw bits (not from a
// std::*_distribution, whose output differs between standard libraries), so
// the same seed, logits and history give the same tokens on every platform.
//
// Thread-safety: none; a Sampler belongs to one sequence / thread.
// Failure: Create() returns InvalidArgument naming the bad option; Sample()
// returns InvalidArgument for empty logits, a logit_bias id outside the
// vocabulary, logits without one finite value, or no finite logit among the
// tokens the grammar allows (e.g. logit_bias banned them), and the
// grammar's ResourceExhausted (too ambiguous to follow).
#ifndef MOEFLOW_SAMPLING_SAMPLER_H_
#define MOEFLOW_SAMPLING_SAMPLER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "sampling/grammar_constraint.h"

namespace moeflow::sampling {

struct SamplerOptions {
  // 0 = greedy. Must be >= 0.
  float temperature = 1.0f;
  // Keep the k most likely tokens; 0 = off. Must be >= 0.
  int32_t top_k = 0;
  // Nucleus mass in (0, 1]; 1 = off.
  float top_p = 1.0f;
  // Relative probability floor in [0, 1]; 0 = off.
  float min_p = 0.0f;
  // llama.cpp repetition penalty (> 0); 1 = off.
  float repetition_penalty = 1.0f;
  // How many of the most recent accepted tokens the repetition penalty sees;
  // -1 = the whole history, 0 = none. (llama.cpp's penalty_last_n default.)
  int32_t repetition_last_n = 64;
  // OpenAI-style penalties over the whole accepted history; 0 = off. Finite.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Seed of the per-sampler PRNG.
  uint64_t seed = 0;
  // Added to the logit of each listed token id before anything else; finite,
  // or -infinity to ban a token.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Constrained decoding: only tokens this grammar accepts (null: any).
  std::shared_ptr<const TokenGrammar> grammar;
};

// OK, or InvalidArgument naming the first bad option
// ("top_p: must be in (0, 1], got 1.5").
absl::Status ValidateSamplerOptions(const SamplerOptions& options);

class Sampler {
 public:
  static absl::StatusOr<Sampler> Create(const SamplerOptions& options);

  // Picks the next token from `logits` (one per vocabulary id). Does not
  // record it for the penalties: call Accept() with it. With a grammar, the
  // grammar moves past it (it is the next token of the output).
  absl::StatusOr<int32_t> Sample(absl::Span<const float> logits);

  // Records a token of the sequence for the penalties. Callers that want the
  // prompt penalized too (llama.cpp does) Accept() its tokens first.
  void Accept(int32_t token);

  // The probabilities the last Sample() drew from (after step 8), as
  // (token, p) pairs in the order they were considered; for tests and
  // logprobs. Empty after a greedy step.
  const std::vector<std::pair<int32_t, float>>& last_distribution() const { return candidates_; }

  const SamplerOptions& options() const { return options_; }
  // The grammar's state (null without one).
  const GrammarConstraint* grammar() const { return grammar_.get(); }

 private:
  explicit Sampler(const SamplerOptions& options);

  // Uniform double in [0, 1) from 53 raw PRNG bits.
  double NextUniform();
  // Steps 3-9 over logits_.
  absl::StatusOr<int32_t> Choose();

  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::deque<int32_t> recent_;                    // last repetition_last_n accepted tokens
  absl::flat_hash_map<int32_t, int32_t> counts_;  // whole-history counts
  std::vector<float> logits_;                     // working copy
  std::vector<std::pair<int32_t, float>> candidates_;
  std::unique_ptr<GrammarConstraint> grammar_;
};

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_SAMPLER_H_
