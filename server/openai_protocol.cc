#include "server/openai_protocol.h"

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "chat/tool_call_parser.h"
#include "server/chat_stream_splitter.h"
#include "server/constrained_output.h"

namespace moeflow::server {
namespace {

// The most choices (n) one request may ask for.
constexpr int64_t kMaxChoices = 16;

json TokenLogprobJson(const BpeTokenizer& tokenizer, int32_t token, float logprob) {
  const absl::string_view bytes = tokenizer.TokenBytes(token);
  json byte_list = json::array();
  for (unsigned char c : bytes) byte_list.push_back(static_cast<int>(c));
  return {{"token", std::string(bytes)}, {"logprob", logprob}, {"bytes", byte_list}};
}

json ChatLogprobsJson(const BpeTokenizer& tokenizer, const std::vector<GeneratedToken>& tokens) {
  json content = json::array();
  for (const GeneratedToken& t : tokens) {
    json entry = TokenLogprobJson(tokenizer, t.token, t.logprob);
    json top = json::array();
    for (const auto& [id, lp] : t.top_logprobs) top.push_back(TokenLogprobJson(tokenizer, id, lp));
    entry["top_logprobs"] = top;
    content.push_back(entry);
  }
  return {{"content", content}};
}

json CompletionLogprobsJson(const BpeTokenizer& tokenizer,
                            const std::vector<GeneratedToken>& tokens, int64_t offset) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const GeneratedToken& t : tokens) {
    const std::string bytes(tokenizer.TokenBytes(t.token));
    out["tokens"].push_back(bytes);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top_logprobs) top[std::string(tokenizer.TokenBytes(id))] = lp;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(offset);
    offset += static_cast<int64_t>(bytes.size());
  }
  return out;
}

