// Tests' view of the engine as one sequence: the single-process topology
// (coordinator/local_topology.h) and its batch model, with the forward-pass
// calls the engine tests were written against — logits of every position of
// a chunk, or of its last one — over one sequence that starts again at
// position 0.
#ifndef MOEFLOW_TESTS_ENGINE_ONE_SEQUENCE_H_
#define MOEFLOW_TESTS_ENGINE_ONE_SEQUENCE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"

namespace moeflow::testing {

class OneSequence {
 public:
  // A topology for one sequence of `max_context` positions in steps of up
  // to `max_batch` tokens.
  static absl::StatusOr<std::unique_ptr<OneSequence>> Open(const std::string& path,
                                                           int n_threads = 1,
                                                           int64_t max_batch = 512,
                                                           int64_t max_context = 512,
                                                           int64_t active_experts = 0);
  ~OneSequence();

  const Deepseek2Config& config() const { return topology_->config(); }
  // Logits of every token, [tokens × vocab]; start_pos 0 starts the
  // sequence again, otherwise it must be the positions it holds.
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> tokens, int64_t start_pos);
  // The same, into `logits`: [tokens × vocab], or [vocab] of the last one.
  absl::Status ForwardInto(absl::Span<const int32_t> tokens, int64_t start_pos, bool last_only,
                           absl::Span<float> logits);
  int64_t cached_tokens() const;
  LocalTopology& topology() { return *topology_; }

 private:
  std::unique_ptr<LocalTopology> topology_;
  std::unique_ptr<DataflowBatchModel> model_;
  int64_t sequence_ = -1;
  int64_t held_ = 0;  // positions the sequence holds
  int64_t max_context_ = 0;
};

}  // namespace moeflow::testing

#endif  // MOEFLOW_TESTS_ENGINE_ONE_SEQUENCE_H_
