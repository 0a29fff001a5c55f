#include "generation/text_generator.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "model/gguf.h"
#include "sampling/token_step.h"

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
  int64_t model_context = 0;
  {
    // The tokenizer and template come from a second (mmapped, cheap) view of
    // the file; the workers keep their own.
    MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
    MOEFLOW_ASSIGN_OR_RETURN(g->tokenizer_, BpeTokenizer::FromGguf(*file));
    if (file->Find("tokenizer.chat_template") != nullptr) {
      MOEFLOW_ASSIGN_OR_RETURN(g->chat_template_, file->GetString("tokenizer.chat_template"));
    }
    MOEFLOW_ASSIGN_OR_RETURN(const Deepseek2Config config, Deepseek2Config::FromGguf(*file));
    model_context = config.context_length;
  }
  g->context_tokens_ =
      options.context_tokens == 0 ? model_context : std::min(options.context_tokens, model_context);
  LocalTopologyOptions topology = options.topology;
  topology.kv_tokens = g->context_tokens_;
  topology.context_tokens = g->context_tokens_;
  topology.max_sequences = 1;
  MOEFLOW_ASSIGN_OR_RETURN(g->topology_, LocalTopology::Open(gguf_path, topology));
  g->model_ = std::make_unique<DataflowBatchModel>(g->topology_.get(), g->tokenizer_.get());
  g->logits_.resize(static_cast<size_t>(g->topology_->config().vocab_size));
  return g;
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
  GenerationResult result;
  sampling::TokenStepOptions step_options;
  step_options.sampler = sampler_options;
  step_options.stop = stop_options;
  sampling::StopOptions& stop = step_options.stop;
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
  step_options.eos_id = tokenizer_->eos_id();
  step_options.ignore_eos = flags.ignore_eos;
  MOEFLOW_ASSIGN_OR_RETURN(sampling::TokenStep step,
                           sampling::TokenStep::Create(step_options, prompt));

  // The positions the sequence may take: the prompt and every token but the
  // last generated one.
  MOEFLOW_ASSIGN_OR_RETURN(
      const server::BatchModel::Started started,
      model_->StartSequence(prompt, n_prompt + stop.max_tokens - 1, flags.reuse_cache_prefix,
                            /*publish=*/true));
  const int64_t sequence = started.sequence;
  result.prompt_tokens = n_prompt;
  result.reused_prompt_tokens = started.cached_tokens;
  auto end = [&] { model_->EndSequence(sequence); };
  const auto prefill_start = std::chrono::steady_clock::now();
  // Prefill in chunks of the topology's step size.
  const int64_t chunk = topology_->limits().max_tokens;
  int64_t pos = started.cached_tokens;
  while (pos < n_prompt) {
    const int64_t m = std::min(chunk, n_prompt - pos);
    const server::BatchModel::Entry entry{
        sequence, prompt.subspan(static_cast<size_t>(pos), static_cast<size_t>(m)), pos};
    if (absl::Status s = model_->Forward(absl::MakeConstSpan(&entry, 1), absl::MakeSpan(logits_));
        !s.ok()) {
      end();
      return s;
    }
    pos += m;
  }
  result.prefill_s = SecondsSince(prefill_start);

  const auto decode_start = std::chrono::steady_clock::now();
  auto token_bytes = [this](int32_t t) { return tokenizer_->TokenBytes(t); };
  while (true) {
    absl::StatusOr<sampling::TokenStepResult> next = step.Next(logits_, token_bytes);
    if (!next.ok()) {
      end();
      return next.status();
    }
    result.tokens.push_back(next->token);
    if (!next->text.empty()) {
      result.text += next->text;
      if (on_text) on_text(next->text);
    }
    if (next->finished()) {
      result.finish_reason = next->finish_reason;
      break;
    }
    const int32_t token = next->token;
    const server::BatchModel::Entry entry{sequence, absl::MakeConstSpan(&token, 1), pos};
    if (absl::Status s = model_->Forward(absl::MakeConstSpan(&entry, 1), absl::MakeSpan(logits_));
        !s.ok()) {
      end();
      return s;
    }
    ++pos;
  }
  end();
  result.decode_s = SecondsSince(decode_start);
  result.completion_tokens = static_cast<int64_t>(result.tokens.size());
  return result;
}

ChatSession::ChatSession(TextGenerator* generator, ChatSessionOptions options)
    : generator_(generator), options_(std::move(options)) {
  MOEFLOW_CHECK(generator_ != nullptr);
}

void ChatSession::Reset() { messages_.clear(); }

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
