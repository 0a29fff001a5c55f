// Kernel micro-benchmarks of kernels/cpu on this machine:
//
//   kernel_bench [--threads N] [--isa scalar|avx2|avx512f|avx512] [--tokens 64]
//                [--gemv-mib 128] [--types q4_K,q6_K,q5_0,q8_0] [--quick]
//                [--no-repack] [--json]
//
// Prints the machine's measured memory bandwidth (read and STREAM triad,
// kernels/cpu/membw), its measured int8 peak (a vpdpbusd loop), then for each
// weight type the achieved GEMV bandwidth (1 token, a matrix larger than the
// caches: bytes of weights streamed per second; --gemv-mib sets its size, and
// a small one such as 2 keeps it in the caches, timing the kernel's own
// decode rate instead of the memory's) and GEMM throughput (64
// tokens by default, --tokens N: 2·rows·cols·tokens operations per second).
// --types picks the weight types (ggml names, comma-separated; default the
// four of a Q4_K_M / Q8_0 file; any type with 256- or 32-value blocks).
// --quick skips the bandwidth and peak measurements (for tuning the tiles).
// Weights are timed in the layout the engine repacks them into on this ISA
// (matmul.h: PreferredLayout; the type shows it, e.g. q5_0/q5_0_pairs);
// --no-repack times the GGUF blocks as they are.
// Then the fused MoE operator (kernels/cpu/moe) on one v2-lite-shaped
// layer: 512 tokens (prefill) and 1 token (decode); and the absorbed MLA
// attention kernel at context 4096 (BenchAttention). Wall-clock numbers,
// best of several repetitions.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/moe.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "absl/strings/str_split.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Result {
  std::string type;
  double gemv_gbps = 0, gemm_gops = 0;
};

Result BenchType(GgmlType type, bool repack, CpuIsa isa, int64_t tokens, int64_t gemv_mib,
                 ThreadPool* pool) {
  const int64_t cols = 2048;
  // gemv_mib of weights for GEMV (default 128: past every cache), at least
  // one expert matrix.
  const int64_t row_bytes = RowBytes(type, cols).value();
  const int64_t rows = std::max<int64_t>(1408, (gemv_mib << 20) / row_bytes / 16 * 16);  // whole panels
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
  std::vector<float> x(static_cast<size_t>(tokens * cols));
  for (float& v : x) v = dist(rng);
  std::vector<uint8_t> act(static_cast<size_t>(tokens * ActivationRowBytes(type, cols)));
  QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
  std::vector<float> y(static_cast<size_t>(tokens * rows));
  Result res;
  res.type = std::string(Traits(type).name.data(), Traits(type).name.size());
  MatmulWeight mw{type, w.data(), cols, rows, row_bytes};
  // The layout the engine repacks these weights into at load time on `isa`.
  const WeightLayout layout = repack ? PreferredLayout(type, cols, isa) : WeightLayout::kGgml;
  if (layout != WeightLayout::kGgml) {
    RepackRows(mw, layout, w.data(), w.data(), rows);
    mw.layout = layout;
    res.type += std::string("/") + WeightLayoutName(layout);
  }
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
  for (int rep = 0; rep < 7; ++rep) {
    const double t0 = Now();
    MatmulQuantized(slice, act.data(), tokens, y.data(), 1408, isa, pool);
    best = std::min(best, Now() - t0);
  }
  res.gemm_gops = 2.0 * 1408 * cols * tokens / best / 1e9;
  return res;
}

// The fused MoE operator on one v2-lite-shaped layer (64 experts, hidden
// 2048, expert ff 1408, top-6; Q4_K gate/up and Q5_0 down, as a Q4_K_M file
// has them) for `tokens` tokens with random routes: GOP/s counted as
// 2 · 3 · hidden · ff per (token, slot) pair, best of several calls.
struct MoeResult {
  double prefill_gops = 0, prefill_ms = 0, decode_ms = 0;
};

