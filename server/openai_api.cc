#include "server/openai_api.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "chat/chat_template.h"
#include "chat/tool_call_parser.h"
#include "nlohmann/json.hpp"

namespace moeflow::server {
namespace {

using json = nlohmann::json;

constexpr absl::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr absl::string_view kThinkOpen = "<think>";
constexpr absl::string_view kThinkClose = "</think>";

// JSON text; invalid UTF-8 the model produced is replaced, never thrown on.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string RandomHex(int n) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  std::string out;
  while (static_cast<int>(out.size()) < n) out += absl::StrFormat("%016x", rng());
  return out.substr(0, n);
}

uint64_t RandomSeed() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

std::string Rfc3339Now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[64];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%S", &tm);
  const int64_t micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  return absl::StrFormat("%s.%06dZ", buffer, micros);
}

// An API error: status, OpenAI type/code, the parameter at fault.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // "" → null
  std::string code;   // "" → null
  std::string type = "invalid_request_error";
};

json OpenAiErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

HttpHeaders JsonHeaders() { return {{"Content-Type", "application/json"}}; }

// Reports a generation that failed after the request was accepted: inside the
// stream when the response has started (`streaming`), else as a plain JSON
// error response. `close_sse_stream` also sends OpenAI's `[DONE]` marker.
void SendGenerationError(HttpResponder& r, bool streaming, bool ollama, const ApiError& error,
                         bool close_sse_stream) {
  if (streaming) {
    r.Write(ollama ? Dump(json{{"error", error.message}}) + "\n"
                   : "data: " + Dump(OpenAiErrorJson(error)) + "\n\n" +
                         (close_sse_stream ? "data: [DONE]\n\n" : ""));
    r.EndStream();
  } else {
    r.Send(error.status, JsonHeaders(),
           ollama ? Dump(json{{"error", error.message}}) : Dump(OpenAiErrorJson(error)));
  }
}

std::string JsonTypeName(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

ApiError TypeError(const std::string& param, const std::string& expected, const json& got) {
  return {400,
          absl::StrCat("Invalid type for '", param, "': expected ", expected, ", but got ",
                       JsonTypeName(got), " instead."),
          param, "invalid_type"};
}

ApiError ValueError(const std::string& param, const std::string& message) {
  return {400, absl::StrCat("Invalid value for '", param, "': ", message), param, "invalid_value"};
}

// Typed optional readers: absent or null → keep the default. Return false
// and set *error on a wrong type or value.
bool ReadNumber(const json& body, const char* name, double lo, double hi, double* out,
                ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) {
    *error = TypeError(name, "a number", *it);
    return false;
  }
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi)) {
    *error = ValueError(name, absl::StrCat("must be between ", lo, " and ", hi, ", got ", v));
    return false;
  }
  *out = v;
  return true;
}

bool ReadInteger(const json& body, const char* name, int64_t lo, int64_t hi, int64_t* out,
                 bool* present, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer() &&
      !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>())) {
    *error = TypeError(name, "an integer", *it);
    return false;
  }
  const double d = it->get<double>();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi))) {
    *error =
        ValueError(name, absl::StrCat("must be between ", lo, " and ", hi, ", got ", Dump(*it)));
    return false;
  }
  *out = it->is_number_unsigned()  ? static_cast<int64_t>(it->get<uint64_t>())
         : it->is_number_integer() ? it->get<int64_t>()
                                   : static_cast<int64_t>(d);
  if (present != nullptr) *present = true;
  return true;
}

bool ReadBool(const json& body, const char* name, bool* out, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) {
    *error = TypeError(name, "a boolean", *it);
    return false;
  }
  *out = it->get<bool>();
  return true;
}

bool ReadStop(const json& body, const char* name, std::vector<std::string>* out, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (it->is_string()) {
    if (!it->get<std::string>().empty()) out->push_back(it->get<std::string>());
    return true;
  }
  if (!it->is_array()) {
    *error = TypeError(name, "a string or an array of strings", *it);
    return false;
  }
  if (it->size() > 16) {
    *error = ValueError(name, "at most 16 stop sequences");
    return false;
  }
  for (const json& s : *it) {
    if (!s.is_string()) {
      *error = TypeError(name, "a string or an array of strings", s);
      return false;
    }
    if (!s.get<std::string>().empty()) out->push_back(s.get<std::string>());
  }
  return true;
}

// Feeds generated chat text and splits it into reasoning / content as it
// streams, holding back text that may be the start of a marker; text from
// "<｜tool▁calls▁begin｜>" on is kept for the tool-call parser.
class ChatStreamSplitter {
 public:
  explicit ChatStreamSplitter(bool opens_think)
      : state_(opens_think ? State::kReasoning : State::kStart) {}

  struct Delta {
    std::string reasoning;
    std::string content;
  };

