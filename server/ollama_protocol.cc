#include "server/ollama_protocol.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "chat/tool_call_parser.h"
#include "server/chat_stream_splitter.h"
#include "server/constrained_output.h"

namespace moeflow::server {
namespace {

json OllamaToolCallsJson(const std::vector<chat::ToolCall>& calls) {
  json out = json::array();
  for (const chat::ToolCall& c : calls) {
    json args = json::parse(c.arguments, nullptr, false);
    if (args.is_discarded()) args = c.arguments;
    out.push_back({{"function", {{"name", c.name}, {"arguments", args}}}});
  }
  return out;
}

// What both endpoints share: NDJSON lines, errors, the final object.
class OllamaExchange : public ApiExchange {
 public:
  OllamaExchange(const ApiContext& ctx, std::shared_ptr<HttpResponder> responder,
                 std::string endpoint)
      : ApiExchange(ctx, std::move(responder), std::move(endpoint), "ollama-" + RandomHex(12)) {
    stream = true;  // Ollama streams unless "stream": false
  }

 protected:
  json ErrorJson(const ApiError& error) const override { return OllamaErrorJson(error); }
  void StreamError(const ApiError& error, bool /*final*/) override {
    responder_->Write(Dump(OllamaErrorJson(error)) + "\n");
  }
  void StartStream() override {
    responder_->StartStream(200, {{"Content-Type", "application/x-ndjson"}});
  }
  void Line(const json& j) { responder_->Write(Dump(j) + "\n"); }
  // The "done": true object; `field` is "message" or "response".
  json Final(const GenerationSummary& s, const std::string& finish_reason, const char* field,
             json value) const {
    json out = {{"model", model},
                {"created_at", Rfc3339Now()},
                {"done", true},
                {"done_reason", finish_reason == "tool_calls" ? "stop" : finish_reason},
                {"total_duration", static_cast<int64_t>((NowS() - start_s_) * 1e9)},
                {"load_duration", 0},
                {"prompt_eval_count", s.prompt_tokens},
                {"prompt_eval_duration", static_cast<int64_t>(s.prefill_s * 1e9)},
                {"eval_count", s.completion_tokens},
                {"eval_duration", static_cast<int64_t>(s.decode_s * 1e9)}};
    out[field] = std::move(value);
    return out;
  }
  // The last line when streaming, else the whole body.
  void SendFinal(const json& out) {
    if (stream) {
      Line(out);
    } else {
      responder_->Send(200, JsonHeaders(), Dump(out));
    }
  }
};

class OllamaChatExchange final : public OllamaExchange {
 public:
  using OllamaExchange::OllamaExchange;
  ChatStreamSplitter splitter;

 protected:
  void StreamToken(int /*choice*/, const GeneratedToken& token) override {
    ChatStreamSplitter::Delta d = splitter.Feed(token.text, /*final=*/false);
    if (d.reasoning.empty() && d.content.empty()) return;
    json message = {{"role", "assistant"}, {"content", d.content}};
    if (!d.reasoning.empty()) message["thinking"] = d.reasoning;
    Line({{"model", model}, {"created_at", Rfc3339Now()}, {"message", message}, {"done", false}});
  }
  void Finish(const GenerationSummary& s) override {
    const ChatOutput out = ParseChatOutput(choices_[0].text, opens_think);
    const std::string finish_reason = out.tool_calls.empty() ? s.finish_reason : "tool_calls";
    json message;
    if (!stream) {
      message = {{"role", "assistant"}, {"content", out.content}};
      if (!out.reasoning.empty()) message["thinking"] = out.reasoning;
    } else {
      ChatStreamSplitter::Delta d = splitter.Feed(s.flushed_text, /*final=*/true);
      message = {{"role", "assistant"}, {"content", d.content}};
      if (!d.reasoning.empty()) message["thinking"] = d.reasoning;
      if (out.tool_calls.empty() && splitter.in_tool_calls()) {
        message["content"] = d.content + splitter.tool_text();
      }
    }
    if (!out.tool_calls.empty()) message["tool_calls"] = OllamaToolCallsJson(out.tool_calls);
    SendFinal(Final(s, finish_reason, "message", message));
  }
};

class OllamaGenerateExchange final : public OllamaExchange {
 public:
  using OllamaExchange::OllamaExchange;

