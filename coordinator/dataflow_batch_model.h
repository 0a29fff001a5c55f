// server::BatchModel over the dataflow engine: what BatchingScheduler (the
// one scheduler: continuous batching, paged KV admission, preemption, prefix
// reuse) runs on, for `moeflow launch` (over the Coordinator) and for
// `moeflow serve` / `generate` / `chat` / `bench` (over the LocalTopology).
//
// Role in the data flow: the scheduler admits a sequence (StartSequence:
// KV pages from the page tables here, engine/kv_sequences.h, reusing the
// published blocks its prompt starts with), grows it, and each step calls
// Forward with the decode tokens and prefill chunks of every running
// sequence; Forward sends them with their page tables through the engine
// (StepEngine::Step), then records the tokens and publishes the completed
// blocks. The attention worker holds the KV memory the page ids index; when
// it was restarted (kv_epoch moved) every published block is forgotten.
//
// Thread-safety: every method is thread-safe (one mutex: the scheduler's
// thread and the control service's ComputeLogits take turns). Failure: the
// KvSequences errors (ResourceExhausted from StartSequence / GrowSequence
// means "wait"), the engine's errors from Forward (the step's sequences are
// unchanged: their KV past what they held is never used).
#ifndef MOEFLOW_COORDINATOR_DATAFLOW_BATCH_MODEL_H_
#define MOEFLOW_COORDINATOR_DATAFLOW_BATCH_MODEL_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/step_engine.h"
#include "engine/kv_sequences.h"
#include "server/batching_scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {

class DataflowBatchModel final : public server::BatchModel {
 public:
  // Both must outlive the model; `tokenizer` may be null (no text: logits only).
  DataflowBatchModel(StepEngine* engine, const BpeTokenizer* tokenizer);

  int64_t vocab_size() const override { return engine_->config().vocab_size; }
  int64_t context_tokens() const override { return engine_->limits().context_tokens; }
  int32_t eos_id() const override { return tokenizer_ != nullptr ? tokenizer_->eos_id() : -1; }
  absl::string_view TokenBytes(int32_t token) const override {
    return tokenizer_ != nullptr ? tokenizer_->TokenBytes(token) : absl::string_view();
  }
  int64_t kv_page_tokens() const override { return engine_->limits().page_tokens; }
  int64_t kv_pages_total() const override { return engine_->limits().n_pages; }
  int64_t kv_pages_used() const override;
  int64_t kv_pages_cached() const override;
  int64_t max_step_tokens() const { return engine_->limits().max_tokens; }
  int64_t max_step_sequences() const { return engine_->limits().max_sequences; }

  absl::StatusOr<Started> StartSequence(absl::Span<const int32_t> prompt,
                                        int64_t reserve_tokens) override {
    return StartSequence(prompt, reserve_tokens, /*reuse_prefix=*/true, /*publish=*/true);
  }
  // `reuse_prefix` false: nothing is reused; `publish` false: nothing it
  // computes is published (engine/kv_sequences.h).
  absl::StatusOr<Started> StartSequence(absl::Span<const int32_t> prompt, int64_t reserve_tokens,
                                        bool reuse_prefix, bool publish);
  absl::Status GrowSequence(int64_t sequence, int64_t reserve_tokens) override;
  // Positions a started sequence holds; -1 for an unknown id.
  int64_t sequence_tokens(int64_t sequence) const;
  // For tests (KvPagePool::set_hash_for_testing).
  KvPagePool& mutable_pages_for_testing() {
    absl::MutexLock lock(&mu_);
    return sequences_.mutable_pool_for_testing();
  }
  void EndSequence(int64_t sequence) override;
  bool ready() const override { return engine_->ready(); }
  absl::Status Forward(absl::Span<const Entry> entries, absl::Span<float> logits) override;

  // As Forward for one entry, with the logits of every one of its tokens
  // ([tokens × vocab]).
  absl::Status ForwardAllLogits(const Entry& entry, absl::Span<float> logits);
  // The logits of every position of `tokens` from an empty cache (a sequence
  // of its own, in steps of at most max_step_tokens; nothing reused): what
  // ComputeLogits checks deployments with. [tokens × vocab].
  absl::Status AllLogits(absl::Span<const int32_t> tokens, std::vector<float>* logits);

 private:
  // Forgets the published blocks when the attention worker's memory was lost.
  void CheckEpoch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StepLocked(absl::Span<const Entry> entries, bool all_logits,
                          absl::Span<float> logits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StepEngine* const engine_;
  const BpeTokenizer* const tokenizer_;
  mutable absl::Mutex mu_;
  KvSequences sequences_ ABSL_GUARDED_BY(mu_);
  int64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<KvSequences::Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<StepSegment> segments_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_DATAFLOW_BATCH_MODEL_H_
