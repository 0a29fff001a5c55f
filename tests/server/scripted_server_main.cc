// The API of `moeflow serve` on a ScriptedModel (scripted_model.h), for
// client tests that need deterministic output a random model cannot give
// (tool calls, reasoning). Usage: scripted_server TOKENIZER.gguf SCRIPT
// Listens on a free 127.0.0.1 port, prints "listening on http://127.0.0.1:P"
// on stderr, and exits on SIGTERM/SIGINT or after 300 s.
#include <signal.h>

#include <cstdio>
#include <ctime>
#include <memory>

#include "model/gguf.h"
#include "server/batching_scheduler.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "tests/server/scripted_model.h"
#include "tokenizer/bpe_tokenizer.h"

int main(int argc, char** argv) {
  using namespace moeflow;
  using namespace moeflow::server;
  if (argc != 3) {
    std::fprintf(stderr, "usage: scripted_server TOKENIZER.gguf SCRIPT\n");
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  auto file = GgufFile::Open(argv[1]);
  if (!file.ok()) return 1;
  auto tokenizer = BpeTokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return 1;
  const char* tool_script =
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
      "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  ScriptedModel model(tokenizer->get(), argv[2], tool_script, 4096);
  ServerMetrics metrics;
  BatchingSchedulerOptions options;
  options.max_running = 1;  // one request at a time, in arrival order
  BatchingScheduler scheduler(&model, options, &metrics);
  ApiOptions api_options;
  api_options.model_name = "scripted";
  OpenAiApi api(api_options, tokenizer->get(), &scheduler, &metrics);
  HttpServer http({}, [&api](const HttpRequest& r, std::shared_ptr<HttpResponder> w) {
    api.Handle(r, std::move(w));
  });
  if (!http.Start().ok()) return 1;
  std::fprintf(stderr, "listening on http://127.0.0.1:%d\n", http.port());
  std::fflush(stderr);
  timespec timeout{300, 0};
  sigtimedwait(&signals, nullptr, &timeout);
  scheduler.Shutdown();
  http.Stop();
  return 0;
}
