// SequenceModel over a TextGenerator's Deepseek2Engine: the single-engine
// backend of `moeflow serve`.
//
// Role in the data flow: serve_command.cc opens a TextGenerator (engine,
// tokenizer, chat template from one GGUF), wraps it here and hands it to a
// SerialScheduler, which drives the engine's KV cache directly (its own
// prefix bookkeeping, chunked prefill and cancellation checks), so the
// generator's Generate() is not used and its cached-token list is reset.
//
// Thread-safety: none; used by the scheduler thread only. Failure: Forward
// returns the engine's errors.
#ifndef MOEFLOW_SERVER_ENGINE_SEQUENCE_MODEL_H_
#define MOEFLOW_SERVER_ENGINE_SEQUENCE_MODEL_H_

#include "generation/text_generator.h"
#include "server/scheduler.h"

namespace moeflow::server {

class EngineSequenceModel : public SequenceModel {
 public:
  explicit EngineSequenceModel(TextGenerator* generator) : generator_(generator) {
    generator_->ResetCache();
  }
  int64_t vocab_size() const override { return generator_->config().vocab_size; }
  int64_t context_tokens() const override { return generator_->context_tokens(); }
  int32_t eos_id() const override { return generator_->tokenizer().eos_id(); }
  absl::string_view TokenBytes(int32_t token) const override {
    return generator_->tokenizer().TokenBytes(token);
  }
  absl::Status Forward(absl::Span<const int32_t> tokens, int64_t start_pos,
                       absl::Span<float> logits) override {
    return generator_->engine().ForwardInto(tokens, start_pos, /*last_only=*/true, logits);
  }

 private:
  TextGenerator* generator_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_ENGINE_SEQUENCE_MODEL_H_
