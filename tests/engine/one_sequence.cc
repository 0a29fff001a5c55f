#include "tests/engine/one_sequence.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::testing {

absl::StatusOr<std::unique_ptr<OneSequence>> OneSequence::Open(const std::string& path,
                                                               int n_threads, int64_t max_batch,
                                                               int64_t max_context,
                                                               int64_t active_experts) {
  auto s = std::make_unique<OneSequence>();
  LocalTopologyOptions options;
  options.n_threads = n_threads;
  options.max_batch_tokens = max_batch;
  options.max_sequences = 1;
  options.kv_tokens = max_context;
  options.context_tokens = max_context;
  options.active_experts = active_experts;
  MOEFLOW_ASSIGN_OR_RETURN(s->topology_, LocalTopology::Open(path, options));
  s->model_ = std::make_unique<DataflowBatchModel>(s->topology_.get(), nullptr);
  s->max_context_ = s->topology_->limits().context_tokens;
  return s;
}

OneSequence::~OneSequence() {
  if (sequence_ >= 0) model_->EndSequence(sequence_);
}

int64_t OneSequence::cached_tokens() const { return held_; }

absl::Status OneSequence::ForwardInto(absl::Span<const int32_t> tokens, int64_t start_pos,
                                      bool last_only, absl::Span<float> logits) {
  const int64_t vocab = config().vocab_size;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("Forward: empty batch of tokens");
  if (start_pos == 0) {
    if (sequence_ >= 0) model_->EndSequence(sequence_);
    sequence_ = -1;
    held_ = 0;
    MOEFLOW_ASSIGN_OR_RETURN(const server::BatchModel::Started started,
                             model_->StartSequence(tokens.subspan(0, 1), max_context_,
                                                   /*reuse_prefix=*/false, /*publish=*/false));
    sequence_ = started.sequence;
  }
  if (sequence_ < 0 || start_pos != held_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: start_pos ", start_pos, " is not the ", held_, " positions held"));
  }
  if (static_cast<int64_t>(logits.size()) != (last_only ? 1 : n) * vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: logits buffer has ", logits.size(), " floats"));
  }
  const int64_t chunk = topology_->limits().max_tokens;
  std::vector<float> all(static_cast<size_t>(std::min(n, chunk) * vocab));
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t m = std::min(chunk, n - c0);
    const server::BatchModel::Entry entry{
        sequence_, tokens.subspan(static_cast<size_t>(c0), static_cast<size_t>(m)), held_};
    MOEFLOW_RETURN_IF_ERROR(model_->ForwardAllLogits(
        entry, absl::MakeSpan(all).subspan(0, static_cast<size_t>(m * vocab))));
    held_ += m;
    if (last_only) {
      if (c0 + m == n) {
        std::copy(all.begin() + (m - 1) * vocab, all.begin() + m * vocab, logits.begin());
      }
    } else {
      std::copy(all.begin(), all.begin() + m * vocab, logits.begin() + c0 * vocab);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> OneSequence::Forward(absl::Span<const int32_t> tokens,
                                                        int64_t start_pos) {
  std::vector<float> logits(tokens.size() * static_cast<size_t>(config().vocab_size));
  MOEFLOW_RETURN_IF_ERROR(
      ForwardInto(tokens, start_pos, /*last_only=*/false, absl::MakeSpan(logits)));
  return logits;
}

}  // namespace moeflow::testing
