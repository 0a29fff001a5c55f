#include "generation/text_generator.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "model/gguf.h"

namespace moeflow {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TextGenerator>> TextGenerator::Open(
    const std::string& gguf_path, const TextGeneratorOptions& options) {
  if (options.context_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("context_tokens ", options.context_tokens, " is negative"));
  }
  std::unique_ptr<TextGenerator> g(new TextGenerator());
  {
    // The tokenizer and template come from a second (mmapped, cheap) view of
    // the file; the engine keeps its own.
    MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
    MOEFLOW_ASSIGN_OR_RETURN(g->tokenizer_, BpeTokenizer::FromGguf(*file));
    if (file->Find("tokenizer.chat_template") != nullptr) {
      MOEFLOW_ASSIGN_OR_RETURN(g->chat_template_, file->GetString("tokenizer.chat_template"));
    }
  }
  MOEFLOW_ASSIGN_OR_RETURN(g->engine_, Deepseek2Engine::Open(gguf_path, options.engine));
  const int64_t model_context = g->engine_->config().context_length;
  g->context_tokens_ =
      options.context_tokens == 0 ? model_context : std::min(options.context_tokens, model_context);
  g->logits_.resize(static_cast<size_t>(g->engine_->config().vocab_size));
  return g;
}

void TextGenerator::ResetCache() {
  engine_->ResetCache();
  cached_.clear();
}

absl::StatusOr<GenerationResult> TextGenerator::Generate(
    absl::Span<const int32_t> prompt, const sampling::SamplerOptions& sampler_options,
    const sampling::StopOptions& stop_options,
    const std::function<void(absl::string_view piece)>& on_text, GenerateFlags flags) {
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  if (n_prompt == 0) return absl::InvalidArgumentError("the prompt has no tokens");
  // Every generated token but the last needs a position of its own.
  const int64_t room = context_tokens_ - n_prompt;
  if (room < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", n_prompt, " tokens but the context holds ", context_tokens_,
                     " (the prompt must leave at least one position free)"));
  }
  MOEFLOW_ASSIGN_OR_RETURN(sampling::Sampler sampler, sampling::Sampler::Create(sampler_options));
  GenerationResult result;
  sampling::StopOptions stop = stop_options;
  if (stop.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: must be >= 0, got ", stop.max_tokens));
  }
  if (stop.max_tokens > room) {
    result.note =
        absl::StrCat("max_tokens ", stop.max_tokens, " clamped to ", room, ": the context holds ",
                     context_tokens_, " tokens and the prompt has ", n_prompt);
  }
  if (stop.max_tokens == 0 || stop.max_tokens > room) stop.max_tokens = room;
  const int32_t eos = tokenizer_->eos_id();
  if (!flags.ignore_eos && eos >= 0 &&
      std::find(stop.stop_tokens.begin(), stop.stop_tokens.end(), eos) == stop.stop_tokens.end()) {
    stop.stop_tokens.push_back(eos);
  }
  MOEFLOW_ASSIGN_OR_RETURN(sampling::StopCondition stop_condition,
                           sampling::StopCondition::Create(stop));
  for (int32_t t : prompt) sampler.Accept(t);

  // Prefill: keep the cached prefix (at least one token must run to get logits).
  int64_t reuse = 0;
  if (flags.reuse_cache_prefix) {
    const int64_t limit = std::min<int64_t>(static_cast<int64_t>(cached_.size()), n_prompt - 1);
    while (reuse < limit && cached_[static_cast<size_t>(reuse)] == prompt[reuse]) ++reuse;
  }
  result.prompt_tokens = n_prompt;
  result.reused_prompt_tokens = reuse;
  cached_.resize(static_cast<size_t>(reuse));
  const auto prefill_start = std::chrono::steady_clock::now();
  absl::Status forward = engine_->ForwardInto(prompt.subspan(static_cast<size_t>(reuse)), reuse,
                                              /*last_only=*/true, absl::MakeSpan(logits_));
  if (!forward.ok()) {
    ResetCache();
    return forward;
  }
  cached_.assign(prompt.begin(), prompt.end());
  result.prefill_s = SecondsSince(prefill_start);

  const auto decode_start = std::chrono::steady_clock::now();
  while (true) {
    MOEFLOW_ASSIGN_OR_RETURN(const int32_t token, sampler.Sample(logits_));
    sampler.Accept(token);
    result.tokens.push_back(token);
    sampling::StopStep step = stop_condition.Append(token, tokenizer_->TokenBytes(token));
    if (!step.text.empty()) {
      result.text += step.text;
      if (on_text) on_text(step.text);
    }
    if (step.finished()) {
      result.finish_reason = step.finish_reason;
      break;
    }
    const int64_t pos = static_cast<int64_t>(cached_.size());
    forward = engine_->ForwardInto(absl::MakeConstSpan(&token, 1), pos, /*last_only=*/true,
                                   absl::MakeSpan(logits_));
    if (!forward.ok()) {
      ResetCache();
      return forward;
    }
    cached_.push_back(token);
  }
  result.decode_s = SecondsSince(decode_start);
  result.completion_tokens = static_cast<int64_t>(result.tokens.size());
  return result;
}

