// Kernel micro-benchmarks of kernels/cpu on this machine:
//
//   kernel_bench [--threads N] [--isa scalar|avx2|avx512] [--json]
//
// Prints the machine's measured memory bandwidth (read and STREAM triad,
// kernels/cpu/membw), its measured int8 peak (a vpdpbusd loop), then for each
// weight type the achieved GEMV bandwidth (1 token, a matrix larger than the
// caches: bytes of weights streamed per second) and GEMM throughput (64
// tokens: 2·rows·cols·tokens operations per second). Wall-clock numbers,
// best of several repetitions.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "model/ggml_types.h"

namespace moeflow {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Result {
  std::string type;
  double gemv_gbps = 0, gemm_gops = 0;
};

Result BenchType(GgmlType type, CpuIsa isa, ThreadPool* pool) {
  const int64_t cols = 2048;
  // ~100+ MB of weights for GEMV (past every cache).
  const int64_t row_bytes = RowBytes(type, cols).value();
  const int64_t rows = std::max<int64_t>(1408, (128LL << 20) / row_bytes / 8 * 8);
  std::vector<uint8_t> w(static_cast<size_t>(rows * row_bytes));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> src(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    if (r < 64) {
      for (float& v : src) v = dist(rng);
      (void)Quantize(type, src.data(), w.data() + r * row_bytes, cols);
    } else {
      std::memcpy(w.data() + r * row_bytes, w.data() + (r % 64) * row_bytes,
                  static_cast<size_t>(row_bytes));
    }
  }
  const int64_t tokens = 64;
  std::vector<float> x(static_cast<size_t>(tokens * cols));
  for (float& v : x) v = dist(rng);
  std::vector<uint8_t> act(static_cast<size_t>(tokens * ActivationRowBytes(type, cols)));
  QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
  std::vector<float> y(static_cast<size_t>(tokens * rows));
  Result res;
  res.type = std::string(Traits(type).name.data(), Traits(type).name.size());
  const MatmulWeight mw{type, w.data(), cols, rows, row_bytes};
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = Now();
    MatmulQuantized(mw, act.data(), 1, y.data(), rows, isa, pool);
    best = std::min(best, Now() - t0);
  }
  res.gemv_gbps = static_cast<double>(rows * row_bytes) / best / 1e9;
  // GEMM on an expert-sized slice (1408 rows) that stays in cache.
  const MatmulWeight slice = mw.Slice(0, 1408);
  best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = Now();
    MatmulQuantized(slice, act.data(), tokens, y.data(), 1408, isa, pool);
    best = std::min(best, Now() - t0);
  }
  res.gemm_gops = 2.0 * 1408 * cols * tokens / best / 1e9;
  return res;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) {
  int threads = 2;
  bool json = false;
  moeflow::CpuIsa isa = moeflow::SelectedIsa();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--isa" && i + 1 < argc) {
      const std::string v = argv[++i];
      isa = v == "scalar" ? moeflow::CpuIsa::kScalar
            : v == "avx2" ? moeflow::CpuIsa::kAvx2
                          : moeflow::CpuIsa::kAvx512;
      if (!moeflow::CpuSupportsIsa(isa)) isa = moeflow::SelectedIsa();
    } else {
      std::fprintf(stderr, "usage: kernel_bench [--threads N] [--isa NAME] [--json]\n");
      return 2;
    }
  }
  moeflow::ThreadPool pool(threads);
  const moeflow::MemoryBandwidth bw = moeflow::MeasureMemoryBandwidth(&pool);
  const double peak = moeflow::MeasureInt8PeakGops(&pool);
  const moeflow::GgmlType types[] = {moeflow::GgmlType::kQ4_K, moeflow::GgmlType::kQ6_K,
                                     moeflow::GgmlType::kQ5_0, moeflow::GgmlType::kQ8_0};
  std::vector<moeflow::Result> results;
  for (moeflow::GgmlType t : types) results.push_back(moeflow::BenchType(t, isa, &pool));
  if (json) {
    std::printf("{\"isa\": \"%s\", \"threads\": %d, \"read_gb_per_s\": %.2f, \"triad_gb_per_s\": %.2f, "
                "\"int8_peak_gops\": %.1f, \"kernels\": [",
                moeflow::CpuIsaName(isa), threads, bw.read_gbps, bw.triad_gbps, peak);
    for (size_t i = 0; i < results.size(); ++i) {
      std::printf("%s{\"type\": \"%s\", \"gemv_gb_per_s\": %.2f, \"gemm_gops\": %.1f}",
                  i ? ", " : "", results[i].type.c_str(), results[i].gemv_gbps,
                  results[i].gemm_gops);
    }
    std::printf("]}\n");
  } else {
    std::printf("isa %s, %d threads\n", moeflow::CpuIsaName(isa), threads);
    std::printf("memory bandwidth: read %.1f GB/s, triad %.1f GB/s; int8 peak (vpdpbusd) %.0f GOP/s\n",
                bw.read_gbps, bw.triad_gbps, peak);
    std::printf("%-6s %14s %10s %14s %10s\n", "type", "GEMV GB/s", "of read", "GEMM GOP/s",
                "of peak");
    for (const auto& r : results) {
      std::printf("%-6s %14.1f %9.0f%% %14.1f %9.0f%%\n", r.type.c_str(), r.gemv_gbps,
                  100 * r.gemv_gbps / bw.read_gbps, r.gemm_gops, 100 * r.gemm_gops / peak);
    }
  }
  return 0;
}
