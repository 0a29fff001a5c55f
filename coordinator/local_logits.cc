#include "coordinator/local_logits.h"

#include <algorithm>
#include <memory>

#include "base/check.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"
#include "engine/layer_step.h"

namespace moeflow {

absl::StatusOr<std::vector<float>> LocalLogits(const std::string& gguf_path,
                                               absl::Span<const int32_t> tokens,
                                               const LocalLogitsOptions& options) {
  if (tokens.empty()) return absl::InvalidArgumentError("logits: empty sequence of tokens");
  const int64_t n = static_cast<int64_t>(tokens.size());
  LocalTopologyOptions topology;
  topology.n_threads = options.n_threads;
  topology.active_experts = options.active_experts;
  topology.max_batch_tokens =
      options.max_batch_tokens > 0 ? options.max_batch_tokens : std::min(n, kPrefillTokenChunk);
  topology.max_sequences = 1;
  topology.kv_tokens = n;
  topology.context_tokens = n;
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<LocalTopology> engine,
                           LocalTopology::Open(gguf_path, topology));
  DataflowBatchModel model(engine.get(), /*tokenizer=*/nullptr);
  std::vector<float> logits;
  MOEFLOW_RETURN_IF_ERROR(model.AllLogits(tokens, &logits));
  return logits;
}

}  // namespace moeflow
