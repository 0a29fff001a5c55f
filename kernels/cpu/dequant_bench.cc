// dequant_bench: throughput of the scalar reference Dequantize per ggml type.
//
// For each type a buffer of about --mb MB of quantized blocks (random Gaussian
// weights quantized once, then tiled) is dequantized front to back into a
// 256 KB float scratch that stays in cache, the way a loader or kernel
// dequantizes row by row. Input streams from memory; reported are GB/s of
// quantized input and GFloat/s of output, best of --reps passes.
//
// Usage: dequant_bench [--json] [--mb=64] [--reps=5] [--types=q8_0,q4_K,...]
// Prints a table; with --json, one JSON line instead.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "base/check.h"
#include "kernels/cpu/quants.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

struct Options {
  bool json = false;
  int64_t mb = 64;
  int reps = 5;
  std::vector<std::string> types = {"f32",  "f16",  "bf16", "q4_0",   "q4_1",
                                    "q5_0", "q5_1", "q8_0", "q2_K",   "q3_K",
                                    "q4_K", "q5_K", "q6_K", "iq4_xs", "q8_K"};
};

struct Result {
  std::string type;
  int64_t input_bytes = 0;
  double seconds = 0;  // best pass
  double gb_per_s = 0;
  double gfloat_per_s = 0;
};

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      o->json = true;
    } else if (a.rfind("--mb=", 0) == 0) {
      o->mb = std::atoll(a.c_str() + 5);
    } else if (a.rfind("--reps=", 0) == 0) {
      o->reps = std::atoi(a.c_str() + 7);
    } else if (a.rfind("--types=", 0) == 0) {
      o->types = absl::StrSplit(a.substr(8), ',', absl::SkipEmpty());
    } else {
      std::fprintf(stderr,
                   "usage: dequant_bench [--json] [--mb=64] [--reps=5] [--types=q8_0,q4_K,...]\n");
      return false;
    }
  }
  return o->mb > 0 && o->reps > 0;
}

Result Measure(GgmlType type, const Options& o) {
  const GgmlTypeTraits& t = Traits(type);
  // One tile of 64K elements (a multiple of every block size), tiled to ~mb MB.
  constexpr int64_t kTileElements = 65536;
  const int64_t tile_bytes = *RowBytes(type, kTileElements);
  std::vector<float> weights(kTileElements);
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.04f);
  for (float& w : weights) w = normal(rng);
  std::vector<uint8_t> tile(tile_bytes);
  if (CanQuantize(type)) {
    MOEFLOW_CHECK_OK(Quantize(type, weights.data(), tile.data(), kTileElements));
  } else {
    // IQ4_XS has no quantizer here: random nibbles and scales, d = 0.001
    // (its fp16 d leads every block).
    for (uint8_t& b : tile) b = static_cast<uint8_t>(rng());
    const uint16_t d = Fp32ToFp16(0.001f);
    for (int64_t off = 0; off < tile_bytes; off += t.type_size) std::memcpy(&tile[off], &d, 2);
  }
  const int64_t n_tiles = std::max<int64_t>(1, (o.mb << 20) / tile_bytes);
  std::vector<uint8_t> input(n_tiles * tile_bytes);
  for (int64_t i = 0; i < n_tiles; ++i) {
    std::memcpy(input.data() + i * tile_bytes, tile.data(), tile_bytes);
  }
  std::vector<float> scratch(kTileElements);
  double best = 1e30;
  double checksum = 0;
  for (int rep = 0; rep < o.reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < n_tiles; ++i) {
      MOEFLOW_CHECK_OK(
          Dequantize(type, input.data() + i * tile_bytes, scratch.data(), kTileElements));
      checksum += scratch[i % kTileElements];  // keeps the work observable
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, s);
  }
  if (!std::isfinite(checksum)) std::fprintf(stderr, "(checksum %g)\n", checksum);
  Result r;
  r.type = std::string(t.name);
  r.input_bytes = static_cast<int64_t>(input.size());
  r.seconds = best;
  r.gb_per_s = static_cast<double>(input.size()) / best / 1e9;
  r.gfloat_per_s = static_cast<double>(n_tiles * kTileElements) / best / 1e9;
  return r;
}

int Main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, &o)) return 2;
  std::vector<Result> results;
  for (const std::string& name : o.types) {
    const auto type = ParseGgmlType(name);
    if (!type.ok() || !CanDequantize(*type)) {
      std::fprintf(stderr, "dequant_bench: cannot bench type '%s'\n", name.c_str());
      return 2;
    }
    results.push_back(Measure(*type, o));
  }
  if (o.json) {
    std::printf(
        "{\"bench\":\"dequant\",\"impl\":\"scalar_reference\",\"buffer_mb\":%lld,\"reps\":%d,"
        "\"results\":[",
        static_cast<long long>(o.mb), o.reps);
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::printf(
          "%s{\"type\":\"%s\",\"input_bytes\":%lld,\"seconds\":%.6f,\"gb_per_s\":%.3f,"
          "\"gfloat_per_s\":%.3f}",
          i ? "," : "", r.type.c_str(), static_cast<long long>(r.input_bytes), r.seconds,
          r.gb_per_s, r.gfloat_per_s);
    }
    std::printf("]}\n");
  } else {
    std::printf("dequantize (scalar reference), ~%lld MB input per type, best of %d\n",
                static_cast<long long>(o.mb), o.reps);
    std::printf("%-8s %12s %10s %12s %12s\n", "type", "input MB", "ms", "GB/s in", "GFloat/s");
    for (const Result& r : results) {
      std::printf("%-8s %12.1f %10.2f %12.2f %12.2f\n", r.type.c_str(), r.input_bytes / 1048576.0,
                  r.seconds * 1e3, r.gb_per_s, r.gfloat_per_s);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) { return moeflow::Main(argc, argv); }