json ToolCallsJson(const std::vector<chat::ToolCall>& calls, bool with_index) {
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json call = {{"id", "call_" + RandomHex(24)},
                 {"type", "function"},
                 {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (with_index) call["index"] = i;
    out.push_back(call);
  }
  return out;
}

json UsageJson(const GenerationSummary& s) {
  return {{"prompt_tokens", s.prompt_tokens},
          {"completion_tokens", s.completion_tokens},
          {"total_tokens", s.prompt_tokens + s.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", s.cached_prompt_tokens}}}};
}

// What both OpenAI endpoints share: ids, SSE events, errors, usage.
class OpenAiExchange : public ApiExchange {
 public:
  OpenAiExchange(const ApiContext& ctx, std::shared_ptr<HttpResponder> responder,
                 std::string endpoint, bool chat)
      : ApiExchange(ctx, std::move(responder), std::move(endpoint),
                    (chat ? "chatcmpl-" : "cmpl-") + RandomHex(24)),
        created_(static_cast<int64_t>(std::time(nullptr))) {}

  bool include_usage = false;

 protected:
  json ErrorJson(const ApiError& error) const override { return OpenAiErrorJson(error); }
  void StreamError(const ApiError& error, bool final) override {
    responder_->Write("data: " + Dump(OpenAiErrorJson(error)) + "\n\n" +
                      (final ? "data: [DONE]\n\n" : ""));
  }
  void StartStream() override {
    responder_->StartStream(200, {{"Content-Type", "text/event-stream"},
                                  {"Cache-Control", "no-cache"},
                                  {"X-Accel-Buffering", "no"}});
  }
  // A chunk of `object` with these choices (usage: null while streaming
  // when the client asked for usage at the end).
  json Chunk(const char* object, json choices) const {
    json chunk = {{"id", id_}, {"object", object}, {"created", created_}, {"model", model}};
    if (object == std::string("chat.completion.chunk")) chunk["system_fingerprint"] = "moeflow";
    chunk["choices"] = std::move(choices);
    if (include_usage) chunk["usage"] = nullptr;
    return chunk;
  }
  void Event(const json& chunk) { responder_->Write("data: " + Dump(chunk) + "\n\n"); }
  // The usage chunk (when asked for) and [DONE].
  void EndEvents(const char* object, const GenerationSummary& s) {
    if (include_usage) {
      json chunk = Chunk(object, json::array());
      chunk["usage"] = UsageJson(s);
      Event(chunk);
    }
    responder_->Write("data: [DONE]\n\n");
  }

  const int64_t created_;
};

class ChatCompletionExchange final : public OpenAiExchange {
 public:
  using OpenAiExchange::OpenAiExchange;
  ChatStreamSplitter splitter;  // each choice starts from this one

 protected:
  void StartStream() override {
    OpenAiExchange::StartStream();
    splitters_.assign(static_cast<size_t>(n), splitter);
    json choices = json::array();
    for (int i = 0; i < n; ++i) {
      choices.push_back({{"index", i},
                         {"delta", {{"role", "assistant"}, {"content", ""}}},
                         {"logprobs", nullptr},
                         {"finish_reason", nullptr}});
    }
    Event(Chunk("chat.completion.chunk", std::move(choices)));
  }
  void StreamToken(int i, const GeneratedToken& token) override {
    ChatStreamSplitter::Delta d = splitters_[static_cast<size_t>(i)].Feed(token.text, false);
    if (d.reasoning.empty() && d.content.empty() && !logprobs) return;
    json delta = json::object();
    if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
    if (!d.content.empty() || (d.reasoning.empty() && logprobs)) delta["content"] = d.content;
    json choice = {
        {"index", i}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (logprobs) choice["logprobs"] = ChatLogprobsJson(*ctx_.tokenizer, {token});
    Event(Chunk("chat.completion.chunk", json::array({choice})));
  }
  std::string FinishReason(const ChatOutput& out, const GenerationSummary& s) const {
    return out.tool_calls.empty() ? s.finish_reason : "tool_calls";
  }
  void EndChoice(int i) override {
    const Choice& c = choices_[static_cast<size_t>(i)];
    ChatStreamSplitter& splitter = splitters_[static_cast<size_t>(i)];
    const ChatOutput out = ParseChatOutput(c.text, opens_think);
    auto delta_chunk = [&](json delta, json finish) {
      return Chunk("chat.completion.chunk", json::array({{{"index", i},
                                                          {"delta", delta},
                                                          {"logprobs", nullptr},
                                                          {"finish_reason", finish}}}));
    };
    ChatStreamSplitter::Delta d = splitter.Feed(c.summary.flushed_text, /*final=*/true);
    if (!d.reasoning.empty()) Event(delta_chunk({{"reasoning_content", d.reasoning}}, nullptr));
    if (!d.content.empty()) Event(delta_chunk({{"content", d.content}}, nullptr));
    if (splitter.in_tool_calls()) {
      if (!out.tool_calls.empty()) {
        Event(delta_chunk({{"tool_calls", ToolCallsJson(out.tool_calls, true)}}, nullptr));
      } else {
        // Unparsable tool-call text: hand it over as content.
        Event(delta_chunk({{"content", splitter.tool_text()}}, nullptr));
      }
    }
    Event(delta_chunk(json::object(), FinishReason(out, c.summary)));
  }
  void Finish(const GenerationSummary& total) override {
    if (stream) {
      EndEvents("chat.completion.chunk", total);
      return;
    }
    json choices = json::array();
    for (int i = 0; i < n; ++i) {
      const Choice& c = choices_[static_cast<size_t>(i)];
      const ChatOutput out = ParseChatOutput(c.text, opens_think);
      json message = {{"role", "assistant"},
                      {"content", out.content_null ? json(nullptr) : json(out.content)}};
      if (!out.reasoning.empty()) message["reasoning_content"] = out.reasoning;
      if (!out.tool_calls.empty()) message["tool_calls"] = ToolCallsJson(out.tool_calls, false);
      choices.push_back(
          {{"index", i},
           {"message", message},
           {"logprobs", logprobs ? ChatLogprobsJson(*ctx_.tokenizer, c.tokens) : json(nullptr)},
           {"finish_reason", FinishReason(out, c.summary)}});
    }
    responder_->Send(200, JsonHeaders(),
                     Dump({{"id", id_},
                           {"object", "chat.completion"},
                           {"created", created_},
                           {"model", model},
                           {"system_fingerprint", "moeflow"},
                           {"choices", std::move(choices)},
                           {"usage", UsageJson(total)}}));
  }

 private:
  std::vector<ChatStreamSplitter> splitters_;  // per choice, when streaming
};

class CompletionExchange final : public OpenAiExchange {
 public:
  using OpenAiExchange::OpenAiExchange;

 protected:
  void StreamToken(int i, const GeneratedToken& token) override {
    if (token.text.empty() && !logprobs) return;
    json choice = {
        {"index", i}, {"text", token.text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (logprobs) {
      const std::string& text = choices_[static_cast<size_t>(i)].text;
      choice["logprobs"] = CompletionLogprobsJson(
          *ctx_.tokenizer, {token}, static_cast<int64_t>(text.size() - token.text.size()));
    }
    Event(Chunk("text_completion", json::array({choice})));
  }
  void EndChoice(int i) override {
    const GenerationSummary& s = choices_[static_cast<size_t>(i)].summary;
    Event(Chunk("text_completion", json::array({{{"index", i},
                                                 {"text", s.flushed_text},
                                                 {"logprobs", nullptr},
                                                 {"finish_reason", s.finish_reason}}})));
  }
  void Finish(const GenerationSummary& total) override {
    if (stream) {
      EndEvents("text_completion", total);
      return;
    }
    json choices = json::array();
    for (int i = 0; i < n; ++i) {
      const Choice& c = choices_[static_cast<size_t>(i)];
      choices.push_back(
          {{"index", i},
           {"text", c.text},
           {"logprobs",
            logprobs ? CompletionLogprobsJson(*ctx_.tokenizer, c.tokens, 0) : json(nullptr)},
           {"finish_reason", c.summary.finish_reason}});
    }
    json out = Chunk("text_completion", std::move(choices));
    out["usage"] = UsageJson(total);
    responder_->Send(200, JsonHeaders(), Dump(out));
  }
};

// Reads sampling, limits and streaming options into the exchange.
bool ParseOptions(const ApiContext& ctx, const json& body, bool chat, OpenAiExchange& e,
                  bool* max_given, ApiError* error) {
  GenerationRequest& request = *e.request;
  sampling::SamplerOptions& sampler = request.sampler;
  double temperature = 1.0, top_p = 1.0, presence = 0, frequency = 0;
  if (!ReadNumber(body, "temperature", 0, 2, &temperature, error) ||
      !ReadNumber(body, "top_p", 0, 1, &top_p, error) ||
      !ReadNumber(body, "presence_penalty", -2, 2, &presence, error) ||
      !ReadNumber(body, "frequency_penalty", -2, 2, &frequency, error)) {
    return false;
  }
  if (top_p <= 0) {
    *error = ValueError("top_p", "must be greater than 0");
    return false;
  }
  sampler.temperature = static_cast<float>(temperature);
  sampler.top_p = static_cast<float>(top_p);
  sampler.presence_penalty = static_cast<float>(presence);
  sampler.frequency_penalty = static_cast<float>(frequency);
  sampler.repetition_penalty = 1.0f;
  int64_t seed = 0;
  bool seed_given = false;
  if (!ReadInteger(body, "seed", INT64_MIN, INT64_MAX, &seed, &seed_given, error)) return false;
  sampler.seed = seed_given ? static_cast<uint64_t>(seed) : RandomSeed();
  int64_t n = 1;
  if (!ReadInteger(body, "n", 1, kMaxChoices, &n, nullptr, error)) return false;
  e.n = static_cast<int>(n);
  int64_t max_tokens = chat ? 0 : ctx.options->default_completion_max_tokens;
  if (!ReadInteger(body, "max_tokens", 1, INT32_MAX, &max_tokens, max_given, error) ||
      !ReadInteger(body, "max_completion_tokens", 1, INT32_MAX, &max_tokens, max_given, error)) {
    return false;
  }
  request.stop.max_tokens = max_tokens;
  if (!ReadStop(body, "stop", &request.stop.stop_strings, error)) return false;
  if (!ReadBool(body, "stream", &e.stream, error)) return false;
  // An extension (vLLM, llama.cpp): keep generating past the end-of-sequence
  // token, for benchmarks that want max_tokens every time.
  if (!ReadBool(body, "ignore_eos", &request.ignore_eos, error)) return false;
  auto stream_options = body.find("stream_options");
  if (stream_options != body.end() && !stream_options->is_null()) {
    if (!stream_options->is_object()) {
      *error = TypeError("stream_options", "an object", *stream_options);
      return false;
    }
    if (!ReadBool(*stream_options, "include_usage", &e.include_usage, error)) {
      error->param = "stream_options.include_usage";
      return false;
    }
  }
  // logprobs: chat → bool + top_logprobs; completions → integer 0..5.
  int64_t top = 0;
  if (chat) {
    if (!ReadBool(body, "logprobs", &e.logprobs, error)) return false;
    bool top_given = false;
    if (!ReadInteger(body, "top_logprobs", 0, 20, &top, &top_given, error)) return false;
    if (top_given && !e.logprobs) {
      *error = ValueError("top_logprobs", "requires logprobs to be true");
      return false;
    }
  } else {
    bool given = false;
    if (!ReadInteger(body, "logprobs", 0, 5, &top, &given, error)) return false;
    e.logprobs = given;
  }
  e.top_logprobs = static_cast<int32_t>(top);
  request.top_logprobs = e.logprobs ? e.top_logprobs : -1;
  return true;
}

// messages (+ tools) through the chat template.
bool ParseChatPrompt(const ApiContext& ctx, const json& body, ChatCompletionExchange& e,
                     ApiError* error) {
  auto messages_it = body.find("messages");
  if (messages_it == body.end() || messages_it->is_null()) {
    *error = {400, "Missing required parameter: 'messages'.", "messages",
              "missing_required_parameter"};
    return false;
  }
  if (!messages_it->is_array()) {
    *error = TypeError("messages", "an array", *messages_it);
    return false;
  }
  if (messages_it->empty()) {
    *error = {400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
              "messages", "empty_array"};
    return false;
  }
  absl::StatusOr<std::vector<chat::ChatMessage>> messages = chat::ParseMessages(*messages_it);
  if (!messages.ok()) {
    *error = {400, std::string(messages.status().message()), "messages", "invalid_value"};
    return false;
  }
  std::vector<chat::ToolDefinition> tools;
  auto tools_it = body.find("tools");
  if (tools_it != body.end() && !tools_it->is_null()) {
    if (!tools_it->is_array()) {
      *error = TypeError("tools", "an array", *tools_it);
      return false;
    }
    absl::StatusOr<std::vector<chat::ToolDefinition>> parsed = chat::ParseToolsJson(*tools_it);
    if (!parsed.ok()) {
      *error = {400, std::string(parsed.status().message()), "tools", "invalid_value"};
      return false;
    }
    tools = std::move(*parsed);
  }
  bool tools_enabled = !tools.empty();
  auto choice = body.find("tool_choice");
  if (choice != body.end() && choice->is_string() && choice->get<std::string>() == "none") {
    tools_enabled = false;
  }
  if (tools_enabled) {
    chat::ChatMessage system;
    system.role = chat::ChatRole::kSystem;
    system.content = ToolsSystemPrompt(tools);
    messages->insert(messages->begin(), std::move(system));
  }
  absl::StatusOr<ChatPrompt> prompt = TokenizeChat(ctx, *messages, tools);
  if (!prompt.ok()) {
    *error = {400, std::string(prompt.status().message()), "messages", "invalid_value"};
    return false;
  }
  e.opens_think = prompt->opens_think;
  e.splitter = ChatStreamSplitter(e.opens_think);
  e.request->prompt = std::move(prompt->tokens);
  return true;
}

// prompt: a string, or one array of token ids.
bool ParseCompletionPrompt(const ApiContext& ctx, const json& body, ApiExchange& e,
                           ApiError* error) {
  const BpeTokenizer& tokenizer = *ctx.tokenizer;
  auto prompt_it = body.find("prompt");
  if (prompt_it == body.end() || prompt_it->is_null()) {
    *error = {400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"};
    return false;
  }
  const json* prompt = &*prompt_it;
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    prompt = &(*prompt)[0];
  }
  std::vector<int32_t>& tokens = e.request->prompt;
  if (prompt->is_string()) {
    tokens = tokenizer.Encode(prompt->get<std::string>(), tokenizer.add_bos());
  } else if (prompt->is_array() && !prompt->empty() &&
             std::all_of(prompt->begin(), prompt->end(),
                         [](const json& t) { return t.is_number_integer(); })) {
    for (const json& t : *prompt) {
      const int64_t id = t.get<int64_t>();
      if (id < 0 || id >= tokenizer.vocab_size()) {
        *error = ValueError("prompt", absl::StrCat("token id ", id, " is out of range"));
        return false;
      }
      tokens.push_back(static_cast<int32_t>(id));
    }
  } else if (prompt->is_array()) {
    *error = ValueError("prompt",
                        "only one prompt (a string or an array of token ids) is supported per "
                        "request");
    return false;
  } else {
    *error = TypeError("prompt", "a string or an array", *prompt);
    return false;
  }
  if (tokens.empty()) {
    *error = ValueError("prompt", "the prompt is empty");
    return false;
  }
  return true;
}

bool Parse(const ApiContext& ctx, const HttpRequest& http, bool chat, OpenAiExchange& e,
           ApiError* error) {
  json body;
  if (!ParseBody(http, &body, error)) return false;
  auto model = body.find("model");
  if (model == body.end() || model->is_null()) {
    *error = {400, "you must provide a model parameter", "model", "missing_required_parameter"};
    return false;
  }
  if (!model->is_string()) {
    *error = TypeError("model", "a string", *model);
    return false;
  }
  e.model = model->get<std::string>();
  if (e.model != ctx.options->model_name) {
    *error = {404,
              absl::StrCat("The model '", e.model, "' does not exist; this server serves '",
                           ctx.options->model_name, "'"),
              "model", "model_not_found"};
    return false;
  }
  e.request = std::make_shared<GenerationRequest>();
  bool max_given = false;
  if (!ParseOptions(ctx, body, chat, e, &max_given, error)) return false;
  sampling::SamplerOptions& sampler = e.request->sampler;
  if (!ReadLogitBias(body, ctx.tokenizer->vocab_size(), &sampler, error) ||
      !ReadResponseFormat(*ctx.grammars, body, http.body, &sampler, error)) {
    return false;
  }
  if (sampler.grammar != nullptr && e.request->ignore_eos) {
    *error = ValueError("ignore_eos",
                        "cannot be combined with response_format (the output ends where the "
                        "document does)");
    return false;
  }
  if (chat ? !ParseChatPrompt(ctx, body, static_cast<ChatCompletionExchange&>(e), error)
           : !ParseCompletionPrompt(ctx, body, e, error)) {
    return false;
  }
  if (chat && sampler.grammar != nullptr && e.opens_think) {
    // The grammar holds from the first generated token: the document is the
    // reply's content, not reasoning.
    e.opens_think = false;
    static_cast<ChatCompletionExchange&>(e).splitter = ChatStreamSplitter(false);
  }
  GenerationRequest& request = *e.request;
  const int64_t context = ctx.context_tokens;
  const int64_t n_prompt = static_cast<int64_t>(request.prompt.size());
  const char* what = chat ? "messages" : "prompt";
  if (n_prompt >= context) {
    *error = {400,
              absl::StrCat("This model's maximum context length is ", context,
                           " tokens. However, your ", what, " resulted in ", n_prompt,
                           " tokens. Please reduce the length of the ", what, "."),
              what, "context_length_exceeded"};
    return false;
  }
  const int64_t max_tokens = request.stop.max_tokens;
  if (max_given && n_prompt + max_tokens > context) {
    *error = {400,
              absl::StrCat("This model's maximum context length is ", context,
                           " tokens. However, you requested ", n_prompt + max_tokens, " tokens (",
                           n_prompt, " in the ", what, ", ", max_tokens,
                           " in the completion). Please reduce the length of the ", what,
                           " or completion."),
              "max_tokens", "context_length_exceeded"};
    return false;
  }
  if (!chat && !max_given && n_prompt + max_tokens > context) {
    request.stop.max_tokens = context - n_prompt;
  }
  absl::Status valid = sampling::ValidateSamplerOptions(request.sampler);
  if (!valid.ok()) {
    *error = {400, std::string(valid.message()), "", "invalid_value"};
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<ApiExchange> ParseOpenAiRequest(const ApiContext& ctx, const HttpRequest& http,
                                                std::shared_ptr<HttpResponder> responder, bool chat,
                                                bool* ok, ApiError* error) {
  std::shared_ptr<OpenAiExchange> e;
  if (chat) {
    e = std::make_shared<ChatCompletionExchange>(ctx, std::move(responder), http.path, true);
  } else {
    e = std::make_shared<CompletionExchange>(ctx, std::move(responder), http.path, false);
  }
  *ok = Parse(ctx, http, chat, *e, error);
  return e;
}

}  // namespace moeflow::server
