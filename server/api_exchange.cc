#include "server/api_exchange.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "chat/chat_template.h"
#include "chat/tool_call_parser.h"

namespace moeflow::server {

std::string ToolsSystemPrompt(const std::vector<chat::ToolDefinition>& tools) {
  std::string out =
      "## Tools\n\nYou have access to the following functions. To call functions, reply with "
      "exactly this format (one <｜tool▁call▁begin｜>...<｜tool▁call▁end｜> per call; ARGUMENTS "
      "is a JSON object matching the function's parameters):\n\n"
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>FUNCTION_NAME\n"
      "```json\nARGUMENTS\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>\n\n"
      "### Functions\n";
  for (const chat::ToolDefinition& tool : tools) {
    absl::StrAppend(&out, "\n- ", tool.name);
    if (!tool.description.empty()) absl::StrAppend(&out, ": ", tool.description);
    if (!tool.parameters_json.empty()) {
      absl::StrAppend(&out, "\n  Parameters (JSON schema): ", tool.parameters_json);
    }
  }
  out += "\n";
  return out;
}

absl::StatusOr<ChatPrompt> TokenizeChat(const ApiContext& ctx,
                                        const std::vector<chat::ChatMessage>& messages,
                                        const std::vector<chat::ToolDefinition>& tools) {
  const BpeTokenizer& tokenizer = *ctx.tokenizer;
  chat::ChatTemplateOptions template_options;
  template_options.add_generation_prompt = true;
  template_options.force_think = ctx.options->force_think;
  template_options.fallback_template = ctx.options->fallback_template;
  template_options.tools = tools;
  // OpenAI's tool round-trip works whatever the template (chat/tool_polyfill.h).
  template_options.polyfill_tool_messages = true;
  if (tokenizer.bos_id() >= 0) {
    template_options.bos_token = std::string(tokenizer.TokenText(tokenizer.bos_id()));
  }
  if (tokenizer.eos_id() >= 0) {
    template_options.eos_token = std::string(tokenizer.TokenText(tokenizer.eos_id()));
  }
  absl::StatusOr<chat::RenderedPrompt> rendered =
      chat::RenderChat(ctx.options->chat_template, messages, template_options);
  if (!rendered.ok()) return rendered.status();
  ChatPrompt prompt;
  prompt.opens_think = rendered->opens_think;
  prompt.tokens = tokenizer.Encode(rendered->text,
                                   /*add_bos=*/!rendered->starts_with_bos && tokenizer.add_bos());
  return prompt;
}

ChatOutput ParseChatOutput(const std::string& text, bool opens_think) {
  ChatOutput out;
  absl::StatusOr<chat::ChatMessage> message = chat::ParseAssistantOutput(text, opens_think);
  if (!message.ok()) {
    out.content = text;  // malformed tool call: return the text as is
    return out;
  }
  out.content = message->content.value_or("");
  out.content_null = !message->content.has_value();
  out.reasoning = message->reasoning_content.value_or("");
  out.tool_calls = message->tool_calls;
  return out;
}

ApiExchange::ApiExchange(const ApiContext& ctx, std::shared_ptr<HttpResponder> responder,
                         std::string endpoint, std::string id)
    : ctx_(ctx),
      responder_(std::move(responder)),
      endpoint_(std::move(endpoint)),
      id_(std::move(id)),
      start_s_(NowS()) {}

void ApiExchange::Log(int status, const std::string& note) const {
  if (ctx_.metrics != nullptr) ctx_.metrics->RecordRequest(endpoint_, status);
  if (!ctx_.options->log_requests) return;
  std::fprintf(stderr, "%s %d %s%s %.1f ms %s\n", endpoint_.c_str(), status,
               stream ? "stream " : "", id_.c_str(), (NowS() - start_s_) * 1000, note.c_str());
}

void ApiExchange::Refuse(const ApiError& error) {
  Log(error.status, error.message);
  HttpHeaders headers = JsonHeaders();
  if (error.status == 503) headers.push_back({"Retry-After", "5"});
  responder_->Send(error.status, std::move(headers), Dump(ErrorJson(error)));
}

std::vector<std::shared_ptr<GenerationRequest>> ApiExchange::Begin() {
  choices_.assign(static_cast<size_t>(n), Choice{});
  std::vector<std::shared_ptr<GenerationRequest>> out = {request};
  for (int i = 1; i < n; ++i) {
    auto copy = std::make_shared<GenerationRequest>(*request);  // the same cancel flag
    copy->sampler.seed = request->sampler.seed + static_cast<uint64_t>(i);
    out.push_back(std::move(copy));
  }
  return out;
}

void ApiExchange::Submitted() {
  absl::MutexLock lock(&mu_);
  submitted_ = true;
  for (const std::function<void()>& f : held_) f();
  held_.clear();
}

void ApiExchange::Abandon(const ApiError& error) {
  {
    absl::MutexLock lock(&mu_);
    abandoned_ = true;
    held_.clear();
  }
  request->cancelled->store(true);  // the choices submitted already
  Refuse(error);
}

void ApiExchange::OnToken(int choice, const GeneratedToken& token) {
  absl::MutexLock lock(&mu_);
  if (abandoned_) return;
  if (!submitted_) {
    held_.push_back([this, choice, token] { HandleToken(choice, token); });
    return;
  }
  HandleToken(choice, token);
}

void ApiExchange::OnDone(int choice, const GenerationSummary& summary) {
  absl::MutexLock lock(&mu_);
  if (abandoned_) return;
  if (!submitted_) {
    held_.push_back([this, choice, summary] { HandleDone(choice, summary); });
    return;
  }
  HandleDone(choice, summary);
}

void ApiExchange::HandleToken(int choice, const GeneratedToken& token) {
  if (failed_) return;
  Choice& c = choices_[static_cast<size_t>(choice)];
  c.text += token.text;
  if (!stream) {
    if (logprobs) c.tokens.push_back(token);
    return;
  }
  if (!head_sent) {
    head_sent = true;
    StartStream();
  }
  StreamToken(choice, token);
}

void ApiExchange::SendGenerationError(const ApiError& error, bool final) {
  if (head_sent) {
    StreamError(error, final);
    responder_->EndStream();
  } else {
    HttpHeaders headers = JsonHeaders();
    if (error.status == 503) headers.push_back({"Retry-After", "5"});
    responder_->Send(error.status, std::move(headers), Dump(ErrorJson(error)));
  }
}

void ApiExchange::HandleDone(int choice, const GenerationSummary& s) {
  if (failed_) return;
  auto note_of = [](const GenerationSummary& s) {
    return absl::StrFormat(
        "prompt %d (cached %d) completion %d finish %s queue %.0f ms prefill %.0f ms "
        "decode %.1f tok/s",
        s.prompt_tokens, s.cached_prompt_tokens, s.completion_tokens, s.finish_reason,
        s.queue_s * 1000, s.prefill_s * 1000,
        s.decode_s > 0 ? s.completion_tokens / s.decode_s : 0.0);
  };
  if (s.finish_reason == "cancelled" || !s.status.ok()) {
    failed_ = true;
    if (n > 1) request->cancelled->store(true);  // the other choices end too
  }
  if (s.finish_reason == "cancelled") {
    if (responder_->closed()) {
      Log(499, note_of(s));  // nginx's "client closed request"
      return;
    }
    // Shutdown cancelled it while the client still waits: say so.
    Log(503, note_of(s));
    SendGenerationError({503, "the server is shutting down", "", "unavailable", "server_error"},
                        /*final=*/true);
    return;
  }
  if (!s.status.ok()) {
    // The cause (a worker's name, a signal) goes to the log; the client gets
    // what it can do about it, and a stream still ends the protocol's way.
    if (absl::IsUnavailable(s.status)) {
      Log(503, std::string(s.status.message()));
      SendGenerationError({503,
                           s.completion_tokens > 0 || head_sent
                               ? "the model backend failed during generation; retry the request"
                               : "the model is temporarily unavailable; retry later",
                           "", "backend_unavailable", "server_error"},
                          /*final=*/true);
    } else {
      Log(500, std::string(s.status.message()));
      SendGenerationError({500, "generation failed (internal error; see the server log)", "",
                           "internal_error", "server_error"},
                          /*final=*/true);
    }
    return;
  }
  Choice& c = choices_[static_cast<size_t>(choice)];
  c.text += s.flushed_text;
  c.summary = s;
  c.done = true;
  ++done_;
  // A generation can end before any token (max_tokens reached by a held-back
  // stop string prefix): the stream's head goes out first.
  if (stream && !head_sent) {
    head_sent = true;
    StartStream();
  }
  if (stream) EndChoice(choice);
  if (done_ < n) return;
  GenerationSummary total = choices_[0].summary;
  for (size_t i = 1; i < choices_.size(); ++i) {
    total.completion_tokens += choices_[i].summary.completion_tokens;
    total.decode_s = std::max(total.decode_s, choices_[i].summary.decode_s);
  }
  Finish(total);
  Log(200, n > 1 ? absl::StrCat(note_of(total), " n ", n) : note_of(total));
  if (stream) responder_->EndStream();
}

}  // namespace moeflow::server
