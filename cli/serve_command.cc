// `moeflow serve`: an OpenAI- and Ollama-compatible HTTP server on one model.
//
// Loads the GGUF once (engine, tokenizer, chat template), then serves
// server/openai_api.h's endpoints until SIGINT/SIGTERM, which stops accepting
// (new requests get 503, /health "draining"), lets queued and running requests
// finish for up to --shutdown_grace_s (default 30 s; a second signal ends the
// wait), cancels what is left (its streams end with a clean error event) and
// exits 0. Requests are batched continuously by the one scheduler
// (BatchingScheduler) over the dataflow engine on the single-process
// topology, or, with --scheduler=serial, run one at a time in arrival order
// (the same scheduler with one request running).
// Logs one line per request on stderr, and first
//   "moeflow serve: listening on http://HOST:PORT (model NAME)"
// (with --port 0 the kernel picks a free port; this line names it).
#include <pthread.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/http_api.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"
#include "model/gguf.h"
#include "server/batching_scheduler.h"
#include "server/metrics.h"
#include "tokenizer/bpe_tokenizer.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "serve: address to listen on");
ABSL_FLAG(int32_t, port, 8080, "serve: TCP port to listen on (0: a free port, printed on stderr)");
ABSL_FLAG(int64_t, max_queue, 64,
          "serve, launch: HTTP requests waiting for the engine before new ones get 429");
ABSL_FLAG(int64_t, context_tokens, 4096,
          "serve: positions (prompt + generated) one request may use; 0: the model's "
          "context_length");
ABSL_FLAG(std::string, scheduler, "batching",
          "serve: \"batching\" (continuous batching over a paged KV cache) or \"serial\" (one "
          "request at a time)");
ABSL_FLAG(int32_t, parallel, 8, "serve: requests generating at once (batching scheduler)");
// Shared with `inspect --plan` (defined in inspect_command.cc): tokens per
// forward pass, decode tokens + prefill chunks.
ABSL_DECLARE_FLAG(int64_t, max_batch_tokens);
ABSL_FLAG(int64_t, chunk_size, 256,
          "serve: largest prefill chunk of one request per forward pass, tokens (batching "
          "scheduler)");
ABSL_FLAG(int64_t, kv_tokens, 0,
          "serve: paged KV cache budget in positions over all requests (batching scheduler); 0: "
          "--parallel x the context");
ABSL_FLAG(int64_t, decode_reserve_tokens, 128,
          "serve: KV positions past its prompt a request must find free to be admitted (at most "
          "its max_tokens); more pages are taken as it decodes, and the newest request is "
          "preempted (recomputed later) when they run out (batching scheduler)");

namespace moeflow {
namespace {

int Usage(const std::string& message) { return ReportUsageError("serve", message); }

int RunServe(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("unexpected argument \"" + args[0] + "\"");
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return Usage("--model is required");
  const int32_t port = absl::GetFlag(FLAGS_port);
  if (port < 0 || port > 65535) return Usage(absl::StrCat("--port=", port, ": not a TCP port"));
  if (absl::Status s = CheckHttpApiFlags(absl::GetFlag(FLAGS_host), "--host"); !s.ok()) {
    return Usage(std::string(s.message()));
  }
  const int64_t max_queue = absl::GetFlag(FLAGS_max_queue);
  if (max_queue < 0) return Usage("--max-queue must be >= 0");
  const int64_t context_tokens = absl::GetFlag(FLAGS_context_tokens);
  if (context_tokens < 0) return Usage("--context-tokens must be >= 0");
  const std::string scheduler_kind = absl::GetFlag(FLAGS_scheduler);
  if (scheduler_kind != "batching" && scheduler_kind != "serial") {
    return Usage("--scheduler must be \"batching\" or \"serial\", got \"" + scheduler_kind + "\"");
  }
  const bool batching = scheduler_kind == "batching";
  const int32_t parallel = absl::GetFlag(FLAGS_parallel);
  if (parallel < 1) return Usage("--parallel must be >= 1");
  const int64_t max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  if (max_batch_tokens < 1) return Usage("--max-batch-tokens must be >= 1");
  const int64_t chunk_size = absl::GetFlag(FLAGS_chunk_size);
  if (chunk_size < 1) return Usage("--chunk-size must be >= 1");
  const int64_t decode_reserve_tokens = absl::GetFlag(FLAGS_decode_reserve_tokens);
  if (decode_reserve_tokens < 0) return Usage("--decode-reserve-tokens must be >= 0");
  int64_t kv_tokens = absl::GetFlag(FLAGS_kv_tokens);
  if (kv_tokens < 0) return Usage("--kv-tokens must be >= 0");

  // Signals are taken by sigwait below; block them before any thread starts
  // so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (kv_tokens == 0) {
    if (context_tokens == 0) return Usage("--kv-tokens is required with --context-tokens=0");
    kv_tokens = (batching ? parallel : 1) * context_tokens;
  }
  // The model's tokenizer and template, then the engine: the dataflow over
  // the single-process topology (coordinator/local_topology.h), the same
  // layer driver `moeflow launch` runs over its worker processes.
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(model);
  if (!file.ok()) return ReportFailure("serve", file.status());
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return ReportFailure("serve", tokenizer.status());
  std::string chat_template;
  if ((*file)->Find("tokenizer.chat_template") != nullptr) {
    chat_template = (*file)->GetString("tokenizer.chat_template").value_or("");
  }
  file->reset();
  LocalTopologyOptions topology_options;
  topology_options.n_threads = absl::GetFlag(FLAGS_threads);
  topology_options.active_experts = absl::GetFlag(FLAGS_active_experts);
  topology_options.max_batch_tokens = max_batch_tokens;
  topology_options.max_sequences = batching ? parallel : 1;
  topology_options.kv_tokens = kv_tokens;
  topology_options.context_tokens = context_tokens;
  StderrProgress progress("loading model", "parts");
  topology_options.progress = [&progress](int64_t done, int64_t total) {
    progress.Update(done, total);
  };
  absl::StatusOr<std::unique_ptr<LocalTopology>> topology =
      LocalTopology::Open(model, topology_options);
  progress.Finish();
  if (!topology.ok()) return ReportFailure("serve", topology.status());
  DataflowBatchModel batch_model(topology->get(), tokenizer->get());