  Delta Feed(absl::string_view text, bool final) {
    held_ += std::string(text);
    Delta delta;
    while (true) {
      if (state_ == State::kStart) {
        absl::string_view rest = absl::StripLeadingAsciiWhitespace(held_);
        if (absl::StartsWith(rest, kThinkOpen)) {
          held_ = std::string(rest.substr(kThinkOpen.size()));
          state_ = State::kReasoning;
          continue;
        }
        if (!final && kThinkOpen.substr(0, rest.size()) == rest) return delta;  // undecided
        state_ = State::kContent;
        continue;
      }
      if (state_ == State::kReasoning) {
        if (!reasoning_started_) {
          held_ = std::string(absl::StripLeadingAsciiWhitespace(held_));
          if (held_.empty()) return delta;
          reasoning_started_ = true;
        }
        const size_t close = held_.find(std::string(kThinkClose));
        if (close != std::string::npos) {
          delta.reasoning += held_.substr(0, close);
          held_ = held_.substr(close + kThinkClose.size());
          state_ = State::kContentAfterThink;
          continue;
        }
        const size_t keep = final ? 0 : HeldBackFor(kThinkClose);
        delta.reasoning += held_.substr(0, held_.size() - keep);
        held_ = held_.substr(held_.size() - keep);
        return delta;
      }
      if (state_ == State::kContentAfterThink) {
        held_ = std::string(absl::StripLeadingAsciiWhitespace(held_));
        if (held_.empty() && !final) return delta;
        state_ = State::kContent;
        continue;
      }
      if (state_ == State::kContent) {
        const size_t begin = held_.find(std::string(kToolCallsBegin));
        if (begin != std::string::npos) {
          delta.content += held_.substr(0, begin);
          tool_text_ = held_.substr(begin);
          held_.clear();
          state_ = State::kToolCalls;
          return delta;
        }
        const size_t keep = final ? 0 : HeldBackFor(kToolCallsBegin);
        delta.content += held_.substr(0, held_.size() - keep);
        held_ = held_.substr(held_.size() - keep);
        return delta;
      }
      // kToolCalls
      tool_text_ += held_;
      held_.clear();
      return delta;
    }
  }

  bool in_tool_calls() const { return state_ == State::kToolCalls; }
  const std::string& tool_text() const { return tool_text_; }

 private:
  enum class State { kStart, kReasoning, kContentAfterThink, kContent, kToolCalls };

  // Bytes at the end of held_ that could be the start of `marker`.
  size_t HeldBackFor(absl::string_view marker) const {
    const size_t max = std::min(held_.size(), marker.size() - 1);
    for (size_t n = max; n > 0; --n) {
      if (absl::EndsWith(held_, marker.substr(0, n))) return n;
    }
    return 0;
  }

  State state_;
  bool reasoning_started_ = false;
  std::string held_;
  std::string tool_text_;
};

}  // namespace

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

// One generation request in flight: how to answer it and what was produced.
struct OpenAiApi::Exchange {
  enum class Kind { kChat, kCompletion, kOllamaChat, kOllamaGenerate };
  Kind kind = Kind::kChat;
  std::shared_ptr<HttpResponder> responder;
  std::string endpoint;
  std::string id;
  int64_t created = 0;
  std::string model;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;  // chat: logprobs; completions: logprobs != null
  int32_t top_logprobs = 0;
  bool opens_think = false;
  bool has_tools = false;
  double start_s = 0;
  std::shared_ptr<GenerationRequest> request;

  // Owned by the scheduler thread after Submit.
  std::string text;  // everything released
  std::vector<GeneratedToken> tokens;
  bool role_sent = false;
  ChatStreamSplitter splitter{false};
};

OpenAiApi::OpenAiApi(ApiOptions options, const BpeTokenizer* tokenizer, GenerationBackend* backend,
                     ServerMetrics* metrics)
    : options_(std::move(options)), tokenizer_(tokenizer), backend_(backend), metrics_(metrics) {}

void OpenAiApi::LogRequest(const Exchange& e, int status, const std::string& note) const {
  if (metrics_ != nullptr) metrics_->RecordRequest(e.endpoint, status);
  if (!options_.log_requests) return;
  std::fprintf(stderr, "%s %d %s%s %.1f ms %s\n", e.endpoint.c_str(), status,
               e.stream ? "stream " : "", e.id.c_str(), (NowS() - e.start_s) * 1000, note.c_str());
}

void OpenAiApi::Handle(const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
  try {
    HandleChecked(request, responder);
  } catch (const std::exception& e) {
    // nlohmann::json throws on misuse; answer instead of dying.
    ApiError error{500, absl::StrCat("internal error: ", e.what()), "", "internal_error",
                   "server_error"};
    responder->Send(500, JsonHeaders(), Dump(OpenAiErrorJson(error)));
  }
}

