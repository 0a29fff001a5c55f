// Serving throughput of a running server's whole HTTP stack — `moeflow
// serve` or `moeflow launch` with an http_address, the same API over the
// same scheduler — on one model: aggregate decode tokens/s with 1, 4, 8 and
// 16 concurrent streaming requests, and the savings of prefix reuse.
//
//   serve_bench --port=8080 [--max_tokens=32 --requests_per_client=2
//               --concurrency=1,4,8,16 --prefix_tokens=1000 --prefix_clients=8
//               --label=NAME --json]
//
// The server (on 127.0.0.1:PORT) should run with --parallel at least the
// largest concurrency; the model id comes from its /v1/models. Each client thread
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
#include "nlohmann/json.hpp"
#include "tests/server/http_test_client.h"

ABSL_FLAG(int32_t, port, 8080, "the server's port on 127.0.0.1");
ABSL_FLAG(std::string, label, "", "what the server is, for the table and JSON (e.g. launch)");
ABSL_FLAG(int64_t, max_tokens, 32, "completion tokens per request");
ABSL_FLAG(int32_t, requests_per_client, 2, "requests each client sends at each level");
ABSL_FLAG(std::string, concurrency, "1,4,8,16", "concurrent clients per level");
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
StreamResult StreamCompletion(int port, const std::string& model, const std::string& prompt,
                              int64_t max_tokens) {
  using namespace moeflow::server::testing;
  StreamResult r;
  const json body = {{"model", model},
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
  const int port = absl::GetFlag(FLAGS_port);
  testing::ReadTimeoutSeconds() = 600;
  // The served model's id.
  const testing::ParsedResponse models = testing::Get(port, "/v1/models");
  const json listed = json::parse(models.body, nullptr, false);
  if (models.status != 200 || listed.is_discarded() || !listed.contains("data") ||
      listed["data"].empty()) {
    std::fprintf(stderr, "serve_bench: no model at http://127.0.0.1:%d/v1/models (status %d)\n",
                 port, models.status);
    return 1;
  }
  const std::string model = listed["data"][0].value("id", std::string());
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_concurrency), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1) {
      std::fprintf(stderr, "serve_bench: bad --concurrency\n");
      return 2;
    }
    levels.push_back(n);
  }
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
              port, model, absl::StrCat("Client ", c, " request ", i, ": write about the sea."),
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
    // About 10 tokens per rule with the DeepSeek tokenizer (the table
    // reports the prompt tokens the server counted).
    std::string system;
    for (int64_t i = 0; i < prefix_tokens / 10; ++i) {
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
            [&, c] { res[static_cast<size_t>(c)] = StreamCompletion(port, model, prompt(c), 8); });
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
  const std::string scheduling = absl::GetFlag(FLAGS_label);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", json({{"model", model},
                              {"max_tokens", max_tokens},
                              {"port", port},
                              {"label", scheduling},
                              {"levels", results},
                              {"prefix_reuse", prefix}})
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf("%s model %s on port %d, %lld tokens per request\n", scheduling.c_str(),
              model.c_str(), port, static_cast<long long>(max_tokens));
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
