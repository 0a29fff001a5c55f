// Serving throughput of the whole HTTP stack (HttpServer + OpenAiApi +
// scheduler + engine) on one model: aggregate decode tokens/s with 1, 4, 8
// and 16 concurrent streaming requests, and the savings of prefix reuse.
//
//   serve_bench --model=FILE.gguf [--scheduler=batching|serial --max_tokens=32
//               --requests_per_client=2 --concurrency=1,4,8,16 --threads=2
//               --parallel=16 --max_batch_tokens=512 --chunk_size=256
//               --prefix_tokens=1000 --prefix_clients=8 --json]
//
// The server runs in-process on a free 127.0.0.1 port. Each client thread
// sends streaming greedy completion requests (ignore_eos, so every request
// generates max_tokens) one after the other, and timestamps the SSE events.
// Per level:
//   e2e tok/s     completion tokens of all requests / wall time of the level
//                 (prefill and queueing included, as clients see it);
//   decode tok/s  tokens after each request's first / (last token of the
//                 level − first token of the level): the aggregate rate
//                 once requests decode (after the first prefill);
//   TTFT          mean time to first token.
// Prefix reuse (--prefix_tokens > 0): --prefix_clients concurrent requests
// (a burst, nothing cached before) with the same system prompt of about that
// many tokens and different questions; again with prompts of the same
// length whose first block differs per request (nothing to reuse). Reports
// prefill tokens computed (prompt − cached) and mean TTFT.
// Prints a table, or JSON with --json.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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
#include "server/batching_scheduler.h"
#include "server/engine_batch_model.h"
#include "server/engine_sequence_model.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "tests/server/http_test_client.h"

ABSL_FLAG(std::string, model, "", "GGUF model to serve");
ABSL_FLAG(std::string, scheduler, "batching", "batching or serial");
ABSL_FLAG(int64_t, max_tokens, 32, "completion tokens per request");
ABSL_FLAG(int32_t, requests_per_client, 2, "requests each client sends at each level");
ABSL_FLAG(std::string, concurrency, "1,4,8,16", "concurrent clients per level");
ABSL_FLAG(int32_t, threads, 2, "engine compute threads");
ABSL_FLAG(int32_t, parallel, 16, "batching: requests generating at once");
ABSL_FLAG(int64_t, max_batch_tokens, 512, "batching: tokens per forward pass");
ABSL_FLAG(int64_t, chunk_size, 256, "batching: largest prefill chunk per request and step");
ABSL_FLAG(int64_t, context, 2048, "positions per request");
ABSL_FLAG(int64_t, prefix_tokens, 1000, "shared system prompt length for the reuse test (0: skip)");
ABSL_FLAG(int32_t, prefix_clients, 8, "concurrent requests in the reuse test");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");

