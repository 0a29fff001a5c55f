// A SequenceModel for tests: its logits always put the most weight on the
// next token of a script, so greedy generation writes the script (e.g. a
// DeepSeek tool call) without a trained model.
//
// The script is chosen per sequence: `tools_script` when the sequence so far
// contains "## Tools" (the API's tool description), else `script`. The next
// token is the one after the longest suffix of the sequence that is a prefix
// of the script; after the script the end-of-sentence token follows.
// Not thread-safe (one scheduler thread).
#ifndef MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_
#define MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

class ScriptedModel : public SequenceModel {
 public:
  ScriptedModel(const BpeTokenizer* tokenizer, const std::string& script,
                const std::string& tools_script, int64_t context)
      : tokenizer_(tokenizer), context_(context) {
    script_ = tokenizer_->Encode(script, false);
    tools_script_ = tokenizer_->Encode(tools_script, false);
  }
  int64_t vocab_size() const override { return tokenizer_->vocab_size(); }
  int64_t context_tokens() const override { return context_; }
  int32_t eos_id() const override { return tokenizer_->eos_id(); }
  absl::string_view TokenBytes(int32_t token) const override {
    return tokenizer_->TokenBytes(token);
  }
  absl::Status Forward(absl::Span<const int32_t> tokens, int64_t start_pos,
                       absl::Span<float> logits) override {
    if (start_pos > static_cast<int64_t>(sequence_.size())) {
      return absl::InvalidArgumentError("start_pos past the cached sequence");
    }
    sequence_.resize(static_cast<size_t>(start_pos));
    sequence_.insert(sequence_.end(), tokens.begin(), tokens.end());
    forward_calls_++;
    if (forward_delay_ms_ > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(forward_delay_ms_));
    }
    const std::string text = tokenizer_->Decode(sequence_);
    const std::vector<int32_t>& s =
        text.find("## Tools") != std::string::npos ? tools_script_ : script_;
    size_t best = 0;
    for (size_t j = std::min(s.size(), sequence_.size()); j > 0; --j) {
      if (std::equal(s.begin(), s.begin() + j, sequence_.end() - j)) {
        best = j;
        break;
      }
    }
    const int32_t next = best < s.size() ? s[best] : tokenizer_->eos_id();
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.1f;
    logits[static_cast<size_t>(next)] = 10.0f;
    return absl::OkStatus();
  }
  int64_t forward_calls() const { return forward_calls_; }
  // Makes every Forward take this long (to test cancellation mid-generation).
  void set_forward_delay_ms(int64_t ms) { forward_delay_ms_ = ms; }

 private:
  const BpeTokenizer* tokenizer_;
  int64_t context_;
  std::vector<int32_t> script_, tools_script_, sequence_;
  int64_t forward_calls_ = 0;
  int64_t forward_delay_ms_ = 0;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_
