// BatchModel over a TextGenerator's Deepseek2Engine (its paged KV cache and
// ForwardBatch): the default backend of `moeflow serve`.
//
// Role in the data flow: serve_command.cc opens the TextGenerator with a KV
// pool (--kv-tokens) and hands this to a BatchingScheduler, which drives the
// engine's sequences directly; the generator's own Generate() is not used.
//
// Thread-safety: none; used by the scheduler thread only. Failure: the
// engine's errors (StartSequence's ResourceExhausted means "wait").
#ifndef MOEFLOW_SERVER_ENGINE_BATCH_MODEL_H_
#define MOEFLOW_SERVER_ENGINE_BATCH_MODEL_H_

#include <vector>

#include "base/check.h"
#include "generation/text_generator.h"
#include "server/batching_scheduler.h"

namespace moeflow::server {

class EngineBatchModel : public BatchModel {
 public:
  // The generator's engine must have been opened with kv_pool_tokens > 0.
  explicit EngineBatchModel(TextGenerator* generator)
      : generator_(generator), engine_(generator->engine()) {
    MOEFLOW_CHECK(engine_.kv_pages() != nullptr);
  }
  int64_t vocab_size() const override { return generator_->config().vocab_size; }
  int64_t context_tokens() const override { return generator_->context_tokens(); }
  int32_t eos_id() const override { return generator_->tokenizer().eos_id(); }
  absl::string_view TokenBytes(int32_t token) const override {
    return generator_->tokenizer().TokenBytes(token);
  }
  int64_t kv_page_tokens() const override { return engine_.kv_pages()->page_tokens(); }
  int64_t kv_pages_total() const override { return engine_.kv_pages()->n_pages(); }
  int64_t kv_pages_used() const override { return engine_.kv_pages()->referenced_pages(); }
  int64_t kv_pages_cached() const override { return engine_.kv_pages()->cached_pages(); }
  absl::StatusOr<Started> StartSequence(absl::Span<const int32_t> prompt,
                                        int64_t reserve_tokens) override {
    absl::StatusOr<Deepseek2Engine::SequenceStart> s =
        engine_.StartSequence(prompt, reserve_tokens);
    if (!s.ok()) return s.status();
    return Started{s->sequence, s->cached_tokens};
  }
  absl::Status GrowSequence(int64_t sequence, int64_t reserve_tokens) override {
    return engine_.ReserveSequence(sequence, reserve_tokens);
  }
  void EndSequence(int64_t sequence) override { MOEFLOW_CHECK_OK(engine_.EndSequence(sequence)); }
  absl::Status Forward(absl::Span<const Entry> entries, absl::Span<float> logits) override {
    batch_.clear();
    for (const Entry& e : entries) batch_.push_back({e.sequence, e.tokens, e.start_pos});
    return engine_.ForwardBatch(batch_, logits);
  }

 private:
  TextGenerator* generator_;
  Deepseek2Engine& engine_;
  std::vector<Deepseek2Engine::BatchEntry> batch_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_ENGINE_BATCH_MODEL_H_