namespace {

using json = nlohmann::json;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct StreamResult {
  bool ok = false;
  int64_t completion_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  double start = 0, first = 0, last = 0;
};

// POSTs a streaming /v1/completions request and timestamps its events.
StreamResult StreamCompletion(int port, const std::string& prompt, int64_t max_tokens) {
  using namespace moeflow::server::testing;
  StreamResult r;
  const json body = {{"model", "bench"},
                     {"prompt", prompt},
                     {"max_tokens", max_tokens},
                     {"temperature", 0},
                     {"ignore_eos", true},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  r.start = Now();
  const int fd = ConnectLocal(port);
  if (fd < 0) return r;
  WriteAll(fd, PostRequest("/v1/completions", body.dump()));
  std::string buffer;
  size_t scanned = 0;
  bool done = false;
  char chunk[65536];
  while (!done) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    const double t = Now();
    buffer.append(chunk, static_cast<size_t>(n));
    size_t eol;
    while ((eol = buffer.find('\n', scanned)) != std::string::npos) {
      const std::string line = buffer.substr(scanned, eol - scanned);
      scanned = eol + 1;
      if (line.rfind("data: ", 0) != 0) continue;
      if (line == "data: [DONE]") {
        done = true;
        break;
      }
      json j = json::parse(line.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("choices") && !j["choices"].empty() &&
          !j["choices"][0].value("text", std::string()).empty()) {
        if (r.first == 0) r.first = t;
        r.last = t;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        r.completion_tokens = j["usage"].value("completion_tokens", int64_t{0});
        r.prompt_tokens = j["usage"].value("prompt_tokens", int64_t{0});
        if (j["usage"].contains("prompt_tokens_details")) {
          r.cached_tokens = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t{0});
        }
        r.ok = true;
      }
    }
  }
  close(fd);
  r.ok = r.ok && done && r.first > 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeflow;
  using namespace moeflow::server;
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    std::fprintf(stderr, "serve_bench: --model is required\n");
    return 2;
  }
  const std::string scheduler_kind = absl::GetFlag(FLAGS_scheduler);
  if (scheduler_kind != "batching" && scheduler_kind != "serial") {
    std::fprintf(stderr, "serve_bench: --scheduler must be batching or serial\n");
    return 2;
  }
  const bool batching = scheduler_kind == "batching";
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_concurrency), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1) {
      std::fprintf(stderr, "serve_bench: bad --concurrency\n");
      return 2;
    }
    levels.push_back(n);
  }
  const int32_t parallel = absl::GetFlag(FLAGS_parallel);
  const int64_t context = absl::GetFlag(FLAGS_context);
  TextGeneratorOptions options;
  options.engine.n_threads = absl::GetFlag(FLAGS_threads);
  options.context_tokens = context;
  if (batching) options.engine.kv_pool_tokens = (parallel + 1) * context;
  auto generator = TextGenerator::Open(model, options);
  if (!generator.ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", std::string(generator.status().message()).c_str());
    return 1;
  }
  ServerMetrics metrics;
  std::unique_ptr<SequenceModel> sequence_model;
  std::unique_ptr<BatchModel> batch_model;
  std::unique_ptr<GenerationBackend> scheduler;
  if (batching) {
    batch_model = std::make_unique<EngineBatchModel>(generator->get());
    BatchingSchedulerOptions o;
    o.max_queue = 1024;
    o.max_running = parallel;
    o.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
    o.chunk_tokens = absl::GetFlag(FLAGS_chunk_size);
    scheduler = std::make_unique<BatchingScheduler>(batch_model.get(), o, &metrics);
  } else {
    sequence_model = std::make_unique<EngineSequenceModel>(generator->get());
    SerialSchedulerOptions o;
    o.max_queue = 1024;
    scheduler = std::make_unique<SerialScheduler>(sequence_model.get(), o, &metrics);
  }
  ApiOptions api_options;
  api_options.model_name = "bench";
  api_options.log_requests = false;
  api_options.chat_template = (*generator)->chat_template();
  OpenAiApi api(api_options, &(*generator)->tokenizer(), scheduler.get(), &metrics);
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
    std::vector<std::vector<StreamResult>> got(static_cast<size_t>(clients));
    const double start = Now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        for (int i = 0; i < per_client; ++i) {
          got[static_cast<size_t>(c)].push_back(StreamCompletion(
              port, absl::StrCat("Client ", c, " request ", i, ": write about the sea."),
              max_tokens));
        }
      });
    }
    for (std::thread& t : threads) t.join();
    const double seconds = Now() - start;
    int64_t tokens = 0, errors = 0, n_ok = 0, decoded = 0;
    double ttft_sum = 0, first_token = 0, last_token = 0;
    for (const auto& client : got) {
      for (const StreamResult& r : client) {
        if (!r.ok) {
          ++errors;
          continue;
        }
        ++n_ok;
        tokens += r.completion_tokens;
        decoded += r.completion_tokens - 1;
        ttft_sum += r.first - r.start;
        if (first_token == 0 || r.first < first_token) first_token = r.first;
        last_token = std::max(last_token, r.last);
      }
    }
    const double decode_span = last_token - first_token;
    results.push_back({{"concurrency", clients},
                       {"requests", static_cast<int64_t>(clients) * per_client},
                       {"errors", errors},
                       {"seconds", seconds},
                       {"completion_tokens", tokens},
                       {"e2e_tokens_per_s", tokens / seconds},
                       {"decode_tokens_per_s", decode_span > 0 ? decoded / decode_span : 0.0},
                       {"mean_ttft_s", n_ok > 0 ? ttft_sum / n_ok : 0.0}});
  }

  json prefix = nullptr;
  const int64_t prefix_tokens = absl::GetFlag(FLAGS_prefix_tokens);
  const int prefix_clients = absl::GetFlag(FLAGS_prefix_clients);
  if (prefix_tokens > 0) {
    // About one token per word of this text with the DeepSeek tokenizer.
    std::string system;
    for (int64_t i = 0; static_cast<int64_t>(
                            (*generator)->tokenizer().Encode(system, false).size()) < prefix_tokens;
         ++i) {
      absl::StrAppend(&system, "Rule ", i, ": keep answers short and precise. ");
    }
    auto run = [&](bool shared) {
      // Without sharing, each request's first block differs.
      auto prompt = [&](int c) {
        return shared ? absl::StrCat(system, "Question ", c, ": why is the sea blue?")
                      : absl::StrCat("Client ", c, ". ", system, "Question ", c,
                                     ": why is the sea blue?");
      };
      std::vector<StreamResult> res(static_cast<size_t>(prefix_clients));
      std::vector<std::thread> threads;
      const double start = Now();
      for (int c = 0; c < prefix_clients; ++c) {
        threads.emplace_back(
            [&, c] { res[static_cast<size_t>(c)] = StreamCompletion(port, prompt(c), 8); });
      }
      for (std::thread& t : threads) t.join();
      const double seconds = Now() - start;
      int64_t prompt_sum = 0, cached = 0, errors = 0;
      double ttft = 0;
      for (const StreamResult& r : res) {
        if (!r.ok) ++errors;
        prompt_sum += r.prompt_tokens;
        cached += r.cached_tokens;
        ttft += r.first - r.start;
      }
      return json{{"shared_prefix", shared},
                  {"requests", prefix_clients},
                  {"errors", errors},
                  {"prompt_tokens", prompt_sum},
                  {"cached_tokens", cached},
                  {"prefill_tokens_computed", prompt_sum - cached},
                  {"mean_ttft_s", ttft / prefix_clients},
                  {"seconds", seconds}};
    };
    prefix = json::array({run(false), run(true)});
  }
  scheduler->Shutdown();
  http.Stop();

  const std::string scheduling =
      batching ? absl::StrCat("batching (", parallel, " at once, ",
                              absl::GetFlag(FLAGS_max_batch_tokens), " tokens per step)")
               : std::string("serial (one request at a time)");
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", json({{"model", model},
                              {"max_tokens", max_tokens},
                              {"engine_threads", absl::GetFlag(FLAGS_threads)},
                              {"scheduler", scheduling},
                              {"levels", results},
                              {"prefix_reuse", prefix}})
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf("model %s, %lld tokens per request, %s\n", model.c_str(),
              static_cast<long long>(max_tokens), scheduling.c_str());
  std::printf("%11s %9s %7s %9s %12s %14s %10s\n", "concurrency", "requests", "errors", "seconds",
              "e2e tok/s", "decode tok/s", "TTFT s");
  for (const json& r : results) {
    std::printf("%11d %9lld %7lld %9.2f %12.1f %14.1f %10.3f\n", r["concurrency"].get<int>(),
                static_cast<long long>(r["requests"].get<int64_t>()),
                static_cast<long long>(r["errors"].get<int64_t>()), r["seconds"].get<double>(),
                r["e2e_tokens_per_s"].get<double>(), r["decode_tokens_per_s"].get<double>(),
                r["mean_ttft_s"].get<double>());
  }
  if (!prefix.is_null()) {
    std::printf("\nprefix reuse: a burst of %d concurrent requests\n", prefix_clients);
    std::printf("%14s %14s %14s %18s %12s %9s\n", "shared prefix", "prompt tok", "cached tok",
                "prefill computed", "mean TTFT s", "seconds");
    for (const json& r : prefix) {
      std::printf("%14s %14lld %14lld %18lld %12.3f %9.2f\n",
                  r["shared_prefix"].get<bool>() ? "yes" : "no",
                  static_cast<long long>(r["prompt_tokens"].get<int64_t>()),
                  static_cast<long long>(r["cached_tokens"].get<int64_t>()),
                  static_cast<long long>(r["prefill_tokens_computed"].get<int64_t>()),
                  r["mean_ttft_s"].get<double>(), r["seconds"].get<double>());
    }
  }
  return 0;
}
