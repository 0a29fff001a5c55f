#include "engine/engine_profile.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "base/knobs.h"

namespace moeflow {
namespace {

constexpr int kPhases = static_cast<int>(EnginePhase::kCount);
const char* const kPhaseNames[kPhases] = {"forward (all)",  "attention",      "router",
                                          "routed experts", "shared experts", "dense ffn",
                                          "output head"};

// [0]: prefill, [1]: decode. Nanoseconds, so that fetch_add works on integers.
std::atomic<int64_t> g_ns[2][kPhases];
std::atomic<int64_t> g_calls[2];
std::atomic<int64_t> g_tokens[2];
std::atomic<bool> g_registered{false};

void PrintProfile() {
  for (int kind = 0; kind < 2; ++kind) {
    const int64_t calls = g_calls[kind].load();
    if (calls == 0) continue;
    const double total = static_cast<double>(g_ns[kind][0].load()) * 1e-9;
    std::fprintf(stderr, "\nMOEFLOW_PROFILE %s: %lld forward calls, %lld tokens, %.3f s\n",
                 kind == 0 ? "prefill" : "decode", static_cast<long long>(calls),
                 static_cast<long long>(g_tokens[kind].load()), total);
    std::fprintf(stderr, "  %-16s %10s %8s %12s\n", "phase", "seconds", "share", "ms / call");
    double parts = 0;
    for (int p = 1; p < kPhases; ++p) {
      const double s = static_cast<double>(g_ns[kind][p].load()) * 1e-9;
      parts += s;
      std::fprintf(stderr, "  %-16s %10.3f %7.1f%% %12.3f\n", kPhaseNames[p], s,
                   total > 0 ? 100 * s / total : 0.0, 1e3 * s / static_cast<double>(calls));
    }
    const double rest = total - parts;
    std::fprintf(stderr, "  %-16s %10.3f %7.1f%% %12.3f\n", "other (norms...)", rest,
                 total > 0 ? 100 * rest / total : 0.0, 1e3 * rest / static_cast<double>(calls));
  }
}

}  // namespace

bool EngineProfileEnabled() {
  static const bool enabled = KnobBool(Knob::kProfile);
  return enabled;
}

void EngineProfileAdd(EnginePhase phase, int64_t n_tokens, double seconds) {
  if (!g_registered.exchange(true)) std::atexit(PrintProfile);
  const int kind = n_tokens > 1 ? 0 : 1;
  g_ns[kind][static_cast<int>(phase)].fetch_add(static_cast<int64_t>(seconds * 1e9));
  if (phase == EnginePhase::kForward) {
    g_calls[kind].fetch_add(1);
    g_tokens[kind].fetch_add(n_tokens);
  }
}

}  // namespace moeflow