MoeResult BenchMoe(bool repack, CpuIsa isa, int64_t tokens, ThreadPool* pool) {
  const int64_t n_experts = 64, hidden = 2048, ff = 1408, k = 6;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.f, 0.05f);
  auto matrix = [&](GgmlType type, int64_t rows, int64_t cols, std::vector<uint8_t>* bytes) {
    const int64_t row_bytes = RowBytes(type, cols).value();
    bytes->resize(static_cast<size_t>(rows * row_bytes));
    std::vector<float> src(static_cast<size_t>(cols));
    // 64 distinct random rows, repeated (quantizing 200k rows would dominate).
    for (int64_t r = 0; r < rows; ++r) {
      if (r < 64) {
        for (float& v : src) v = dist(rng);
        (void)Quantize(type, src.data(), bytes->data() + r * row_bytes, cols);
      } else {
        std::memcpy(bytes->data() + r * row_bytes, bytes->data() + (r % 64) * row_bytes,
                    static_cast<size_t>(row_bytes));
      }
    }
    MatmulWeight w{type, bytes->data(), cols, rows, row_bytes};
    const WeightLayout layout = repack ? PreferredLayout(type, cols, isa) : WeightLayout::kGgml;
    if (layout != WeightLayout::kGgml) {
      RepackRows(w, layout, bytes->data(), bytes->data(), rows);
      w.layout = layout;
    }
    return w;
  };
  std::vector<uint8_t> gb, ub, db;
  const MoeExperts experts{matrix(GgmlType::kQ4_K, n_experts * ff, hidden, &gb),
                           matrix(GgmlType::kQ4_K, n_experts * ff, hidden, &ub),
                           matrix(GgmlType::kQ5_0, n_experts * hidden, ff, &db),
                           n_experts,
                           ff,
                           hidden};
  std::vector<float> x(static_cast<size_t>(tokens * hidden)), out(x.size());
  std::normal_distribution<float> xd(0.f, 1.f);
  for (float& v : x) v = xd(rng);
  std::vector<int32_t> ids;
  std::vector<float> weights;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> all(static_cast<size_t>(n_experts));
    for (int64_t e = 0; e < n_experts; ++e) all[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t j = 0; j < k; ++j) {
      ids.push_back(all[static_cast<size_t>(j)]);
      weights.push_back(1.f / k);
    }
  }
  MoeScratch scratch;
  MoeResult res;
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    const double t0 = Now();
    MoeForward(experts, x.data(), tokens, ids.data(), weights.data(), k, out.data(), scratch, isa,
               pool);
    best = std::min(best, Now() - t0);
  }
  res.prefill_ms = 1e3 * best;
  res.prefill_gops = 2.0 * 3 * hidden * ff * tokens * k / best / 1e9;
  best = 1e30;
  for (int rep = 0; rep < 20; ++rep) {
    const double t0 = Now();
    MoeForward(experts, x.data() + (rep % tokens) * hidden, 1, ids.data() + (rep % tokens) * k,
               weights.data(), k, out.data(), scratch, isa, pool);
    best = std::min(best, Now() - t0);
  }
  res.decode_ms = 1e3 * best;
  return res;
}

// Absorbed MLA attention (kernels/cpu/attention.h) in DeepSeek's shape, one
// thread as the engine runs each unit: a prefill unit of 4 tokens × 16
// heads at context 4096 (the last chunk of a 4096-token prompt) and a decode
// unit of 1 token × 8 heads over 4096 rows. GFLOP/s counts 2 · (row_dim +
// v_dim) per (token, head, row) pair.
struct AttentionResult {
  double prefill_gflops = 0, decode_gflops = 0;
};

