// Decode speed of Deepseek2Engine::ForwardBatch with N sequences decoding
// side by side (continuous batching without the HTTP stack):
//
//   batch_decode_bench MODEL.gguf [--threads 2] [--batches 1,4,8,16]
//                      [--prompt 32] [--decode 16] [--rounds 2] [--json]
//
// For each N: N sequences are started and prefilled (one batch of N prompts
// of `prompt` pseudo-random tokens), then `decode` steps each feed one token
// to every sequence; aggregate decode tok/s = N · decode / time of the
// steps. The levels are measured `rounds` times, interleaved (1,4,8,16,1,...)
// so that load from elsewhere on a shared machine spreads over all of them;
// the best round of each level is reported. Prints a table, or JSON with
// --json. Wall-clock numbers; tests never assert on them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  while (*s) {
    out.push_back(std::atoi(s));
    while (*s && *s != ',') ++s;
    if (*s == ',') ++s;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using moeflow::Deepseek2Engine;
  std::string path;
  int threads = 2, prompt = 32, decode = 16, rounds = 2;
  std::vector<int> batches = {1, 4, 8, 16};
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--threads") {
      threads = std::atoi(next());
    } else if (a == "--batches") {
      batches = ParseList(next());
    } else if (a == "--prompt") {
      prompt = std::atoi(next());
    } else if (a == "--decode") {
      decode = std::atoi(next());
    } else if (a == "--rounds") {
      rounds = std::atoi(next());
    } else if (a == "--json") {
      json = true;
    } else if (path.empty() && a[0] != '-') {
      path = a;
    } else {
      std::fprintf(stderr, "batch_decode_bench: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (path.empty() || threads < 1 || prompt < 1 || decode < 1 || rounds < 1 || batches.empty()) {
    std::fprintf(stderr,
                 "usage: batch_decode_bench MODEL.gguf [--threads 2] [--batches 1,4,8,16] "
                 "[--prompt 32] [--decode 16] [--rounds 2] [--json]\n");
    return 2;
  }
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  moeflow::Deepseek2EngineOptions options;
  options.n_threads = threads;
  options.max_context = prompt + decode + 1;
  options.kv_pool_tokens = static_cast<int64_t>(max_batch) * (prompt + decode + 16);
  auto engine_or = Deepseek2Engine::Open(path, options);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "batch_decode_bench: %s\n",
                 std::string(engine_or.status().message()).c_str());
    return 1;
  }
  Deepseek2Engine& engine = **engine_or;
  const int64_t vocab = engine.config().vocab_size;
  std::vector<double> best(batches.size(), 0.0);
  uint32_t seed = 12345;
  auto token = [&] {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(vocab));
  };
  for (int round = 0; round < rounds; ++round) {
    for (size_t b = 0; b < batches.size(); ++b) {
      const int n = batches[b];
      std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(n));
      std::vector<int64_t> ids;
      std::vector<Deepseek2Engine::BatchEntry> entries;
      for (int s = 0; s < n; ++s) {
        for (int t = 0; t < prompt; ++t) prompts[static_cast<size_t>(s)].push_back(token());
        auto started = engine.StartSequence(prompts[static_cast<size_t>(s)], prompt + decode);
        if (!started.ok()) {
          std::fprintf(stderr, "batch_decode_bench: %s\n",
                       std::string(started.status().message()).c_str());
          return 1;
        }
        ids.push_back(started->sequence);
        entries.push_back({started->sequence, prompts[static_cast<size_t>(s)], 0});
      }
      std::vector<float> logits(static_cast<size_t>(n * vocab));
      if (!engine.ForwardBatch(entries, absl::MakeSpan(logits)).ok()) return 1;
      std::vector<int32_t> next(static_cast<size_t>(n));
      const double t0 = Now();
      for (int step = 0; step < decode; ++step) {
        for (int s = 0; s < n; ++s) {
          next[static_cast<size_t>(s)] = token();
          entries[static_cast<size_t>(s)] = {ids[static_cast<size_t>(s)],
                                             absl::MakeConstSpan(&next[static_cast<size_t>(s)], 1),
                                             prompt + step};
        }
        if (!engine.ForwardBatch(entries, absl::MakeSpan(logits)).ok()) return 1;
      }
      const double tps = static_cast<double>(n) * decode / (Now() - t0);
      best[b] = std::max(best[b], tps);
      for (int64_t id : ids) (void)engine.EndSequence(id);
    }
  }
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"threads\": %d, \"prompt\": %d, \"decode\": %d, "
        "\"rounds\": %d, \"isa\": \"%s\", \"levels\": [",
        path.c_str(), threads, prompt, decode, rounds, moeflow::CpuIsaName(engine.isa()));
    for (size_t b = 0; b < batches.size(); ++b) {
      std::printf("%s{\"sequences\": %d, \"decode_tokens_per_s\": %.2f, \"vs_one\": %.2f}",
                  b ? ", " : "", batches[b], best[b], best[b] / best[0]);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf("model %s, %d threads, %s, prompt %d, %d decode steps, best of %d rounds\n",
              path.c_str(), threads, moeflow::CpuIsaName(engine.isa()), prompt, decode, rounds);
  std::printf("%10s %18s %12s\n", "sequences", "decode tok/s", "vs first");
  for (size_t b = 0; b < batches.size(); ++b) {
    std::printf("%10d %18.1f %11.2fx\n", batches[b], best[b], best[b] / best[0]);
  }
  return 0;
}
