// The OpenAI / Ollama HTTP front shared by `moeflow serve` (one engine in
// this process) and `moeflow launch` (the coordinator, topology
// http_address): server::OpenAiApi on a server::HttpServer, configured from
// the serve flags both commands accept (--api_key, --allow_unauthenticated,
// --max_body_bytes, --cors_origin, --http_workers, --model_name,
// --max_connections, --idle_timeout_s, --request_timeout_s,
// --shutdown_grace_s), and the graceful stop both do on SIGTERM.
//
// Role in the data flow: HTTP requests -> OpenAiApi -> the given
// GenerationBackend (a scheduler over the engine or the coordinator).
// Thread-safety: StartHttpApi from the command's main thread; the result
// owns the server threads until Stop / destruction. Failure: the listen
// error (UNAVAILABLE naming host:port), INVALID_ARGUMENT for a bad flag.
#ifndef MOEFLOW_CLI_HTTP_API_H_
#define MOEFLOW_CLI_HTTP_API_H_

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {

struct HttpApiConfig {
  std::string host = "127.0.0.1";
  int32_t port = 0;
  // Path of the GGUF or of one shard of a split model (its name, a split's
  // prefix, is the default model id; the model's size goes to /api/tags)
  // and its chat template text ("" when it has none).
  std::string model_path;
  std::string chat_template;
  // Why the server does not serve ("degraded", "draining"), "" when it does:
  // /health's answer (503 with the reason, else 200). Optional; thread-safe.
  std::function<std::string()> health;
};

struct HttpApi {
  std::unique_ptr<server::OpenAiApi> api;
  std::unique_ptr<server::HttpServer> http;
  std::string model_name;
  // Set by DrainForShutdown: /health answers 503 "draining".
  std::shared_ptr<std::atomic<bool>> draining;
};

// Checks the shared flags (usage errors as INVALID_ARGUMENT naming the
// flag), and that the API listens on loopback unless --api_key (or
// --allow_unauthenticated) is given; `what` names the address in the
// message ("--host", "http_address").
absl::Status CheckHttpApiFlags(const std::string& host, absl::string_view what);

// --shutdown_grace_s.
int64_t ShutdownGraceSeconds();

// The first half of a graceful stop (SIGTERM/SIGINT): stop accepting
// connections and requests (new requests on open connections get 503,
// /health "draining"), then wait until `backend` has nothing queued or
// running, for at most --shutdown_grace_s or until another of `signals`
// arrives. True when everything finished; the caller then Shutdown()s the
// backend (cancelling what is left: those streams end with a clean error
// event) and stops the server. Progress lines go to `log`.
bool DrainForShutdown(HttpApi& api, server::GenerationBackend& backend, const sigset_t& signals,
                      const std::function<void(const std::string&)>& log);

// Builds the API over `backend` and starts listening; `tokenizer`, `backend`
// and `metrics` must outlive the result.
absl::StatusOr<HttpApi> StartHttpApi(const HttpApiConfig& config, const BpeTokenizer* tokenizer,
                                     server::GenerationBackend* backend,
                                     server::ServerMetrics* metrics);

}  // namespace moeflow

#endif  // MOEFLOW_CLI_HTTP_API_H_
