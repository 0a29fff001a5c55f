// The logits of every position of a token sequence on the single-process
// topology (local_topology.h): what `moeflow logits` writes and what the
// tests compare every other topology, and llama.cpp, with.
//
// Thread-safety: a free function. Failure: LocalTopology::Open's errors,
// INVALID_ARGUMENT for an empty sequence or a token outside the vocabulary.
#ifndef MOEFLOW_COORDINATOR_LOCAL_LOGITS_H_
#define MOEFLOW_COORDINATOR_LOCAL_LOGITS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moeflow {

struct LocalLogitsOptions {
  int n_threads = 1;
  int64_t active_experts = 0;    // 0: the model's top-k
  int64_t max_batch_tokens = 0;  // tokens per step; 0: kPrefillTokenChunk (or fewer)
};

// [tokens × vocab], from an empty cache.
absl::StatusOr<std::vector<float>> LocalLogits(const std::string& gguf_path,
                                               absl::Span<const int32_t> tokens,
                                               const LocalLogitsOptions& options = {});

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_LOCAL_LOGITS_H_
