#include "server/openai_api.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/api_json.h"
#include "server/ollama_models.h"
#include "server/ollama_protocol.h"
#include "server/openai_protocol.h"

namespace moeflow::server {

OpenAiApi::OpenAiApi(ApiOptions options, const BpeTokenizer* tokenizer, GenerationBackend* backend,
                     ServerMetrics* metrics)
    : options_(std::move(options)),
      tokenizer_(tokenizer),
      backend_(backend),
      metrics_(metrics),
      grammars_(std::make_unique<GrammarCache>(tokenizer)) {
  ollama_card_ = options_.ollama;
  if (ollama_card_.name.empty()) ollama_card_.name = options_.model_name;
  if (ollama_card_.size_bytes == 0) ollama_card_.size_bytes = options_.model_file_bytes;
  if (ollama_card_.family.empty()) ollama_card_.family = options_.model_family;
  if (ollama_card_.chat_template.empty()) ollama_card_.chat_template = options_.chat_template;
  if (ollama_card_.modified_at.empty()) ollama_card_.modified_at = Rfc3339Now();
  if (ollama_card_.context_length == 0) ollama_card_.context_length = backend_->context_tokens();
}

ApiContext OpenAiApi::Context() const {
  return ApiContext{&options_, tokenizer_, metrics_, backend_->context_tokens(), grammars_.get()};
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
    const std::string body = Dump(ollama ? OllamaErrorJson(e) : OpenAiErrorJson(e));
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
    const std::string reason = options_.health ? options_.health() : "";
    if (metrics_ != nullptr) metrics_->RecordRequest(path, reason.empty() ? 200 : 503);
    if (reason.empty()) {
      responder->Send(200, JsonHeaders(), "{\"status\":\"ok\"}");
    } else {
      responder->Send(503, {{"Content-Type", "application/json"}, {"Retry-After", "5"}},
                      Dump(json{{"status", reason}}));
    }
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
    bool ok = false;
    ApiError error;
    std::shared_ptr<ApiExchange> e = ParseOpenAiRequest(
        Context(), request, responder, path == "/v1/chat/completions", &ok, &error);
    if (!ok) return e->Refuse(error);
    Start(std::move(e));
    return;
  }
  if (path == "/api/chat" || path == "/api/generate") {
    if (!post) return wrong_method("POST");
    bool ok = false, answered = false;
    ApiError error;
    std::shared_ptr<ApiExchange> e = ParseOllamaRequest(
        Context(), request, responder, path == "/api/chat", &ok, &answered, &error);
    if (ok) {
      Start(std::move(e));
    } else if (!answered) {
      e->Refuse(error);
    }
    return;
  }
  if (path == "/api/tags" || path == "/api/ps") {
    if (!get) return wrong_method("GET");
    responder->Send(
        200, JsonHeaders(),
        Dump(path == "/api/tags" ? OllamaTagsJson(ollama_card_) : OllamaPsJson(ollama_card_)));
    return;
  }
  if (path == "/api/show") {
    if (!post) return wrong_method("POST");
    int status = 200;
    const json shown = OllamaShowJson(ollama_card_, request.body, &status);
    if (metrics_ != nullptr) metrics_->RecordRequest(path, status);
    responder->Send(status, JsonHeaders(), Dump(shown));
    return;
  }
  if (path == "/api/version") {
    responder->Send(200, JsonHeaders(), "{\"version\":\"0.5.0\"}");
    return;
  }
  fail({404, absl::StrCat("Unknown path ", path), "", "not_found"});
}

void OpenAiApi::Start(std::shared_ptr<ApiExchange> e) {
  std::weak_ptr<std::atomic<bool>> cancelled = e->request->cancelled;
  std::vector<std::shared_ptr<GenerationRequest>> requests = e->Begin();
  for (size_t i = 0; i < requests.size(); ++i) {
    GenerationRequest& request = *requests[i];
    const int choice = static_cast<int>(i);
    // The callbacks hold the exchange; the request holds the callbacks; the
    // scheduler drops the request after on_done, which breaks the cycle.
    request.on_token = [e, choice](const GeneratedToken& token) { e->OnToken(choice, token); };
    request.on_done = [e, choice, r = &request](const GenerationSummary& summary) {
      e->OnDone(choice, summary);
      r->on_token = nullptr;
      r->on_done = nullptr;
    };
    const absl::Status submitted = backend_->Submit(requests[i]);
    if (submitted.ok()) continue;
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
    request.on_token = nullptr;
    request.on_done = nullptr;
    e->Abandon(error);
    return;
  }
  e->Submitted();
  e->responder()->SetOnClose([cancelled] {
    if (auto flag = cancelled.lock()) flag->store(true);
  });
}

}  // namespace moeflow::server
