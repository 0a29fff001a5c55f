// `moeflow serve`: an OpenAI- and Ollama-compatible HTTP server on one model.
//
// Loads the GGUF once (engine, tokenizer, chat template), then serves
// server/openai_api.h's endpoints until SIGINT/SIGTERM, which stops accepting,
// lets running responses finish (up to 5 s), cancels queued requests and
// exits 0. Requests run one at a time in arrival order (SerialScheduler).
// Logs one line per request on stderr, and first
//   "moeflow serve: listening on http://HOST:PORT (model NAME)"
// (with --port 0 the kernel picks a free port; this line names it).
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/open_generator.h"
#include "generation/text_generator.h"
#include "server/engine_sequence_model.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/scheduler.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "serve: address to listen on");
ABSL_FLAG(int32_t, port, 8080, "serve: TCP port to listen on (0: a free port, printed on stderr)");
ABSL_FLAG(std::string, api_key, "",
          "serve: require \"Authorization: Bearer KEY\" on every endpoint but /health (empty: "
          "no key)");
ABSL_FLAG(int64_t, max_body_bytes, 4 * 1024 * 1024,
          "serve: largest request body accepted, bytes (larger: 413)");
ABSL_FLAG(std::string, cors_origin, "",
          "serve: send Access-Control-Allow-Origin with this value (empty: CORS off)");
ABSL_FLAG(int64_t, max_queue, 64, "serve: requests waiting for the engine before new ones get 429");
ABSL_FLAG(int64_t, context_tokens, 4096,
          "serve: positions (prompt + generated) one request may use; 0: the model's "
          "context_length");
ABSL_FLAG(int32_t, http_workers, 2, "serve: threads that parse and validate requests");
ABSL_FLAG(std::string, model_name, "",
          "serve: the model id clients name (empty: the file name without .gguf)");

namespace moeflow {
namespace {

int Usage(const std::string& message) { return ReportUsageError("serve", message); }

int RunServe(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("unexpected argument \"" + args[0] + "\"");
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return Usage("--model is required");
  const int32_t port = absl::GetFlag(FLAGS_port);
  if (port < 0 || port > 65535) return Usage(absl::StrCat("--port=", port, ": not a TCP port"));
  const int64_t max_body = absl::GetFlag(FLAGS_max_body_bytes);
  if (max_body < 1) return Usage("--max-body-bytes must be >= 1");
  const int64_t max_queue = absl::GetFlag(FLAGS_max_queue);
  if (max_queue < 0) return Usage("--max-queue must be >= 0");
  const int64_t context_tokens = absl::GetFlag(FLAGS_context_tokens);
  if (context_tokens < 0) return Usage("--context-tokens must be >= 0");
  const int32_t workers = absl::GetFlag(FLAGS_http_workers);
  if (workers < 1) return Usage("--http-workers must be >= 1");

  // Signals are taken by sigwait below; block them before any thread starts
  // so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<TextGenerator>> generator =
      OpenGeneratorFromFlags(model, context_tokens);
  if (!generator.ok()) {
    std::fprintf(stderr, "moeflow serve: %s\n", std::string(generator.status().message()).c_str());
    return kExitFailure;
  }

  server::ServerMetrics metrics;
  server::EngineSequenceModel sequence_model(generator->get());
  server::SerialSchedulerOptions scheduler_options;
  scheduler_options.max_queue = max_queue;
  server::SerialScheduler scheduler(&sequence_model, scheduler_options, &metrics);

  server::ApiOptions api_options;
  api_options.model_name = absl::GetFlag(FLAGS_model_name);
  if (api_options.model_name.empty()) {
    std::string name = model.substr(model.find_last_of('/') + 1);
    if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
    api_options.model_name = name;
  }
  api_options.api_key = absl::GetFlag(FLAGS_api_key);
  api_options.chat_template = (*generator)->chat_template();
  struct stat st {};
  if (stat(model.c_str(), &st) == 0) api_options.model_file_bytes = st.st_size;
  server::OpenAiApi api(api_options, &(*generator)->tokenizer(), &scheduler, &metrics);

  server::HttpServerOptions http_options;
  http_options.host = absl::GetFlag(FLAGS_host);
  http_options.port = port;
  http_options.worker_threads = workers;
  http_options.limits.max_body_bytes = max_body;
  server::HttpServer http(http_options, [&api](const server::HttpRequest& request,
                                               std::shared_ptr<server::HttpResponder> responder) {
    api.Handle(request, std::move(responder));
  });
  const std::string cors = absl::GetFlag(FLAGS_cors_origin);
  if (!cors.empty()) http.SetExtraHeaders({{"Access-Control-Allow-Origin", cors}});
  absl::Status started = http.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "moeflow serve: %s\n", std::string(started.message()).c_str());
    return kExitFailure;
  }
  std::fprintf(stderr, "moeflow serve: listening on http://%s:%d (model %s, context %lld tokens)\n",
               http_options.host.c_str(), http.port(), api_options.model_name.c_str(),
               static_cast<long long>(scheduler.context_tokens()));
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::fprintf(stderr, "moeflow serve: signal %d, shutting down\n", signal_number);
  // Running generations are cancelled first so their streams end; then the
  // HTTP server drains what is left to write.
  scheduler.Shutdown();
  http.Stop();
  return kExitOk;
}

}  // namespace

Command ServeCommand() {
  return {"serve",
          "serve the model over HTTP (OpenAI- and Ollama-compatible API)",
          "moeflow serve --model=FILE.gguf [--host=127.0.0.1 --port=8080] [flags]",
          "Endpoints: /v1/chat/completions, /v1/completions, /v1/models (OpenAI, SSE streaming),\n"
          "/api/chat, /api/generate, /api/tags (Ollama, NDJSON streaming), /health, /metrics.\n"
          "Requests run one at a time in arrival order; SIGINT/SIGTERM stop the server.",
          {"model", "host", "port", "api_key", "max_body_bytes", "cors_origin", "max_queue",
           "context_tokens", "http_workers", "model_name", "threads", "active_experts"},
          &RunServe};
}

}  // namespace moeflow
