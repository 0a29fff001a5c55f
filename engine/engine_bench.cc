// Prefill and decode speed of Deepseek2Engine on one model file:
//
//   engine_bench MODEL.gguf [--threads N] [--prompt 512] [--decode 32] [--json]
//
// Prefill: one Forward of a `prompt`-token batch from position 0 (logits of
// the last position only, as llama-bench's pp). Decode: `decode` single-token
// Forward calls after it (tg). Token ids are fixed pseudo-random ones. Prints
// a table, or one JSON object with --json. Wall-clock numbers; tests never
// assert on them.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "engine/engine.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  int threads = 2;
  int64_t prompt = 512, decode = 32;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--prompt" && i + 1 < argc) {
      prompt = std::atoll(argv[++i]);
    } else if (a == "--decode" && i + 1 < argc) {
      decode = std::atoll(argv[++i]);
    } else if (path.empty() && a.rfind("--", 0) != 0) {
      path = a;
    } else {
      std::fprintf(stderr, "engine_bench: unexpected argument %s\n", a.c_str());
      return 2;
    }
  }
  if (path.empty() || prompt < 1 || decode < 0 || threads < 1) {
    std::fprintf(stderr,
                 "usage: engine_bench MODEL.gguf [--threads N] [--prompt N] [--decode N] [--json]\n");
    return 2;
  }
  moeflow::Deepseek2EngineOptions options;
  options.n_threads = threads;
  options.max_batch = prompt;
  options.max_context = prompt + decode + 1;
  const auto t_open = std::chrono::steady_clock::now();
  auto engine = moeflow::Deepseek2Engine::Open(path, options);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  const auto t_opened = std::chrono::steady_clock::now();
  moeflow::Deepseek2Engine& e = **engine;
  const int64_t vocab = e.config().vocab_size;
  std::vector<int32_t> tokens(static_cast<size_t>(prompt));
  uint32_t state = 12345;
  for (int32_t& t : tokens) {
    state = state * 1664525u + 1013904223u;
    t = static_cast<int32_t>((state >> 8) % static_cast<uint32_t>(vocab));
  }
  std::vector<float> logits(static_cast<size_t>(vocab));
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status status = e.ForwardInto(tokens, 0, /*last_only=*/true, absl::MakeSpan(logits));
  const auto t1 = std::chrono::steady_clock::now();
  if (!status.ok()) {
    std::fprintf(stderr, "engine_bench: prefill: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  int32_t next = 0;
  for (int64_t i = 0; i < decode; ++i) {
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (logits[v] > logits[best]) best = v;
    }
    next = static_cast<int32_t>(best);
    status = e.ForwardInto({next}, prompt + i, /*last_only=*/true, absl::MakeSpan(logits));
    if (!status.ok()) {
      std::fprintf(stderr, "engine_bench: decode: %s\n", std::string(status.message()).c_str());
      return 1;
    }
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill_s = Seconds(t0, t1), decode_s = Seconds(t1, t2);
  const double prefill_tps = static_cast<double>(prompt) / prefill_s;
  const double decode_tps = decode > 0 ? static_cast<double>(decode) / decode_s : 0.0;
  const char* isa = moeflow::CpuIsaName(e.isa());
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"isa\": \"%s\", \"threads\": %d, \"open_s\": %.3f, "
        "\"prompt_tokens\": %lld, \"prefill_s\": %.3f, \"prefill_tok_per_s\": %.2f, "
        "\"decode_tokens\": %lld, \"decode_s\": %.3f, \"decode_tok_per_s\": %.2f}\n",
        path.c_str(), isa, threads, Seconds(t_open, t_opened), static_cast<long long>(prompt),
        prefill_s, prefill_tps, static_cast<long long>(decode), decode_s, decode_tps);
  } else {
    std::printf("model %s, isa %s, %d threads (open %.2f s)\n", path.c_str(), isa, threads,
                Seconds(t_open, t_opened));
    std::printf("%-10s %8s %10s %10s\n", "phase", "tokens", "seconds", "tok/s");
    std::printf("%-10s %8lld %10.3f %10.2f\n", "prefill", static_cast<long long>(prompt), prefill_s,
                prefill_tps);
    std::printf("%-10s %8lld %10.3f %10.2f\n", "decode", static_cast<long long>(decode), decode_s,
                decode_tps);
  }
  return 0;
}
