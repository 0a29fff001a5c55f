// The HTTP API of `moeflow serve`: OpenAI-compatible /v1/* (SSE streaming),
// Ollama-compatible /api/* (NDJSON streaming), /health and /metrics.
//
// Role in the data flow: HttpServer hands every request to OpenAiApi::Handle
// (on an HTTP worker thread). Handle validates the JSON, renders chat
// messages through the model's chat template (chat_template.h), tokenizes,
// and submits a GenerationRequest to the backend (scheduler.h); the tokens
// come back on the scheduler thread and are written to the responder as SSE
// events / NDJSON lines / one JSON body. A client disconnect cancels the
// request.
//
// Endpoints:
//   GET  /health                 {"status":"ok"} (never needs the API key)
//   GET  /metrics                Prometheus text (metrics.h)
//   GET  /v1/models[/ID]         the one served model
//   POST /v1/chat/completions    messages → chat.completion / chat.completion.chunk
//   POST /v1/completions         prompt → text_completion
//   POST /api/chat, /api/generate, GET /api/tags, /api/version   (Ollama)
//
// Tools: the DeepSeek V3/R1 chat templates do not render the request's
// `tools`; the model learns about them from a system message this layer
// prepends (ToolsSystemPrompt), which describes each function's name,
// description and JSON-schema parameters and the tool-call format. The
// model's tool-call tokens are parsed into `tool_calls` (tool_call_parser.h);
// when streaming, content is streamed until "<｜tool▁calls▁begin｜>" and the
// calls are sent as `delta.tool_calls` when generation ends. R1's reasoning
// ("<think>...</think>") is returned as `reasoning_content` (streamed too).
//
// Errors are OpenAI-shaped, {"error":{"message","type","param","code"}}
// (Ollama endpoints: {"error": message}): 400 invalid JSON / wrong types /
// bad values / empty messages / prompt or max_tokens past the context,
// 401 missing or wrong API key, 404 unknown model or path, 405 wrong method,
// 429 queue full, 503 shutting down, 500 engine errors.
//
// Thread-safety: Handle may be called from several threads at once.
#ifndef MOEFLOW_SERVER_OPENAI_API_H_
#define MOEFLOW_SERVER_OPENAI_API_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat/chat_message.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

struct ApiOptions {
  // The model id clients must name ("model"); /v1/models lists it.
  std::string model_name = "moeflow";
  // Ollama's /api/tags details.
  std::string model_family = "deepseek2";
  int64_t model_file_bytes = 0;
  // Empty: no authentication. Else "Authorization: Bearer KEY" is required.
  std::string api_key;
  // The model file's chat template text ("" when it has none) and the known
  // template used when it is missing or not recognized.
  std::string chat_template;
  std::string fallback_template = "deepseek-v3";
  // Force R1's "<think>\n" at the start of the reply.
  bool force_think = false;
  // One line per request on stderr.
  bool log_requests = true;
  // /v1/completions' default max_tokens (OpenAI's is 16); chat requests
  // default to the rest of the context.
  int64_t default_completion_max_tokens = 16;
};

class OpenAiApi {
 public:
  // `tokenizer`, `backend` and `metrics` must outlive the API object and
  // every request it started.
  OpenAiApi(ApiOptions options, const BpeTokenizer* tokenizer, GenerationBackend* backend,
            ServerMetrics* metrics);

  void Handle(const HttpRequest& request, std::shared_ptr<HttpResponder> responder);

 private:
  struct Exchange;
  void HandleChecked(const HttpRequest& request, std::shared_ptr<HttpResponder> responder);
  void HandleOpenAiGeneration(const HttpRequest& request, std::shared_ptr<HttpResponder> responder,
                              bool chat);
  void HandleOllamaGeneration(const HttpRequest& request, std::shared_ptr<HttpResponder> responder,
                              bool chat);
  void Start(std::shared_ptr<Exchange> exchange);
  void OnToken(Exchange& exchange, const GeneratedToken& token);
  void OnDone(Exchange& exchange, const GenerationSummary& summary);
  void LogRequest(const Exchange& exchange, int status, const std::string& note) const;

  const ApiOptions options_;
  const BpeTokenizer* tokenizer_;
  GenerationBackend* backend_;
  ServerMetrics* metrics_;
};

// The system message that describes `tools` to the model (see above).
std::string ToolsSystemPrompt(const std::vector<chat::ToolDefinition>& tools);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_OPENAI_API_H_