ChatSession::ChatSession(TextGenerator* generator, ChatSessionOptions options)
    : generator_(generator), options_(std::move(options)) {
  MOEFLOW_CHECK(generator_ != nullptr);
}

void ChatSession::Reset() {
  messages_.clear();
  generator_->ResetCache();
}

absl::StatusOr<std::vector<int32_t>> ChatSession::RenderPrompt(absl::string_view user_text,
                                                               bool* opens_think) {
  std::vector<chat::ChatMessage> messages;
  if (!options_.system_prompt.empty()) {
    chat::ChatMessage system;
    system.role = chat::ChatRole::kSystem;
    system.content = options_.system_prompt;
    messages.push_back(std::move(system));
  }
  messages.insert(messages.end(), messages_.begin(), messages_.end());
  chat::ChatMessage user;
  user.role = chat::ChatRole::kUser;
  user.content = std::string(user_text);
  messages.push_back(std::move(user));

  const BpeTokenizer& tokenizer = generator_->tokenizer();
  chat::ChatTemplateOptions template_options;
  template_options.add_generation_prompt = true;
  template_options.force_think = options_.force_think;
  template_options.fallback_template = options_.fallback_template;
  if (tokenizer.bos_id() >= 0) {
    template_options.bos_token = std::string(tokenizer.TokenText(tokenizer.bos_id()));
  }
  if (tokenizer.eos_id() >= 0) {
    template_options.eos_token = std::string(tokenizer.TokenText(tokenizer.eos_id()));
  }
  MOEFLOW_ASSIGN_OR_RETURN(
      chat::RenderedPrompt rendered,
      chat::RenderChat(generator_->chat_template(), messages, template_options));
  fallback_used_ = rendered.fallback_used;
  template_name_ = rendered.template_name;
  if (opens_think != nullptr) *opens_think = rendered.opens_think;
  return tokenizer.Encode(rendered.text,
                          /*add_bos=*/!rendered.starts_with_bos && tokenizer.add_bos());
}

absl::StatusOr<ChatTurn> ChatSession::Send(
    absl::string_view user_text, const sampling::SamplerOptions& sampler,
    const sampling::StopOptions& stop,
    const std::function<void(absl::string_view piece)>& on_text) {
  ChatTurn turn;
  MOEFLOW_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, RenderPrompt(user_text, &turn.opens_think));
  GenerateFlags flags;
  flags.reuse_cache_prefix = true;
  MOEFLOW_ASSIGN_OR_RETURN(turn.generation,
                           generator_->Generate(prompt, sampler, stop, on_text, flags));
  chat::ChatMessage user;
  user.role = chat::ChatRole::kUser;
  user.content = std::string(user_text);
  messages_.push_back(std::move(user));
  chat::ChatMessage reply;
  reply.role = chat::ChatRole::kAssistant;
  // With the block opened by the prompt, the template sees the reasoning
  // the model wrote; R1's template strips it up to "</think>" in later turns.
  reply.content = (turn.opens_think ? "<think>\n" : "") + turn.generation.text;
  messages_.push_back(std::move(reply));
  return turn;
}

}  // namespace moeflow
