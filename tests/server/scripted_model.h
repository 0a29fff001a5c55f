// A BatchModel for tests: its logits always put the most weight on the next
// token of a script, so greedy generation writes the script (e.g. a DeepSeek
// tool call) without a trained model.
//
// The script is chosen per sequence: `tools_script` when the sequence so far
// contains "## Tools" (the API's tool description), else `script`. The next
// token is the one after the longest suffix of the sequence that is a prefix
// of the script; after the script the end-of-sentence token follows. Its KV
// "cache" is as large as 64 sequences of the whole context; nothing is
// reused. Not thread-safe (one scheduler thread).
#ifndef MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_
#define MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/batching_scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

class ScriptedModel : public BatchModel {
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
  int64_t kv_page_tokens() const override { return 16; }
  int64_t kv_pages_total() const override { return 64 * (context_ + 15) / 16; }
  int64_t kv_pages_used() const override { return 0; }
  int64_t kv_pages_cached() const override { return 0; }
  absl::StatusOr<Started> StartSequence(absl::Span<const int32_t>, int64_t) override {
    sequences_[next_] = {};
    return Started{next_++, 0};
  }
  absl::Status GrowSequence(int64_t, int64_t) override { return absl::OkStatus(); }
  void EndSequence(int64_t sequence) override { sequences_.erase(sequence); }
  absl::Status Forward(absl::Span<const Entry> entries, absl::Span<float> logits) override {
    forward_calls_++;
    if (forward_delay_ms_ > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(forward_delay_ms_));
    }
    const size_t vocab = static_cast<size_t>(vocab_size());
    for (size_t e = 0; e < entries.size(); ++e) {
      auto it = sequences_.find(entries[e].sequence);
      if (it == sequences_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("no sequence ", entries[e].sequence));
      }
      std::vector<int32_t>& sequence = it->second;
      if (entries[e].start_pos != static_cast<int64_t>(sequence.size())) {
        return absl::InvalidArgumentError("start_pos is not the end of the sequence");
      }
      sequence.insert(sequence.end(), entries[e].tokens.begin(), entries[e].tokens.end());
      const std::string text = tokenizer_->Decode(sequence);
      const std::vector<int32_t>& s =
          text.find("## Tools") != std::string::npos ? tools_script_ : script_;
      size_t best = 0;
      for (size_t j = std::min(s.size(), sequence.size()); j > 0; --j) {
        if (std::equal(s.begin(), s.begin() + j, sequence.end() - j)) {
          best = j;
          break;
        }
      }
      const int32_t next = best < s.size() ? s[best] : tokenizer_->eos_id();
      float* row = logits.data() + e * vocab;
      for (size_t i = 0; i < vocab; ++i) row[i] = static_cast<float>(i % 7) * 0.1f;
      row[static_cast<size_t>(next)] = 10.0f;
    }
    return absl::OkStatus();
  }
  int64_t forward_calls() const { return forward_calls_; }
  // Makes every Forward take this long (to test cancellation mid-generation).
  void set_forward_delay_ms(int64_t ms) { forward_delay_ms_ = ms; }

 private:
  const BpeTokenizer* tokenizer_;
  int64_t context_;
  std::vector<int32_t> script_, tools_script_;
  std::map<int64_t, std::vector<int32_t>> sequences_;
  int64_t next_ = 0;
  int64_t forward_calls_ = 0;
  int64_t forward_delay_ms_ = 0;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_TESTS_SERVER_SCRIPTED_MODEL_H_
