// The HTTP API of `moeflow serve`: OpenAI-compatible /v1/* (SSE streaming),
// Ollama-compatible /api/* (NDJSON streaming), /health and /metrics.
//
// Role in the data flow: HttpServer hands every request to OpenAiApi::Handle
// (on an HTTP worker thread), which routes it: the generation endpoints to
// their protocol's encoder (openai_protocol.h, ollama_protocol.h: validate
// the JSON, render chat messages through the model's chat template,
// tokenize), whose exchange it submits to the backend (scheduler.h); the
// tokens come back on the scheduler thread and the exchange writes them as
// SSE events / NDJSON lines / one JSON body (api_exchange.h). A client
// disconnect cancels the request.
//
// Endpoints:
//   GET  /health                 {"status":"ok"}, or 503 {"status":"draining"|"degraded"}
//                                (never needs the API key)
//   GET  /metrics                Prometheus text (metrics.h)
//   GET  /v1/models[/ID]         the one served model
//   POST /v1/chat/completions    messages → chat.completion / chat.completion.chunk
//   POST /v1/completions         prompt → text_completion
//   POST /api/chat, /api/generate, /api/show, GET /api/tags, /api/ps,
//   /api/version                 (Ollama; ollama_models.h)
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

#include "server/api_exchange.h"
#include "server/constrained_output.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

class OpenAiApi {
 public:
  // `tokenizer`, `backend` and `metrics` must outlive the API object and
  // every request it started.
  OpenAiApi(ApiOptions options, const BpeTokenizer* tokenizer, GenerationBackend* backend,
            ServerMetrics* metrics);

  void Handle(const HttpRequest& request, std::shared_ptr<HttpResponder> responder);

 private:
  void HandleChecked(const HttpRequest& request, std::shared_ptr<HttpResponder> responder);
  // Submits a parsed exchange and wires its callbacks; Refuses it when the
  // backend does not take it (429, 503, 400).
  void Start(std::shared_ptr<ApiExchange> exchange);
  ApiContext Context() const;

  const ApiOptions options_;
  OllamaModelCard ollama_card_;  // options_.ollama with the blanks filled
  const BpeTokenizer* tokenizer_;
  GenerationBackend* backend_;
  ServerMetrics* metrics_;
  std::unique_ptr<GrammarCache> grammars_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_OPENAI_API_H_
