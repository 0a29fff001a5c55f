// server::SequenceModel over a running Coordinator: the backend of the
// OpenAI / Ollama HTTP API that `moeflow launch` serves (topology
// http_address), run by a server::SerialScheduler.
//
// Role in the data flow: HTTP request -> OpenAiApi -> SerialScheduler ->
// Forward here -> Coordinator::Forward (gpu worker, expert workers). The
// coordinator's KV cache holds one sequence and the control service's
// Generate / ComputeLogits use it too: each Forward takes the
// coordinator's kv_mutex for that step, and when another user filled the
// cache since this model's last step it first recomputes the positions the
// scheduler believes cached (this model keeps the tokens of its sequence),
// so an interleaved gRPC request costs a re-prefill, never a wrong answer.
//
// Thread-safety: Forward from one thread (the scheduler's); the accessors
// are const. Failure: the coordinator's errors (UNAVAILABLE when a worker is
// lost, INVALID_ARGUMENT past the context).
#ifndef MOEFLOW_COORDINATOR_COORDINATOR_SEQUENCE_MODEL_H_
#define MOEFLOW_COORDINATOR_COORDINATOR_SEQUENCE_MODEL_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {

class CoordinatorSequenceModel : public server::SequenceModel {
 public:
  // Both must outlive this model.
  CoordinatorSequenceModel(Coordinator* coordinator, const BpeTokenizer* tokenizer)
      : coordinator_(coordinator), tokenizer_(tokenizer) {}

  int64_t vocab_size() const override { return coordinator_->config().vocab_size; }
  int64_t context_tokens() const override { return coordinator_->context_tokens(); }
  int32_t eos_id() const override { return tokenizer_->eos_id(); }
  absl::string_view TokenBytes(int32_t token) const override {
    return tokenizer_->TokenBytes(token);
  }

  absl::Status Forward(absl::Span<const int32_t> tokens, int64_t start_pos,
                       absl::Span<float> logits) override {
    if (start_pos < 0 || start_pos > static_cast<int64_t>(history_.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "start_pos ", start_pos, " is past the ", history_.size(), " positions of the sequence"));
    }
    if (static_cast<int64_t>(logits.size()) != vocab_size()) {
      return absl::InvalidArgumentError("logits: not vocab_size floats");
    }
    history_.resize(static_cast<size_t>(start_pos));
    absl::MutexLock lock(&coordinator_->kv_mutex());
    if (coordinator_->SwapKvUser(this) != this && start_pos > 0) {
      // Someone else's sequence is in the cache now: ours again first.
      ++recomputes_;
      if (absl::Status s = coordinator_->Forward(history_, 0, /*last_only=*/true, &scratch_);
          !s.ok()) {
        coordinator_->SwapKvUser(nullptr);
        return s;
      }
    }
    absl::Status s = coordinator_->Forward(tokens, start_pos, /*last_only=*/true, &scratch_);
    if (!s.ok()) {
      coordinator_->SwapKvUser(nullptr);  // the cache holds an unknown prefix
      history_.clear();
      return s;
    }
    history_.insert(history_.end(), tokens.begin(), tokens.end());
    std::copy(scratch_.end() - static_cast<int64_t>(logits.size()), scratch_.end(), logits.begin());
    return absl::OkStatus();
  }

  // Every worker serves (the scheduler holds requests while one restarts).
  bool ready() const override { return coordinator_->AllServing(); }

  // Times Forward found the cache taken over by another user (tests).
  int64_t recomputes() const { return recomputes_; }

 private:
  Coordinator* const coordinator_;
  const BpeTokenizer* const tokenizer_;
  std::vector<int32_t> history_;  // tokens at positions 0.. of this model's sequence
  std::vector<float> scratch_;
  int64_t recomputes_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_COORDINATOR_SEQUENCE_MODEL_H_
