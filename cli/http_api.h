// The OpenAI / Ollama HTTP front shared by `moeflow serve` (one engine in
// this process) and `moeflow launch` (the coordinator, topology
// http_address): server::OpenAiApi on a server::HttpServer, configured from
// the serve flags both commands accept (--api_key, --max_body_bytes,
// --cors_origin, --http_workers, --model_name).
//
// Role in the data flow: HTTP requests -> OpenAiApi -> the given
// GenerationBackend (a scheduler over the engine or the coordinator).
// Thread-safety: StartHttpApi from the command's main thread; the result
// owns the server threads until Stop / destruction. Failure: the listen
// error (UNAVAILABLE naming host:port), INVALID_ARGUMENT for a bad flag.
#ifndef MOEFLOW_CLI_HTTP_API_H_
#define MOEFLOW_CLI_HTTP_API_H_

#include <cstdint>
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
  // Path of the GGUF (its name is the default model id, its size goes to
  // /api/tags) and its chat template text ("" when it has none).
  std::string model_path;
  std::string chat_template;
};

struct HttpApi {
  std::unique_ptr<server::OpenAiApi> api;
  std::unique_ptr<server::HttpServer> http;
  std::string model_name;
};

// Checks the shared flags (usage errors as INVALID_ARGUMENT naming the flag).
absl::Status CheckHttpApiFlags();

// Builds the API over `backend` and starts listening; `tokenizer`, `backend`
// and `metrics` must outlive the result.
absl::StatusOr<HttpApi> StartHttpApi(const HttpApiConfig& config, const BpeTokenizer* tokenizer,
                                     server::GenerationBackend* backend,
                                     server::ServerMetrics* metrics);

}  // namespace moeflow

#endif  // MOEFLOW_CLI_HTTP_API_H_