 protected:
  void StreamToken(int /*choice*/, const GeneratedToken& token) override {
    if (token.text.empty()) return;
    Line({{"model", model},
          {"created_at", Rfc3339Now()},
          {"response", token.text},
          {"done", false}});
  }
  void Finish(const GenerationSummary& s) override {
    SendFinal(Final(s, s.finish_reason, "response", stream ? s.flushed_text : choices_[0].text));
  }
};

// options: Ollama's defaults, then what the request sets.
bool ParseOptions(const json& body, GenerationRequest& request, ApiError* error) {
  sampling::SamplerOptions& sampler = request.sampler;
  sampler.temperature = 0.8f;  // Ollama's defaults
  sampler.top_k = 40;
  sampler.top_p = 0.9f;
  sampler.repetition_penalty = 1.1f;
  sampler.seed = RandomSeed();
  request.stop.max_tokens = 0;
  auto options_it = body.find("options");
  if (options_it == body.end() || options_it->is_null()) return true;
  if (!options_it->is_object()) {
    *error = TypeError("options", "an object", *options_it);
    return false;
  }
  const json& o = *options_it;
  double temperature = sampler.temperature, top_p = sampler.top_p,
         repeat = sampler.repetition_penalty, presence = 0, frequency = 0, min_p = 0;
  int64_t top_k = sampler.top_k, seed = 0, num_predict = -1, repeat_last_n = 64;
  bool seed_given = false;
  if (!ReadNumber(o, "temperature", 0, 100, &temperature, error) ||
      !ReadNumber(o, "top_p", 0, 1, &top_p, error) ||
      !ReadNumber(o, "min_p", 0, 1, &min_p, error) ||
      !ReadNumber(o, "repeat_penalty", 0, 100, &repeat, error) ||
      !ReadNumber(o, "presence_penalty", -100, 100, &presence, error) ||
      !ReadNumber(o, "frequency_penalty", -100, 100, &frequency, error) ||
      !ReadInteger(o, "top_k", 0, INT32_MAX, &top_k, nullptr, error) ||
      !ReadInteger(o, "repeat_last_n", -1, INT32_MAX, &repeat_last_n, nullptr, error) ||
      !ReadInteger(o, "seed", INT64_MIN, INT64_MAX, &seed, &seed_given, error) ||
      !ReadInteger(o, "num_predict", -2, INT32_MAX, &num_predict, nullptr, error) ||
      !ReadStop(o, "stop", &request.stop.stop_strings, error)) {
    return false;
  }
  sampler.temperature = static_cast<float>(temperature);
  sampler.top_p = top_p > 0 ? static_cast<float>(top_p) : 1.0f;
  sampler.min_p = static_cast<float>(min_p);
  sampler.repetition_penalty = repeat > 0 ? static_cast<float>(repeat) : 1.0f;
  sampler.repetition_last_n = static_cast<int32_t>(repeat_last_n);
  sampler.presence_penalty = static_cast<float>(presence);
  sampler.frequency_penalty = static_cast<float>(frequency);
  sampler.top_k = static_cast<int32_t>(top_k);
  if (seed_given) sampler.seed = static_cast<uint64_t>(seed);
  if (num_predict > 0) request.stop.max_tokens = num_predict;
  return true;
}

// The conversation: /api/chat's messages (+ tools), or /api/generate's
// system + prompt. Sets *raw_prompt (generate) and *raw.
bool ParseMessages(const json& body, bool chat, std::vector<chat::ChatMessage>* messages,
                   std::string* raw_prompt, bool* raw, ApiError* error) {
  if (chat) {
    auto messages_it = body.find("messages");
    if (messages_it == body.end() || !messages_it->is_array()) {
      *error = {400, "messages must be an array"};
      return false;
    }
    if (messages_it->empty()) {
      *error = {400, "messages must not be empty"};
      return false;
    }
    absl::StatusOr<std::vector<chat::ChatMessage>> parsed = chat::ParseMessages(*messages_it);
    if (!parsed.ok()) {
      *error = {400, std::string(parsed.status().message())};
      return false;
    }
    *messages = std::move(*parsed);
    auto tools_it = body.find("tools");
    if (tools_it != body.end() && tools_it->is_array() && !tools_it->empty()) {
      absl::StatusOr<std::vector<chat::ToolDefinition>> tools = chat::ParseToolsJson(*tools_it);
      if (!tools.ok()) {
        *error = {400, std::string(tools.status().message())};
        return false;
      }
      chat::ChatMessage system;
      system.role = chat::ChatRole::kSystem;
      system.content = ToolsSystemPrompt(*tools);
      messages->insert(messages->begin(), std::move(system));
    }
    return true;
  }
  auto prompt_it = body.find("prompt");
  if (prompt_it == body.end() || !prompt_it->is_string()) {
    *error = {400, "prompt must be a string"};
    return false;
  }
  if (!ReadBool(body, "raw", raw, error)) return false;
  *raw_prompt = prompt_it->get<std::string>();
  auto system_it = body.find("system");
  if (system_it != body.end() && system_it->is_string() && !*raw) {
    chat::ChatMessage system;
    system.role = chat::ChatRole::kSystem;
    system.content = system_it->get<std::string>();
    messages->push_back(std::move(system));
  }
  chat::ChatMessage user;
  user.role = chat::ChatRole::kUser;
  user.content = *raw_prompt;
  messages->push_back(std::move(user));
  return true;
}

bool Parse(const ApiContext& ctx, const HttpRequest& http, bool chat, OllamaExchange& e,
           bool* answered, ApiError* error) {
  json body;
  if (!ParseBody(http, &body, error)) return false;
  auto model = body.find("model");
  if (model == body.end() || !model->is_string()) {
    *error = {400, "model is required"};
    return false;
  }
  e.model = model->get<std::string>();
  if (e.model != ctx.options->model_name && e.model != ctx.options->model_name + ":latest") {
    *error = {404, absl::StrCat("model \"", e.model, "\" not found, try pulling it first")};
    return false;
  }
  if (!ReadBool(body, "stream", &e.stream, error)) return false;
  e.request = std::make_shared<GenerationRequest>();
  GenerationRequest& request = *e.request;
  if (!ParseOptions(body, request, error)) return false;
  if (!ReadOllamaFormat(*ctx.grammars, body, http.body, &request.sampler, error)) return false;
  std::vector<chat::ChatMessage> messages;
  std::string raw_prompt;
  bool raw = false;
  if (!ParseMessages(body, chat, &messages, &raw_prompt, &raw, error)) return false;
  if (!chat && raw_prompt.empty()) {
    // Ollama answers an empty prompt with a "loaded" message.
    e.Log(200, "load");
    *answered = true;
    return false;
  }
  const BpeTokenizer& tokenizer = *ctx.tokenizer;
  if (raw) {
    request.prompt = tokenizer.Encode(raw_prompt, tokenizer.add_bos());
  } else {
    absl::StatusOr<ChatPrompt> prompt = TokenizeChat(ctx, messages);
    if (!prompt.ok()) {
      *error = {400, std::string(prompt.status().message())};
      return false;
    }
    e.opens_think = prompt->opens_think;
    request.prompt = std::move(prompt->tokens);
  }
  // With a format the grammar holds from the first generated token: the
  // document is the content, not thinking.
  if (request.sampler.grammar != nullptr) e.opens_think = false;
  if (chat) static_cast<OllamaChatExchange&>(e).splitter = ChatStreamSplitter(e.opens_think);
  const int64_t context = ctx.context_tokens;
  const int64_t n_prompt = static_cast<int64_t>(request.prompt.size());
  if (n_prompt >= context) {
    *error = {400,
              absl::StrCat("the prompt has ", n_prompt, " tokens but the context holds ", context)};
    return false;
  }
  if (request.stop.max_tokens > context - n_prompt) {
    request.stop.max_tokens = context - n_prompt;  // Ollama truncates, it does not refuse
  }
  absl::Status valid = sampling::ValidateSamplerOptions(request.sampler);
  if (!valid.ok()) {
    *error = {400, std::string(valid.message())};
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<ApiExchange> ParseOllamaRequest(const ApiContext& ctx, const HttpRequest& http,
                                                std::shared_ptr<HttpResponder> responder, bool chat,
                                                bool* ok, bool* answered, ApiError* error) {
  std::shared_ptr<OllamaExchange> e;
  if (chat) {
    e = std::make_shared<OllamaChatExchange>(ctx, responder, http.path);
  } else {
    e = std::make_shared<OllamaGenerateExchange>(ctx, responder, http.path);
  }
  *answered = false;
  *ok = Parse(ctx, http, chat, *e, answered, error);
  if (*answered) {
    responder->Send(200, JsonHeaders(),
                    Dump(json{{"model", e->model},
                              {"created_at", Rfc3339Now()},
                              {"response", ""},
                              {"done", true},
                              {"done_reason", "load"}}));
  }
  return e;
}

}  // namespace moeflow::server
