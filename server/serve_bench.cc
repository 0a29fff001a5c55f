// Serving throughput: requests/s and aggregate decode tokens/s of the whole
// HTTP stack (HttpServer + OpenAiApi + SerialScheduler + engine) with 1, 4,
// 8 and 16 concurrent clients on one model.
//
//   serve_bench --model=FILE.gguf [--max_tokens=32 --requests_per_client=4
//               --concurrency=1,4,8,16 --threads=2 --json]
//
// The server runs in-process on a free 127.0.0.1 port; each client thread
// sends non-streaming greedy chat requests over its own keep-alive-less
// connection, one after the other. Aggregate decode tok/s = completion
// tokens of all requests / wall time of the level (prefill and queueing
// included, as a client sees it). Prints a table, or JSON with --json.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "generation/text_generator.h"
#include "nlohmann/json.hpp"
#include "server/engine_sequence_model.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "tests/server/http_test_client.h"

ABSL_FLAG(std::string, model, "", "GGUF model to serve");
ABSL_FLAG(int64_t, max_tokens, 32, "completion tokens per request");
ABSL_FLAG(int32_t, requests_per_client, 4, "requests each client sends at each level");
ABSL_FLAG(std::string, concurrency, "1,4,8,16", "concurrent clients per level");
ABSL_FLAG(int32_t, threads, 2, "engine compute threads");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");

int main(int argc, char** argv) {
  using namespace moeflow;
  using namespace moeflow::server;
  using json = nlohmann::json;
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    std::fprintf(stderr, "serve_bench: --model is required\n");
    return 2;
  }
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_concurrency), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1) {
      std::fprintf(stderr, "serve_bench: bad --concurrency\n");
      return 2;
    }
    levels.push_back(n);
  }
  TextGeneratorOptions options;
  options.engine.n_threads = absl::GetFlag(FLAGS_threads);
  options.context_tokens = 4096;
  auto generator = TextGenerator::Open(model, options);
  if (!generator.ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", std::string(generator.status().message()).c_str());
    return 1;
  }
  ServerMetrics metrics;
  EngineSequenceModel sequence_model(generator->get());
  SerialSchedulerOptions scheduler_options;
  scheduler_options.max_queue = 1024;
  SerialScheduler scheduler(&sequence_model, scheduler_options, &metrics);
  ApiOptions api_options;
  api_options.model_name = "bench";
  api_options.log_requests = false;
  api_options.chat_template = (*generator)->chat_template();
  OpenAiApi api(api_options, &(*generator)->tokenizer(), &scheduler, &metrics);
  HttpServerOptions http_options;
  http_options.worker_threads = 2;
  HttpServer http(http_options, [&api](const HttpRequest& r, std::shared_ptr<HttpResponder> w) {
    api.Handle(r, std::move(w));
  });
  if (!http.Start().ok()) return 1;
  const int port = http.port();
  testing::ReadTimeoutSeconds() = 600;
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int per_client = absl::GetFlag(FLAGS_requests_per_client);

  json results = json::array();
  for (int clients : levels) {
    std::vector<int64_t> tokens(static_cast<size_t>(clients), 0);
    std::vector<int64_t> errors(static_cast<size_t>(clients), 0);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        for (int i = 0; i < per_client; ++i) {
          const json body = {
              {"model", "bench"},
              {"temperature", 0},
              {"max_tokens", max_tokens},
              {"messages", json::array({{{"role", "user"},
                                         {"content", absl::StrCat("Client ", c, " request ", i,
                                                                  ": write about the sea.")}}})}};
          testing::ParsedResponse r = testing::Post(port, "/v1/chat/completions", body.dump());
          json j = json::parse(r.body, nullptr, false);
          if (r.status != 200 || j.is_discarded()) {
            errors[static_cast<size_t>(c)]++;
            continue;
          }
          tokens[static_cast<size_t>(c)] += j["usage"]["completion_tokens"].get<int64_t>();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t total_tokens = 0, total_errors = 0;
    for (int c = 0; c < clients; ++c) {
      total_tokens += tokens[static_cast<size_t>(c)];
      total_errors += errors[static_cast<size_t>(c)];
    }
    const int64_t requests = static_cast<int64_t>(clients) * per_client;
    results.push_back({{"concurrency", clients},
                       {"requests", requests},
                       {"errors", total_errors},
                       {"seconds", seconds},
                       {"requests_per_s", requests / seconds},
                       {"completion_tokens", total_tokens},
                       {"decode_tokens_per_s", total_tokens / seconds}});
  }
  scheduler.Shutdown();
  http.Stop();
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", json({{"model", model},
                              {"max_tokens", max_tokens},
                              {"engine_threads", absl::GetFlag(FLAGS_threads)},
                              {"scheduler", "serial (one request at a time)"},
                              {"levels", results}})
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf("model %s, %lld tokens per request, serial scheduler\n", model.c_str(),
              static_cast<long long>(max_tokens));
  std::printf("%11s %9s %7s %9s %12s %16s\n", "concurrency", "requests", "errors", "seconds",
              "requests/s", "decode tok/s");
  for (const json& r : results) {
    std::printf("%11d %9lld %7lld %9.2f %12.2f %16.1f\n", r["concurrency"].get<int>(),
                static_cast<long long>(r["requests"].get<int64_t>()),
                static_cast<long long>(r["errors"].get<int64_t>()), r["seconds"].get<double>(),
                r["requests_per_s"].get<double>(), r["decode_tokens_per_s"].get<double>());
  }
  return 0;
}