void OpenAiApi::HandleChecked(const HttpRequest& request,
                              std::shared_ptr<HttpResponder> responder) {
  const std::string& path = request.path;
  const bool ollama = absl::StartsWith(path, "/api/");
  auto fail = [&](const ApiError& e) {
    if (metrics_ != nullptr) metrics_->RecordRequest(path, e.status);
    if (options_.log_requests) {
      std::fprintf(stderr, "%s %s %d %s\n", request.method.c_str(), path.c_str(), e.status,
                   e.message.c_str());
    }
    const std::string body = ollama ? Dump(json{{"error", e.message}}) : Dump(OpenAiErrorJson(e));
    responder->Send(e.status, JsonHeaders(), body);
  };
  if (request.method == "OPTIONS") {
    // CORS preflight (the Allow-Origin header comes from the server's extra
    // headers when --cors-origin is set).
    responder->Send(204,
                    {{"Access-Control-Allow-Methods", "GET, POST, OPTIONS"},
                     {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                     {"Access-Control-Max-Age", "600"}},
                    "");
    return;
  }
  if (path == "/health") {
    responder->Send(200, JsonHeaders(), "{\"status\":\"ok\"}");
    return;
  }
  if (!options_.api_key.empty()) {
    const absl::string_view auth = request.Header("authorization");
    if (!absl::StartsWith(auth, "Bearer ") || auth.substr(7) != options_.api_key) {
      fail({401,
            auth.empty() ? "Missing API key: send \"Authorization: Bearer KEY\"."
                         : "Incorrect API key provided.",
            "", "invalid_api_key", "invalid_request_error"});
      return;
    }
  }
  const bool get = request.method == "GET" || request.method == "HEAD";
  const bool post = request.method == "POST";
  auto wrong_method = [&](const char* want) {
    fail({405, absl::StrCat(request.method, " ", path, ": use ", want), "", "method_not_allowed"});
  };
  if (path == "/metrics") {
    if (!get) return wrong_method("GET");
    responder->Send(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                    metrics_ != nullptr ? metrics_->RenderPrometheus() : "");
    return;
  }
  if (path == "/v1/models" || absl::StartsWith(path, "/v1/models/")) {
    if (!get) return wrong_method("GET");
    const json model = {
        {"id", options_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "moeflow"}};
    if (path == "/v1/models") {
      responder->Send(200, JsonHeaders(),
                      Dump(json{{"object", "list"}, {"data", json::array({model})}}));
      return;
    }
    const std::string id = path.substr(std::string("/v1/models/").size());
    if (id != options_.model_name) {
      return fail(
          {404, absl::StrCat("The model '", id, "' does not exist"), "model", "model_not_found"});
    }
    responder->Send(200, JsonHeaders(), Dump(model));
    return;
  }
  if (path == "/v1/chat/completions" || path == "/v1/completions") {
    if (!post) return wrong_method("POST");
    HandleOpenAiGeneration(request, responder, path == "/v1/chat/completions");
    return;
  }
  if (path == "/api/chat" || path == "/api/generate") {
    if (!post) return wrong_method("POST");
    HandleOllamaGeneration(request, responder, path == "/api/chat");
    return;
  }
  if (path == "/api/tags") {
    if (!get) return wrong_method("GET");
    const json model = {{"name", options_.model_name},
                        {"model", options_.model_name},
                        {"modified_at", Rfc3339Now()},
                        {"size", options_.model_file_bytes},
                        {"digest", ""},
                        {"details",
                         {{"format", "gguf"},
                          {"family", options_.model_family},
                          {"families", json::array({options_.model_family})}}}};
    responder->Send(200, JsonHeaders(), Dump(json{{"models", json::array({model})}}));
    return;
  }
  if (path == "/api/version") {
    responder->Send(200, JsonHeaders(), "{\"version\":\"0.5.0\"}");
    return;
  }
  fail({404, absl::StrCat("Unknown path ", path), "", "not_found"});
}

namespace {

// Parses the body as a JSON object or sets *error.
bool ParseBody(const HttpRequest& request, json* body, ApiError* error) {
  *body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body->is_discarded()) {
    *error = {400,
              "We could not parse the JSON body of your request. (HINT: This likely means you "
              "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
              "", "invalid_json"};
    return false;
  }
  if (!body->is_object()) {
    *error = {400, "The request body must be a JSON object.", "", "invalid_json"};
    return false;
  }
  return true;
}

}  // namespace