AttentionResult BenchAttention(CpuIsa isa) {
  constexpr int64_t kRowDim = 576, kVDim = 512, kCtx = 4096;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> kv(static_cast<size_t>(kCtx * kRowDim));
  for (float& v : kv) v = dist(rng);
  std::vector<const float*> rows(static_cast<size_t>(kCtx));
  for (int64_t j = 0; j < kCtx; ++j) rows[static_cast<size_t>(j)] = kv.data() + j * kRowDim;
  auto run = [&](int64_t heads, int64_t n_tok) {
    std::vector<float> q(static_cast<size_t>(n_tok * heads * kRowDim));
    for (float& v : q) v = 0.05f * dist(rng);
    std::vector<float> scores(static_cast<size_t>(n_tok * heads * kCtx));
    std::vector<float> out(static_cast<size_t>(n_tok * heads * kVDim));
    MlaTokensArgs a;
    a.shape = {heads, kRowDim, kVDim, 0.07f};
    a.q = q.data();
    a.q_stride = kRowDim;
    a.n_tok = n_tok;
    a.rows = rows.data();
    a.first_seen = kCtx - n_tok + 1;
    a.scores = scores.data();
    a.out = out.data();
    a.out_stride = kVDim;
    double pairs = 0;
    for (int64_t i = 0; i < n_tok; ++i) pairs += static_cast<double>(heads * (a.first_seen + i));
    double best = 1e30;
    for (int rep = 0; rep < 6; ++rep) {
      const double t0 = Now();
      MlaAttentionTokens(a, isa);
      best = std::min(best, Now() - t0);
    }
    return 2.0 * (kRowDim + kVDim) * pairs / best / 1e9;
  };
  AttentionResult r;
  r.prefill_gflops = run(16, 4);
  r.decode_gflops = run(8, 1);
  return r;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) {
  int threads = 2;
  int64_t tokens = 64;
  int64_t gemv_mib = 128;
  bool json = false, quick = false, repack = true;
  moeflow::CpuIsa isa = moeflow::SelectedIsa();
  std::vector<moeflow::GgmlType> types = {moeflow::GgmlType::kQ4_K, moeflow::GgmlType::kQ6_K,
                                          moeflow::GgmlType::kQ5_0, moeflow::GgmlType::kQ8_0};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--no-repack") {
      repack = false;
    } else if (a == "--tokens" && i + 1 < argc) {
      tokens = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else if (a == "--gemv-mib" && i + 1 < argc) {
      const std::string v = argv[++i];
      char* end = nullptr;
      gemv_mib = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || gemv_mib < 1 || gemv_mib > 65536) {
        std::fprintf(stderr,
                     "kernel_bench: --gemv-mib: '%s' is not a whole number of MiB in "
                     "[1, 65536]\n",
                     v.c_str());
        return 2;
      }
    } else if (a == "--types" && i + 1 < argc) {
      types.clear();
      for (absl::string_view name : absl::StrSplit(argv[++i], ',')) {
        const auto type = moeflow::ParseGgmlType(name);
        if (!type.ok() || moeflow::Traits(*type).block_size < 32) {
          std::fprintf(stderr, "kernel_bench: --types: '%.*s' is not a quantized ggml type\n",
                       static_cast<int>(name.size()), name.data());
          return 2;
        }
        types.push_back(*type);
      }
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--isa" && i + 1 < argc) {
      const std::string v = argv[++i];
      isa = v == "scalar"    ? moeflow::CpuIsa::kScalar
            : v == "avx2"    ? moeflow::CpuIsa::kAvx2
            : v == "avx512f" ? moeflow::CpuIsa::kAvx512NoVnni
                             : moeflow::CpuIsa::kAvx512;
      if (!moeflow::CpuSupportsIsa(isa)) isa = moeflow::SelectedIsa();
    } else {
      std::fprintf(stderr,
                   "usage: kernel_bench [--threads N] [--isa NAME] [--tokens N] [--gemv-mib N] "
                   "[--types T1,T2] [--quick] [--no-repack] [--json]\n");
      return 2;
    }
  }
  moeflow::ThreadPool pool(threads);
  moeflow::MemoryBandwidth bw;
  bw.read_gbps = bw.triad_gbps = 0;
  double peak = 0;
  if (!quick) {
    bw = moeflow::MeasureMemoryBandwidth(&pool);
    peak = moeflow::MeasureInt8PeakGops(&pool);
  }
  std::vector<moeflow::Result> results;
  for (moeflow::GgmlType t : types)
    results.push_back(moeflow::BenchType(t, repack, isa, tokens, gemv_mib, &pool));
  const int64_t moe_tokens = 512;
  const moeflow::MoeResult moe = moeflow::BenchMoe(repack, isa, moe_tokens, &pool);
  const moeflow::AttentionResult attn = moeflow::BenchAttention(isa);
  if (json) {
    std::printf("{\"isa\": \"%s\", \"threads\": %d, \"read_gb_per_s\": %.2f, \"triad_gb_per_s\": %.2f, "
                "\"int8_peak_gops\": %.1f, \"kernels\": [",
                moeflow::CpuIsaName(isa), threads, bw.read_gbps, bw.triad_gbps, peak);
    for (size_t i = 0; i < results.size(); ++i) {
      std::printf("%s{\"type\": \"%s\", \"gemv_gb_per_s\": %.2f, \"gemm_gops\": %.1f}",
                  i ? ", " : "", results[i].type.c_str(), results[i].gemv_gbps,
                  results[i].gemm_gops);
    }
    std::printf("], \"moe_prefill_tokens\": %lld, \"moe_prefill_gops\": %.1f, "
                "\"moe_prefill_ms\": %.2f, \"moe_decode_ms\": %.3f, "
                "\"attention_prefill_gflops\": %.1f, \"attention_decode_gflops\": %.1f}\n",
                static_cast<long long>(moe_tokens), moe.prefill_gops, moe.prefill_ms,
                moe.decode_ms, attn.prefill_gflops, attn.decode_gflops);
  } else {
    std::printf("isa %s, %d threads\n", moeflow::CpuIsaName(isa), threads);
    std::printf("memory bandwidth: read %.1f GB/s, triad %.1f GB/s; int8 peak (vpdpbusd) %.0f GOP/s\n",
                bw.read_gbps, bw.triad_gbps, peak);
    std::printf("%-15s %14s %10s %14s %10s\n", "type", "GEMV GB/s", "of read", "GEMM GOP/s",
                "of peak");
    for (const auto& r : results) {
      std::printf("%-15s %14.1f %9.0f%% %14.1f %9.0f%%\n", r.type.c_str(), r.gemv_gbps,
                  bw.read_gbps > 0 ? 100 * r.gemv_gbps / bw.read_gbps : 0.0, r.gemm_gops,
                  peak > 0 ? 100 * r.gemm_gops / peak : 0.0);
    }
    std::printf("fused MoE layer (64 experts, top-6, Q4_K gate/up, Q5_0 down): %lld tokens "
                "%.1f ms = %.1f GOP/s; 1 token %.3f ms\n",
                static_cast<long long>(moe_tokens), moe.prefill_ms, moe.prefill_gops,
                moe.decode_ms);
    std::printf("MLA attention (576-float rows, one thread): 4 tokens x 16 heads at context "
                "4096 %.1f GFLOP/s; 1 token x 8 heads %.1f GFLOP/s\n",
                attn.prefill_gflops, attn.decode_gflops);
  }
  return 0;
}
