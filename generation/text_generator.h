// Text generation on the single-process topology: prompt tokens in, sampled
// text out, streamed as it becomes safe to show.
//
// Role in the data flow: `moeflow generate` and `moeflow chat` open one
// TextGenerator per model file. It owns the engine — the dataflow over an
// in-process topology (coordinator/local_topology.h) and its batch model
// (coordinator/dataflow_batch_model.h: the paged KV cache with block-hash
// prefix reuse), the same engine `moeflow serve` and `moeflow launch` run —
// the tokenizer read from the same GGUF and the file's chat template text.
// Generate() runs one sequence:
//
//   prefill(prompt[reused..]) ─► TokenStep (sample, stop) ─► on_text
//                                  ▲                            │
//                                  └── Forward({token}, pos) ◄──┘
//
// until a stop token (the tokenizer's EOS unless ignore_eos), a stop string,
// max_tokens or the end of the context (sampling/token_step.h, the step
// every caller shares). Pieces reach `on_text` only when the StopCondition
// releases them: whole UTF-8 characters, never a part of a stop string.
// ChatSession keeps a conversation and renders it through the chat template
// each turn; the whole 16-token blocks the new prompt shares with what was
// computed before are reused from the KV cache, so a turn costs about only
// its new tokens.
//
// Thread-safety: none; a TextGenerator (and its ChatSessions) belong to one
// thread. Failure: Open returns the engine's and tokenizer's errors (naming
// the file). Generate returns InvalidArgument for a prompt that leaves no
// room in the context (naming both numbers), for empty prompts and bad
// sampler / stop options (naming the option), and the engine's errors.
// ChatSession::Send also returns RenderChat's errors.
#ifndef MOEFLOW_GENERATION_TEXT_GENERATOR_H_
#define MOEFLOW_GENERATION_TEXT_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "chat/chat_message.h"
#include "chat/chat_template.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {

struct TextGeneratorOptions {
  // Threads, active experts, load progress, ... of the topology; its
  // kv_tokens and context_tokens are set from context_tokens below.
  LocalTopologyOptions topology;
  // Most positions (prompt + generated) a sequence may use; 0 = the model's
  // context_length. Never more than context_length. (The KV memory is
  // mapped for it and takes memory as positions are used.)
  int64_t context_tokens = 0;
};

struct GenerateFlags {
  // Reuse the whole KV blocks the prompt starts with that were computed
  // before (a previous Generate) and prefill only the rest; false: compute
  // the whole prompt.
  bool reuse_cache_prefix = false;
  // Do not stop on the tokenizer's EOS (only on StopOptions).
  bool ignore_eos = false;
};

struct GenerationResult {
  std::string text;             // everything released (what on_text saw)
  std::vector<int32_t> tokens;  // every sampled token, a final stop token included
  sampling::FinishReason finish_reason = sampling::FinishReason::kNone;
  int64_t prompt_tokens = 0;
  int64_t reused_prompt_tokens = 0;  // of prompt_tokens, taken from the KV cache
  int64_t completion_tokens = 0;     // == tokens.size()
  double prefill_s = 0;              // forward pass over the prompt's uncached tokens
  double decode_s = 0;  // from the end of prefill to the last token: sampling + decode steps
  // Set when max_tokens was clamped to the room left in the context.
  std::string note;

  double prefill_tokens_per_s() const {
    return prefill_s > 0 ? (prompt_tokens - reused_prompt_tokens) / prefill_s : 0;
  }
  double decode_tokens_per_s() const { return decode_s > 0 ? completion_tokens / decode_s : 0; }
};

class TextGenerator {
 public:
  static absl::StatusOr<std::unique_ptr<TextGenerator>> Open(
      const std::string& gguf_path, const TextGeneratorOptions& options = {});

  // Generates after `prompt` (already tokenized, BOS included if wanted).
  // `stop.max_tokens` past the room left in the context (context_tokens() -
  // prompt size) is clamped to it, with GenerationResult::note saying so; 0
  // means "until the context is full". The prompt's tokens are Accept()ed by
  // the sampler first, so penalties see them (as llama.cpp does). `on_text`
  // (may be empty) gets each released piece as soon as it is released.
  absl::StatusOr<GenerationResult> Generate(
      absl::Span<const int32_t> prompt, const sampling::SamplerOptions& sampler,
      const sampling::StopOptions& stop,
      const std::function<void(absl::string_view piece)>& on_text, GenerateFlags flags = {});

  const BpeTokenizer& tokenizer() const { return *tokenizer_; }
  // The file's tokenizer.chat_template ("" when it has none).
  const std::string& chat_template() const { return chat_template_; }
  const Deepseek2Config& config() const { return topology_->config(); }
  int64_t context_tokens() const { return context_tokens_; }
  // The engine: the topology and its batch model.
  LocalTopology& topology() { return *topology_; }
  DataflowBatchModel& model() { return *model_; }

 private:
  TextGenerator() = default;

  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::unique_ptr<LocalTopology> topology_;
  std::unique_ptr<DataflowBatchModel> model_;
  std::string chat_template_;
  int64_t context_tokens_ = 0;
  std::vector<float> logits_;
};

struct ChatSessionOptions {
  std::string system_prompt;  // empty: no system message
  bool force_think = false;   // ChatTemplateOptions::force_think
  // Used when the file's template is missing or not recognized.
  std::string fallback_template = "deepseek-v3";
};

struct ChatTurn {
  GenerationResult generation;
  // The rendered prompt ended inside "<think>\n": the reply starts with
  // reasoning (chat::SplitReasoning).
  bool opens_think = false;
};

// A conversation on a TextGenerator: each Send renders system + history +
// the new user message (generation prompt added) with the file's chat
// template, generates with reuse_cache_prefix, and appends the reply (its
// text, stop string / EOS excluded) as the assistant message.
class ChatSession {
 public:
  ChatSession(TextGenerator* generator, ChatSessionOptions options);

  absl::StatusOr<ChatTurn> Send(absl::string_view user_text,
                                const sampling::SamplerOptions& sampler,
                                const sampling::StopOptions& stop,
                                const std::function<void(absl::string_view piece)>& on_text);

  // Forgets the conversation (the system prompt stays).
  void Reset();

  // Non-empty when the template fell back: which one and why (from RenderChat).
  const std::string& fallback_used() const { return fallback_used_; }
  // The family rendered with (after the first Send or RenderPrompt).
  const std::string& template_name() const { return template_name_; }
  const std::vector<chat::ChatMessage>& messages() const { return messages_; }

  // The prompt tokens the next Send with `user_text` would generate after.
  absl::StatusOr<std::vector<int32_t>> RenderPrompt(absl::string_view user_text, bool* opens_think);

 private:
  TextGenerator* generator_;
  ChatSessionOptions options_;
  std::vector<chat::ChatMessage> messages_;  // without the system message
  std::string fallback_used_;
  std::string template_name_;
};

}  // namespace moeflow

#endif  // MOEFLOW_GENERATION_TEXT_GENERATOR_H_