void OpenAiApi::HandleOpenAiGeneration(const HttpRequest& http,
                                       std::shared_ptr<HttpResponder> responder, bool chat) {
  auto e = std::make_shared<Exchange>();
  e->kind = chat ? Exchange::Kind::kChat : Exchange::Kind::kCompletion;
  e->responder = responder;
  e->endpoint = http.path;
  e->start_s = NowS();
  e->created = static_cast<int64_t>(std::time(nullptr));
  e->id = (chat ? "chatcmpl-" : "cmpl-") + RandomHex(24);
  auto fail = [&](const ApiError& error) {
    LogRequest(*e, error.status, error.message);
    responder->Send(error.status, JsonHeaders(), Dump(OpenAiErrorJson(error)));
  };
  json body;
  ApiError error;
  if (!ParseBody(http, &body, &error)) return fail(error);

  // model
  auto model = body.find("model");
  if (model == body.end() || model->is_null()) {
    return fail({400, "you must provide a model parameter", "model", "missing_required_parameter"});
  }
  if (!model->is_string()) return fail(TypeError("model", "a string", *model));
  e->model = model->get<std::string>();
  if (e->model != options_.model_name) {
    return fail({404,
                 absl::StrCat("The model '", e->model, "' does not exist; this server serves '",
                              options_.model_name, "'"),
                 "model", "model_not_found"});
  }

  auto request = std::make_shared<GenerationRequest>();
  sampling::SamplerOptions& sampler = request->sampler;
  double temperature = 1.0, top_p = 1.0, presence = 0, frequency = 0;
  if (!ReadNumber(body, "temperature", 0, 2, &temperature, &error) ||
      !ReadNumber(body, "top_p", 0, 1, &top_p, &error) ||
      !ReadNumber(body, "presence_penalty", -2, 2, &presence, &error) ||
      !ReadNumber(body, "frequency_penalty", -2, 2, &frequency, &error)) {
    return fail(error);
  }
  if (top_p <= 0) return fail(ValueError("top_p", "must be greater than 0"));
  sampler.temperature = static_cast<float>(temperature);
  sampler.top_p = static_cast<float>(top_p);
  sampler.presence_penalty = static_cast<float>(presence);
  sampler.frequency_penalty = static_cast<float>(frequency);
  sampler.repetition_penalty = 1.0f;
  int64_t seed = 0;
  bool seed_given = false;
  if (!ReadInteger(body, "seed", INT64_MIN, INT64_MAX, &seed, &seed_given, &error)) {
    return fail(error);
  }
  sampler.seed = seed_given ? static_cast<uint64_t>(seed) : RandomSeed();
  int64_t n = 1;
  if (!ReadInteger(body, "n", 1, 128, &n, nullptr, &error)) return fail(error);
  if (n != 1) return fail(ValueError("n", "only n = 1 is supported"));

  int64_t max_tokens = chat ? 0 : options_.default_completion_max_tokens;
  bool max_given = false;
  if (!ReadInteger(body, "max_tokens", 1, INT32_MAX, &max_tokens, &max_given, &error) ||
      !ReadInteger(body, "max_completion_tokens", 1, INT32_MAX, &max_tokens, &max_given, &error)) {
    return fail(error);
  }
  request->stop.max_tokens = max_tokens;
  if (!ReadStop(body, "stop", &request->stop.stop_strings, &error)) return fail(error);
  if (!ReadBool(body, "stream", &e->stream, &error)) return fail(error);
  // An extension (vLLM, llama.cpp): keep generating past the end-of-sequence
  // token, for benchmarks that want max_tokens every time.
  if (!ReadBool(body, "ignore_eos", &request->ignore_eos, &error)) return fail(error);
  auto stream_options = body.find("stream_options");
  if (stream_options != body.end() && !stream_options->is_null()) {
    if (!stream_options->is_object()) {
      return fail(TypeError("stream_options", "an object", *stream_options));
    }
    if (!ReadBool(*stream_options, "include_usage", &e->include_usage, &error)) {
      error.param = "stream_options.include_usage";
      return fail(error);
    }
  }
  // logprobs: chat → bool + top_logprobs; completions → integer 0..5.
  if (chat) {
    if (!ReadBool(body, "logprobs", &e->logprobs, &error)) return fail(error);
    int64_t top = 0;
    bool top_given = false;
    if (!ReadInteger(body, "top_logprobs", 0, 20, &top, &top_given, &error)) return fail(error);
    if (top_given && !e->logprobs) {
      return fail(ValueError("top_logprobs", "requires logprobs to be true"));
    }
    e->top_logprobs = static_cast<int32_t>(top);
  } else {
    int64_t top = 0;
    bool given = false;
    if (!ReadInteger(body, "logprobs", 0, 5, &top, &given, &error)) return fail(error);
    e->logprobs = given;
    e->top_logprobs = static_cast<int32_t>(top);
  }
  request->top_logprobs = e->logprobs ? e->top_logprobs : -1;

  // The prompt.
  if (chat) {
    auto messages_it = body.find("messages");
    if (messages_it == body.end() || messages_it->is_null()) {
      return fail({400, "Missing required parameter: 'messages'.", "messages",
                   "missing_required_parameter"});
    }
    if (!messages_it->is_array()) return fail(TypeError("messages", "an array", *messages_it));
    if (messages_it->empty()) {
      return fail({400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                   "messages", "empty_array"});
    }
    absl::StatusOr<std::vector<chat::ChatMessage>> messages = chat::ParseMessages(*messages_it);
    if (!messages.ok()) {
      return fail({400, std::string(messages.status().message()), "messages", "invalid_value"});
    }
    std::vector<chat::ToolDefinition> tools;
    auto tools_it = body.find("tools");
    if (tools_it != body.end() && !tools_it->is_null()) {
      if (!tools_it->is_array()) return fail(TypeError("tools", "an array", *tools_it));
      absl::StatusOr<std::vector<chat::ToolDefinition>> parsed = chat::ParseToolsJson(*tools_it);
      if (!parsed.ok()) {
        return fail({400, std::string(parsed.status().message()), "tools", "invalid_value"});
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
    e->has_tools = tools_enabled;
    chat::ChatTemplateOptions template_options;
    template_options.add_generation_prompt = true;
    template_options.force_think = options_.force_think;
    template_options.fallback_template = options_.fallback_template;
    template_options.tools = tools;
    if (tokenizer_->bos_id() >= 0) {
      template_options.bos_token = std::string(tokenizer_->TokenText(tokenizer_->bos_id()));
    }
    if (tokenizer_->eos_id() >= 0) {
      template_options.eos_token = std::string(tokenizer_->TokenText(tokenizer_->eos_id()));
    }
    absl::StatusOr<chat::RenderedPrompt> rendered =
        chat::RenderChat(options_.chat_template, *messages, template_options);
    if (!rendered.ok()) {
      return fail({400, std::string(rendered.status().message()), "messages", "invalid_value"});
    }
    e->opens_think = rendered->opens_think;
    request->prompt = tokenizer_->Encode(
        rendered->text, /*add_bos=*/!rendered->starts_with_bos && tokenizer_->add_bos());
  } else {
    auto prompt_it = body.find("prompt");
    if (prompt_it == body.end() || prompt_it->is_null()) {
      return fail(
          {400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"});
    }
    const json* prompt = &*prompt_it;
    if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      prompt = &(*prompt)[0];
    }
    if (prompt->is_string()) {
      request->prompt = tokenizer_->Encode(prompt->get<std::string>(), tokenizer_->add_bos());
    } else if (prompt->is_array() && !prompt->empty() &&
               std::all_of(prompt->begin(), prompt->end(),
                           [](const json& t) { return t.is_number_integer(); })) {
      for (const json& t : *prompt) {
        const int64_t id = t.get<int64_t>();
        if (id < 0 || id >= tokenizer_->vocab_size()) {
          return fail(ValueError("prompt", absl::StrCat("token id ", id, " is out of range")));
        }
        request->prompt.push_back(static_cast<int32_t>(id));
      }
    } else if (prompt->is_array()) {
      return fail(ValueError("prompt",
                             "only one prompt (a string or an array of token ids) is "
                             "supported per request"));
    } else {
      return fail(TypeError("prompt", "a string or an array", *prompt));
    }
    if (request->prompt.empty()) {
      return fail(ValueError("prompt", "the prompt is empty"));
    }
  }
  e->splitter = ChatStreamSplitter(e->opens_think);
  const int64_t context = backend_->context_tokens();
  const int64_t n_prompt = static_cast<int64_t>(request->prompt.size());
  if (n_prompt >= context) {
    return fail(
        {400,
         absl::StrCat("This model's maximum context length is ", context, " tokens. However, your ",
                      chat ? "messages" : "prompt", " resulted in ", n_prompt,
                      " tokens. Please reduce the length of the ", chat ? "messages." : "prompt."),
         chat ? "messages" : "prompt", "context_length_exceeded"});
  }
  if (max_given && n_prompt + max_tokens > context) {
    return fail(
        {400,
         absl::StrCat("This model's maximum context length is ", context,
                      " tokens. However, you requested ", n_prompt + max_tokens, " tokens (",
                      n_prompt, " in the ", chat ? "messages" : "prompt", ", ", max_tokens,
                      " in the completion). Please reduce the length "
                      "of the ",
                      chat ? "messages" : "prompt", " or completion."),
         "max_tokens", "context_length_exceeded"});
  }
  if (!chat && !max_given && n_prompt + max_tokens > context) {
    request->stop.max_tokens = context - n_prompt;
  }
  absl::Status valid = sampling::ValidateSamplerOptions(sampler);
  if (!valid.ok()) return fail({400, std::string(valid.message()), "", "invalid_value"});
  e->request = request;
  Start(e);
}

void OpenAiApi::HandleOllamaGeneration(const HttpRequest& http,
                                       std::shared_ptr<HttpResponder> responder, bool chat) {
  auto e = std::make_shared<Exchange>();
  e->kind = chat ? Exchange::Kind::kOllamaChat : Exchange::Kind::kOllamaGenerate;
  e->responder = responder;
  e->endpoint = http.path;
  e->start_s = NowS();
  e->id = "ollama-" + RandomHex(12);
  e->stream = true;  // Ollama streams unless "stream": false
  auto fail = [&](const ApiError& error) {
    LogRequest(*e, error.status, error.message);
    responder->Send(error.status, JsonHeaders(), Dump(json{{"error", error.message}}));
  };
  json body;
  ApiError error;
  if (!ParseBody(http, &body, &error)) return fail(error);
  auto model = body.find("model");
  if (model == body.end() || !model->is_string()) return fail({400, "model is required"});
  e->model = model->get<std::string>();
  if (e->model != options_.model_name && e->model != options_.model_name + ":latest") {
    return fail({404, absl::StrCat("model \"", e->model, "\" not found, try pulling it first")});
  }
  if (!ReadBool(body, "stream", &e->stream, &error)) return fail(error);
  auto request = std::make_shared<GenerationRequest>();
  sampling::SamplerOptions& sampler = request->sampler;
  sampler.temperature = 0.8f;  // Ollama's defaults
  sampler.top_k = 40;
  sampler.top_p = 0.9f;
  sampler.repetition_penalty = 1.1f;
  sampler.seed = RandomSeed();
  request->stop.max_tokens = 0;
  auto options_it = body.find("options");
  if (options_it != body.end() && !options_it->is_null()) {
    if (!options_it->is_object()) return fail(TypeError("options", "an object", *options_it));
    const json& o = *options_it;
    double temperature = sampler.temperature, top_p = sampler.top_p,
           repeat = sampler.repetition_penalty, presence = 0, frequency = 0, min_p = 0;
    int64_t top_k = sampler.top_k, seed = 0, num_predict = -1, repeat_last_n = 64;
    bool seed_given = false;
    if (!ReadNumber(o, "temperature", 0, 100, &temperature, &error) ||
        !ReadNumber(o, "top_p", 0, 1, &top_p, &error) ||
        !ReadNumber(o, "min_p", 0, 1, &min_p, &error) ||
        !ReadNumber(o, "repeat_penalty", 0, 100, &repeat, &error) ||
        !ReadNumber(o, "presence_penalty", -100, 100, &presence, &error) ||
        !ReadNumber(o, "frequency_penalty", -100, 100, &frequency, &error) ||
        !ReadInteger(o, "top_k", 0, INT32_MAX, &top_k, nullptr, &error) ||
        !ReadInteger(o, "repeat_last_n", -1, INT32_MAX, &repeat_last_n, nullptr, &error) ||
        !ReadInteger(o, "seed", INT64_MIN, INT64_MAX, &seed, &seed_given, &error) ||
        !ReadInteger(o, "num_predict", -2, INT32_MAX, &num_predict, nullptr, &error) ||
        !ReadStop(o, "stop", &request->stop.stop_strings, &error)) {
      return fail(error);
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
    if (num_predict > 0) request->stop.max_tokens = num_predict;
  }
  std::vector<chat::ChatMessage> messages;
  bool raw = false;
  std::string raw_prompt;
  if (chat) {
    auto messages_it = body.find("messages");
    if (messages_it == body.end() || !messages_it->is_array()) {
      return fail({400, "messages must be an array"});
    }
    if (messages_it->empty()) return fail({400, "messages must not be empty"});
    absl::StatusOr<std::vector<chat::ChatMessage>> parsed = chat::ParseMessages(*messages_it);
    if (!parsed.ok()) return fail({400, std::string(parsed.status().message())});
    messages = std::move(*parsed);
    auto tools_it = body.find("tools");
    if (tools_it != body.end() && tools_it->is_array() && !tools_it->empty()) {
      absl::StatusOr<std::vector<chat::ToolDefinition>> tools = chat::ParseToolsJson(*tools_it);
      if (!tools.ok()) return fail({400, std::string(tools.status().message())});
      chat::ChatMessage system;
      system.role = chat::ChatRole::kSystem;
      system.content = ToolsSystemPrompt(*tools);
      messages.insert(messages.begin(), std::move(system));
      e->has_tools = true;
    }
  } else {
    auto prompt_it = body.find("prompt");
    if (prompt_it == body.end() || !prompt_it->is_string()) {
      return fail({400, "prompt must be a string"});
    }
    if (!ReadBool(body, "raw", &raw, &error)) return fail(error);
    raw_prompt = prompt_it->get<std::string>();
    auto system_it = body.find("system");
    if (system_it != body.end() && system_it->is_string() && !raw) {
      chat::ChatMessage system;
      system.role = chat::ChatRole::kSystem;
      system.content = system_it->get<std::string>();
      messages.push_back(std::move(system));
    }
    chat::ChatMessage user;
    user.role = chat::ChatRole::kUser;
    user.content = raw_prompt;
    messages.push_back(std::move(user));
    if (raw_prompt.empty()) {
      // Ollama answers an empty prompt with a "loaded" message.
      LogRequest(*e, 200, "load");
      responder->Send(200, JsonHeaders(),
                      Dump(json{{"model", e->model},
                                {"created_at", Rfc3339Now()},
                                {"response", ""},
                                {"done", true},
                                {"done_reason", "load"}}));
      return;
    }
  }
  if (raw) {
    request->prompt = tokenizer_->Encode(raw_prompt, tokenizer_->add_bos());
  } else {
    chat::ChatTemplateOptions template_options;
    template_options.add_generation_prompt = true;
    template_options.force_think = options_.force_think;
    template_options.fallback_template = options_.fallback_template;
    if (tokenizer_->bos_id() >= 0) {
      template_options.bos_token = std::string(tokenizer_->TokenText(tokenizer_->bos_id()));
    }
    if (tokenizer_->eos_id() >= 0) {
      template_options.eos_token = std::string(tokenizer_->TokenText(tokenizer_->eos_id()));
    }
    absl::StatusOr<chat::RenderedPrompt> rendered =
        chat::RenderChat(options_.chat_template, messages, template_options);
    if (!rendered.ok()) return fail({400, std::string(rendered.status().message())});
    e->opens_think = rendered->opens_think;
    request->prompt = tokenizer_->Encode(
        rendered->text, /*add_bos=*/!rendered->starts_with_bos && tokenizer_->add_bos());
  }
  e->splitter = ChatStreamSplitter(e->opens_think);
  const int64_t context = backend_->context_tokens();
  const int64_t n_prompt = static_cast<int64_t>(request->prompt.size());
  if (n_prompt >= context) {
    return fail({400, absl::StrCat("the prompt has ", n_prompt, " tokens but the context holds ",
                                   context)});
  }
  if (request->stop.max_tokens > context - n_prompt) {
    request->stop.max_tokens = context - n_prompt;  // Ollama truncates, it does not refuse
  }
  absl::Status valid = sampling::ValidateSamplerOptions(sampler);
  if (!valid.ok()) return fail({400, std::string(valid.message())});
  e->request = request;
  Start(e);
}

void OpenAiApi::Start(std::shared_ptr<Exchange> e) {
  GenerationRequest& request = *e->request;
  // The callbacks hold the exchange; the request holds the callbacks; the
  // scheduler drops the request after on_done, which breaks the cycle.
  request.on_token = [this, e](const GeneratedToken& token) { OnToken(*e, token); };
  request.on_done = [this, e](const GenerationSummary& summary) {
    OnDone(*e, summary);
    e->request->on_token = nullptr;
    e->request->on_done = nullptr;
  };
  std::weak_ptr<std::atomic<bool>> cancelled = request.cancelled;
  std::shared_ptr<HttpResponder> responder = e->responder;
  absl::Status submitted = backend_->Submit(e->request);
  if (!submitted.ok()) {
    ApiError error;
    switch (submitted.code()) {
      case absl::StatusCode::kResourceExhausted:
        error = {429, std::string(submitted.message()), "", "rate_limit_exceeded", "requests"};
        break;
      case absl::StatusCode::kUnavailable:
        error = {503, std::string(submitted.message()), "", "unavailable", "server_error"};
        break;
      default:
        error = {400, std::string(submitted.message()), "max_tokens", "context_length_exceeded"};
    }
    LogRequest(*e, error.status, error.message);
    e->request->on_token = nullptr;
    e->request->on_done = nullptr;
    const bool ollama =
        e->kind == Exchange::Kind::kOllamaChat || e->kind == Exchange::Kind::kOllamaGenerate;
    responder->Send(error.status, JsonHeaders(),
                    ollama ? Dump(json{{"error", error.message}}) : Dump(OpenAiErrorJson(error)));
    return;
  }
  responder->SetOnClose([cancelled] {
    if (auto flag = cancelled.lock()) flag->store(true);
  });
}

namespace {

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

json OllamaToolCallsJson(const std::vector<chat::ToolCall>& calls) {
  json out = json::array();
  for (const chat::ToolCall& c : calls) {
    json args = json::parse(c.arguments, nullptr, false);
    if (args.is_discarded()) args = c.arguments;
    out.push_back({{"function", {{"name", c.name}, {"arguments", args}}}});
  }
  return out;
}

}  // namespace

void OpenAiApi::OnToken(Exchange& e, const GeneratedToken& token) {
  if (!e.stream) {
    e.text += token.text;
    if (e.logprobs) e.tokens.push_back(token);
    return;
  }
  HttpResponder& r = *e.responder;
  if (!e.role_sent) {
    e.role_sent = true;
    const bool ollama =
        e.kind == Exchange::Kind::kOllamaChat || e.kind == Exchange::Kind::kOllamaGenerate;
    r.StartStream(200, ollama ? HttpHeaders{{"Content-Type", "application/x-ndjson"}}
                              : HttpHeaders{{"Content-Type", "text/event-stream"},
                                            {"Cache-Control", "no-cache"},
                                            {"X-Accel-Buffering", "no"}});
    if (e.kind == Exchange::Kind::kChat) {
      json chunk = {{"id", e.id},
                    {"object", "chat.completion.chunk"},
                    {"created", e.created},
                    {"model", e.model},
                    {"system_fingerprint", "moeflow"},
                    {"choices", json::array({{{"index", 0},
                                              {"delta", {{"role", "assistant"}, {"content", ""}}},
                                              {"logprobs", nullptr},
                                              {"finish_reason", nullptr}}})}};
      if (e.include_usage) chunk["usage"] = nullptr;
      r.Write("data: " + Dump(chunk) + "\n\n");
    }
  }
  e.text += token.text;
  switch (e.kind) {
    case Exchange::Kind::kChat: {
      ChatStreamSplitter::Delta d = e.splitter.Feed(token.text, /*final=*/false);
      if (d.reasoning.empty() && d.content.empty() && !e.logprobs) return;
      json delta = json::object();
      if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
      if (!d.content.empty() || (d.reasoning.empty() && e.logprobs)) delta["content"] = d.content;
      json choice = {
          {"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (e.logprobs) choice["logprobs"] = ChatLogprobsJson(*tokenizer_, {token});
      json chunk = {{"id", e.id},
                    {"object", "chat.completion.chunk"},
                    {"created", e.created},
                    {"model", e.model},
                    {"system_fingerprint", "moeflow"},
                    {"choices", json::array({choice})}};
      if (e.include_usage) chunk["usage"] = nullptr;
      r.Write("data: " + Dump(chunk) + "\n\n");
      return;
    }
    case Exchange::Kind::kCompletion: {
      if (token.text.empty() && !e.logprobs) return;
      json choice = {
          {"index", 0}, {"text", token.text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (e.logprobs) {
        choice["logprobs"] = CompletionLogprobsJson(
            *tokenizer_, {token}, static_cast<int64_t>(e.text.size() - token.text.size()));
      }
      json chunk = {{"id", e.id},
                    {"object", "text_completion"},
                    {"created", e.created},
                    {"model", e.model},
                    {"choices", json::array({choice})}};
      if (e.include_usage) chunk["usage"] = nullptr;
      r.Write("data: " + Dump(chunk) + "\n\n");
      return;
    }
    case Exchange::Kind::kOllamaChat: {
      ChatStreamSplitter::Delta d = e.splitter.Feed(token.text, /*final=*/false);
      if (d.reasoning.empty() && d.content.empty()) return;
      json message = {{"role", "assistant"}, {"content", d.content}};
      if (!d.reasoning.empty()) message["thinking"] = d.reasoning;
      r.Write(Dump(json{{"model", e.model},
                        {"created_at", Rfc3339Now()},
                        {"message", message},
                        {"done", false}}) +
              "\n");
      return;
    }
    case Exchange::Kind::kOllamaGenerate: {
      if (token.text.empty()) return;
      r.Write(Dump(json{{"model", e.model},
                        {"created_at", Rfc3339Now()},
                        {"response", token.text},
                        {"done", false}}) +
              "\n");
      return;
    }
  }
}

void OpenAiApi::OnDone(Exchange& e, const GenerationSummary& s) {
  HttpResponder& r = *e.responder;
  const bool ollama =
      e.kind == Exchange::Kind::kOllamaChat || e.kind == Exchange::Kind::kOllamaGenerate;
  const std::string note = absl::StrFormat(
      "prompt %d (cached %d) completion %d finish %s queue %.0f ms prefill %.0f ms "
      "decode %.1f tok/s",
      s.prompt_tokens, s.cached_prompt_tokens, s.completion_tokens, s.finish_reason,
      s.queue_s * 1000, s.prefill_s * 1000,
      s.decode_s > 0 ? s.completion_tokens / s.decode_s : 0.0);
  if (s.finish_reason == "cancelled") {
    if (r.closed()) {
      LogRequest(e, 499, note);  // nginx's "client closed request"
      return;
    }
    // Shutdown cancelled it while the client still waits: say so.
    LogRequest(e, 503, note);
    SendGenerationError(r, e.role_sent, ollama,
                        {503, "the server is shutting down", "", "unavailable", "server_error"},
                        /*close_sse_stream=*/true);
    return;
  }
  if (!s.status.ok()) {
    LogRequest(e, 500, std::string(s.status.message()));
    SendGenerationError(r, e.role_sent, ollama,
                        {500, absl::StrCat("generation failed: ", s.status.message()), "",
                         "internal_error", "server_error"},
                        /*close_sse_stream=*/false);
    return;
  }
  e.text += s.flushed_text;
  const json usage = {{"prompt_tokens", s.prompt_tokens},
                      {"completion_tokens", s.completion_tokens},
                      {"total_tokens", s.prompt_tokens + s.completion_tokens},
                      {"prompt_tokens_details", {{"cached_tokens", s.cached_prompt_tokens}}}};
  std::string finish_reason = s.finish_reason;

  // Final message: reasoning / content / tool calls.
  std::string content, reasoning;
  std::vector<chat::ToolCall> tool_calls;
  bool content_null = false;
  if (e.kind == Exchange::Kind::kChat || e.kind == Exchange::Kind::kOllamaChat) {
    absl::StatusOr<chat::ChatMessage> message = chat::ParseAssistantOutput(e.text, e.opens_think);
    if (message.ok()) {
      content = message->content.value_or("");
      content_null = !message->content.has_value();
      reasoning = message->reasoning_content.value_or("");
      tool_calls = message->tool_calls;
    } else {
      content = e.text;  // malformed tool call: return the text as is
    }
    if (!tool_calls.empty()) finish_reason = "tool_calls";
  } else {
    content = e.text;
  }
  const int64_t duration_ns = static_cast<int64_t>((NowS() - e.start_s) * 1e9);
  auto ollama_final = [&](json message_or_response) {
    json out = {{"model", e.model},
                {"created_at", Rfc3339Now()},
                {"done", true},
                {"done_reason", finish_reason == "tool_calls" ? "stop" : finish_reason},
                {"total_duration", duration_ns},
                {"load_duration", 0},
                {"prompt_eval_count", s.prompt_tokens},
                {"prompt_eval_duration", static_cast<int64_t>(s.prefill_s * 1e9)},
                {"eval_count", s.completion_tokens},
                {"eval_duration", static_cast<int64_t>(s.decode_s * 1e9)}};
    if (e.kind == Exchange::Kind::kOllamaChat) {
      out["message"] = message_or_response;
    } else {
      out["response"] = message_or_response;
    }
    return out;
  };

  if (!e.stream) {
    json out;
    switch (e.kind) {
      case Exchange::Kind::kChat: {
        json message = {{"role", "assistant"},
                        {"content", content_null ? json(nullptr) : json(content)}};
        if (!reasoning.empty()) message["reasoning_content"] = reasoning;
        if (!tool_calls.empty()) message["tool_calls"] = ToolCallsJson(tool_calls, false);
        json choice = {
            {"index", 0},
            {"message", message},
            {"logprobs", e.logprobs ? ChatLogprobsJson(*tokenizer_, e.tokens) : json(nullptr)},
            {"finish_reason", finish_reason}};
        out = {{"id", e.id},
               {"object", "chat.completion"},
               {"created", e.created},
               {"model", e.model},
               {"system_fingerprint", "moeflow"},
               {"choices", json::array({choice})},
               {"usage", usage}};
        break;
      }
      case Exchange::Kind::kCompletion: {
        json choice = {{"index", 0},
                       {"text", content},
                       {"logprobs", e.logprobs ? CompletionLogprobsJson(*tokenizer_, e.tokens, 0)
                                               : json(nullptr)},
                       {"finish_reason", finish_reason}};
        out = {{"id", e.id},       {"object", "text_completion"},      {"created", e.created},
               {"model", e.model}, {"choices", json::array({choice})}, {"usage", usage}};
        break;
      }
      case Exchange::Kind::kOllamaChat: {
        json message = {{"role", "assistant"}, {"content", content}};
        if (!reasoning.empty()) message["thinking"] = reasoning;
        if (!tool_calls.empty()) message["tool_calls"] = OllamaToolCallsJson(tool_calls);
        out = ollama_final(message);
        break;
      }
      case Exchange::Kind::kOllamaGenerate:
        out = ollama_final(content);
        break;
    }
    LogRequest(e, 200, note);
    r.Send(200, JsonHeaders(), Dump(out));
    return;
  }

  // Streaming: make sure the head went out (a generation can end before any
  // token, e.g. max_tokens reached by a held-back stop string prefix).
  if (!e.role_sent) {
    GeneratedToken none;
    const bool logprobs = e.logprobs;
    e.logprobs = false;
    OnToken(e, none);
    e.logprobs = logprobs;
  }
  switch (e.kind) {
    case Exchange::Kind::kChat: {
      ChatStreamSplitter::Delta d = e.splitter.Feed(s.flushed_text, /*final=*/true);
      auto chunk_with = [&](json delta, json finish) {
        json chunk = {{"id", e.id},
                      {"object", "chat.completion.chunk"},
                      {"created", e.created},
                      {"model", e.model},
                      {"system_fingerprint", "moeflow"},
                      {"choices", json::array({{{"index", 0},
                                                {"delta", delta},
                                                {"logprobs", nullptr},
                                                {"finish_reason", finish}}})}};
        if (e.include_usage) chunk["usage"] = nullptr;
        return "data: " + Dump(chunk) + "\n\n";
      };
      if (!d.reasoning.empty()) r.Write(chunk_with({{"reasoning_content", d.reasoning}}, nullptr));
      if (!d.content.empty()) r.Write(chunk_with({{"content", d.content}}, nullptr));
      if (e.splitter.in_tool_calls()) {
        if (!tool_calls.empty()) {
          r.Write(chunk_with({{"tool_calls", ToolCallsJson(tool_calls, true)}}, nullptr));
        } else {
          // Unparsable tool-call text: hand it over as content.
          r.Write(chunk_with({{"content", e.splitter.tool_text()}}, nullptr));
        }
      }
      r.Write(chunk_with(json::object(), finish_reason));
      if (e.include_usage) {
        json chunk = {
            {"id", e.id},       {"object", "chat.completion.chunk"}, {"created", e.created},
            {"model", e.model}, {"system_fingerprint", "moeflow"},   {"choices", json::array()},
            {"usage", usage}};
        r.Write("data: " + Dump(chunk) + "\n\n");
      }
      r.Write("data: [DONE]\n\n");
      break;
    }
    case Exchange::Kind::kCompletion: {
      json chunk = {{"id", e.id},
                    {"object", "text_completion"},
                    {"created", e.created},
                    {"model", e.model},
                    {"choices", json::array({{{"index", 0},
                                              {"text", s.flushed_text},
                                              {"logprobs", nullptr},
                                              {"finish_reason", finish_reason}}})}};
      if (e.include_usage) chunk["usage"] = nullptr;
      r.Write("data: " + Dump(chunk) + "\n\n");
      if (e.include_usage) {
        json usage_chunk = {
            {"id", e.id},       {"object", "text_completion"}, {"created", e.created},
            {"model", e.model}, {"choices", json::array()},    {"usage", usage}};
        r.Write("data: " + Dump(usage_chunk) + "\n\n");
      }
      r.Write("data: [DONE]\n\n");
      break;
    }
    case Exchange::Kind::kOllamaChat: {
      ChatStreamSplitter::Delta d = e.splitter.Feed(s.flushed_text, /*final=*/true);
      json message = {{"role", "assistant"}, {"content", d.content}};
      if (!d.reasoning.empty()) message["thinking"] = d.reasoning;
      if (!tool_calls.empty()) {
        message["tool_calls"] = OllamaToolCallsJson(tool_calls);
      } else if (e.splitter.in_tool_calls()) {
        message["content"] = d.content + e.splitter.tool_text();
      }
      r.Write(Dump(ollama_final(message)) + "\n");
      break;
    }
    case Exchange::Kind::kOllamaGenerate:
      r.Write(Dump(ollama_final(s.flushed_text)) + "\n");
      break;
  }
  LogRequest(e, 200, note);
  r.EndStream();
}

}  // namespace moeflow::server