  server::ServerMetrics metrics;
  server::BatchingSchedulerOptions options;
  options.max_queue = max_queue;
  // serial: one request at a time over the same engine and cache.
  options.max_running = batching ? parallel : 1;
  // The topology's step (--max-batch-tokens, at most kPrefillTokenChunk).
  const int64_t step_tokens = (*topology)->limits().max_tokens;
  options.max_batch_tokens = step_tokens;
  options.chunk_tokens = std::min(chunk_size, step_tokens);
  options.decode_reserve_tokens = decode_reserve_tokens;
  server::BatchingScheduler scheduler(&batch_model, options, &metrics);

  HttpApiConfig http_config;
  http_config.host = absl::GetFlag(FLAGS_host);
  http_config.port = port;
  http_config.model_path = model;
  http_config.chat_template = chat_template;
  absl::StatusOr<HttpApi> http = StartHttpApi(http_config, tokenizer->get(), &scheduler, &metrics);
  if (!http.ok()) {
    std::fprintf(stderr, "moeflow serve: %s\n", std::string(http.status().message()).c_str());
    return kExitFailure;
  }
  const std::string scheduling =
      batching ? absl::StrCat("batching: ", parallel, " at once, ", step_tokens,
                              " tokens per step, KV cache ", kv_tokens, " tokens")
               : std::string("serial");
  std::fprintf(stderr,
               "moeflow serve: listening on http://%s:%d (model %s, context %lld tokens, %s)\n",
               http_config.host.c_str(), http->http->port(), http->model_name.c_str(),
               static_cast<long long>(scheduler.context_tokens()), scheduling.c_str());
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::fprintf(stderr, "moeflow serve: %s, shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  // Stop accepting; running requests get --shutdown_grace_s to finish.
  DrainForShutdown(*http, scheduler, signals, [](const std::string& line) {
    std::fprintf(stderr, "moeflow serve: %s\n", line.c_str());
  });
  // What is left is cancelled (its streams end with an error event); then
  // the HTTP server writes out what is queued.
  scheduler.Shutdown();
  http->http->Stop();
  std::fprintf(stderr, "moeflow serve: stopped\n");
  return kExitOk;
}

}  // namespace

Command ServeCommand() {
  return {
      "serve",
      "serve the model over HTTP (OpenAI- and Ollama-compatible API)",
      "moeflow serve --model=FILE.gguf [--host=127.0.0.1 --port=8080] [flags]",
      "Endpoints: /v1/chat/completions, /v1/completions, /v1/models (OpenAI, SSE streaming),\n"
      "/api/chat, /api/generate, /api/tags (Ollama, NDJSON streaming), /health, /metrics.\n"
      "Requests are batched continuously (--parallel at once, decode tokens and prefill\n"
      "chunks sharing each forward pass, paged KV cache with prefix reuse); --scheduler=serial\n"
      "runs them one at a time. SIGINT/SIGTERM stop accepting and let running requests\n"
      "finish (--shutdown-grace-s), then stop the server. Off loopback --api-key is\n"
      "required (or --allow-unauthenticated).",
      {"model",
       "host",
       "port",
       "api_key",
       "allow_unauthenticated",
       "max_body_bytes",
       "cors_origin",
       "max_queue",
       "max_connections",
       "idle_timeout_s",
       "request_timeout_s",
       "shutdown_grace_s",
       "context_tokens",
       "http_workers",
       "model_name",
       "threads",
       "active_experts",
       "scheduler",
       "parallel",
       "max_batch_tokens",
       "chunk_size",
       "kv_tokens",
       "decode_reserve_tokens"},
      &RunServe};
}

}  // namespace moeflow
