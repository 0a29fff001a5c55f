#include "kernels/cpu/kernel_benchmarks.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>

#include "base/check.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best wall time of fn over up to `reps` timed runs after a warm-up; a run
// that alone takes max_seconds (the scalar variant) is kept as it is.
template <typename Fn>
double BestSeconds(const Fn& fn, int reps, double max_seconds) {
  double t0 = Now();
  fn();
  double best = Now() - t0;
  if (best >= max_seconds) return best;
  best = 1e30;
  const double start = Now();
  for (int i = 0; i < reps; ++i) {
    t0 = Now();
    fn();
    best = std::min(best, Now() - t0);
    if (Now() - start >= max_seconds) break;
  }
  return best;
}

// Whether `isa` has its own kernel for `type` rather than repeating one of
// `earlier`: a vec_dot of its own, or (amx) a GEMM of its own.
bool HasOwnKernel(CpuIsa isa, GgmlType type, const std::vector<CpuIsa>& earlier) {
  if (isa == CpuIsa::kAmx && type == GgmlType::kQ8_0) return true;
  const VecDotFn dot = GetVecDot(type, isa);
  for (CpuIsa e : earlier) {
    if (GetVecDot(type, e) == dot) return false;
  }
  return true;
}

std::vector<CpuIsa> AllSupportedIsas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512,
                     CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (CpuSupportsIsa(isa)) out.push_back(isa);
  }
  return out;
}

// n_experts matrices of rows × cols weights of `type`, back to back: 64
// random rows quantized, then repeated (quantizing hundreds of MiB would
// take longer than the benchmark).
std::vector<uint8_t> MakeExperts(GgmlType type, int64_t rows, int64_t cols, int64_t n_experts) {
  const int64_t row_bytes = RowBytes(type, cols).value();
  const int64_t total_rows = rows * n_experts;
  std::vector<uint8_t> w(static_cast<size_t>(total_rows * row_bytes));
  std::mt19937 rng(static_cast<uint32_t>(rows * 31 + cols));
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> src(static_cast<size_t>(cols));
  constexpr int64_t kDistinctRows = 64;
  for (int64_t r = 0; r < total_rows; ++r) {
    uint8_t* dst = w.data() + r * row_bytes;
    if (r < kDistinctRows) {
      for (float& v : src) v = dist(rng);
      MOEFLOW_CHECK(Quantize(type, src.data(), dst, cols).ok());
    } else {
      std::memcpy(dst, w.data() + (r % kDistinctRows) * row_bytes, static_cast<size_t>(row_bytes));
    }
  }
  return w;
}

}  // namespace

KernelBenchReport RunKernelBenchmarks(const KernelBenchOptions& options, ThreadPool* pool) {
  KernelBenchReport report;
  report.threads = pool == nullptr ? 1 : pool->size();
  report.gemm_tokens = options.gemm_tokens;
  if (options.measure_machine) {
    report.bandwidth = MeasureMemoryBandwidth(pool);
    report.int8_peak_gops = MeasureInt8PeakGops(pool);
  }
  const std::vector<CpuIsa> isas = options.isas.empty() ? AllSupportedIsas() : options.isas;
  int64_t max_tokens = 1;
  for (int64_t t : options.gemm_tokens) max_tokens = std::max(max_tokens, t);
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{1408, 2048}, {2048, 1408}};
  for (GgmlType type : options.types) {
    for (const Shape& shape : shapes) {
      if (!RowBytes(type, shape.cols).ok() || shape.cols % Traits(type).block_size != 0) continue;
      const int64_t row_bytes = RowBytes(type, shape.cols).value();
      const int64_t expert_bytes = shape.rows * row_bytes;
      const int64_t n_experts = std::max<int64_t>(1, (options.gemv_bytes + expert_bytes - 1) /
                                                         expert_bytes);
      const std::vector<uint8_t> weights = MakeExperts(type, shape.rows, shape.cols, n_experts);
      std::mt19937 rng(7);
      std::normal_distribution<float> dist(0.f, 1.f);
      std::vector<float> x(static_cast<size_t>(max_tokens * shape.cols));
      for (float& v : x) v = dist(rng);
      std::vector<uint8_t> act(
          static_cast<size_t>(max_tokens * ActivationRowBytes(type, shape.cols)));
      QuantizeActivations(type, x.data(), max_tokens, shape.cols, shape.cols, act.data());
      std::vector<float> y(static_cast<size_t>(std::max(max_tokens, n_experts) * shape.rows));
      std::vector<MatmulJob> jobs(static_cast<size_t>(n_experts));
      for (int64_t e = 0; e < n_experts; ++e) {
        jobs[static_cast<size_t>(e)] =
            MatmulJob{MatmulWeight{type, weights.data() + e * expert_bytes, shape.cols, shape.rows,
                                   row_bytes},
                      act.data(), 1, y.data() + e * shape.rows, shape.rows};
      }
      // The same experts repacked, for the ISAs whose engine repacks them
      // at load (made on first use).
      std::vector<uint8_t> repacked;
      std::vector<MatmulJob> repacked_jobs;
      std::vector<CpuIsa> timed;
      for (CpuIsa isa : isas) {
        if (!CpuSupportsIsa(isa) || !HasOwnKernel(isa, type, timed)) continue;
        timed.push_back(isa);
        const WeightLayout layout = PreferredLayout(type, shape.cols, isa);
        std::vector<MatmulJob>& jobs_isa = layout == WeightLayout::kGgml ? jobs : repacked_jobs;
        if (layout != WeightLayout::kGgml && repacked_jobs.empty()) {
          repacked.resize(weights.size());
          RepackRows(jobs[0].w, layout, weights.data(), repacked.data(), n_experts * shape.rows);
          repacked_jobs = jobs;
          for (int64_t e = 0; e < n_experts; ++e) {
            MatmulWeight& w = repacked_jobs[static_cast<size_t>(e)].w;
            w.data = repacked.data() + e * expert_bytes;
            w.layout = layout;
          }
        }
        KernelBenchRow row;
        row.type = type;
        row.isa = isa;
        row.layout = layout;
        row.rows = shape.rows;
        row.cols = shape.cols;
        // GEMV: every expert once, in batches of 16 matrices (a decode
        // step's few experts × gate/up/down: one pool synchronisation each).
        constexpr int64_t kBatch = 16;
        const double gemv_s = BestSeconds(
            [&] {
              for (int64_t e = 0; e < n_experts; e += kBatch) {
                MatmulQuantizedBatch(jobs_isa.data() + e, std::min(kBatch, n_experts - e), isa,
                                     pool);
              }
            },
            options.repetitions, options.max_seconds);
        row.gemv_gb_per_s = static_cast<double>(n_experts * expert_bytes) / gemv_s / 1e9;
        // Cached GEMV: the first expert again and again (in the caches after
        // the warm-up run).
        const double cached_s = BestSeconds(
            [&] { MatmulQuantized(jobs_isa[0].w, act.data(), 1, y.data(), shape.rows, isa, pool); },
            options.repetitions, options.max_seconds);
        row.gemv_cached_gb_per_s = static_cast<double>(expert_bytes) / cached_s / 1e9;
        // GEMM: one expert (cache-resident after the warm-up), T tokens.
        // Compute-bound, so a slow variant (scalar: seconds per call) is
        // timed on its first 64 rows instead of all of them.
        for (int64_t tokens : options.gemm_tokens) {
          MatmulWeight w = jobs_isa[0].w;
          const double t0 = Now();
          MatmulQuantized(w.Slice(0, std::min<int64_t>(64, w.rows)), act.data(), tokens, y.data(),
                          shape.rows, isa, pool);
          const double estimate = (Now() - t0) * static_cast<double>(w.rows) / 64;
          if (estimate > options.max_seconds) w = w.Slice(0, std::min<int64_t>(64, w.rows));
          const double s = BestSeconds(
              [&] { MatmulQuantized(w, act.data(), tokens, y.data(), shape.rows, isa, pool); },
              options.repetitions, options.max_seconds);
          row.gemm_gops.push_back(2.0 * static_cast<double>(w.rows * w.cols * tokens) / s / 1e9);
        }
        report.rows.push_back(std::move(row));
      }
    }
  }
  return report;
}

}  // namespace moeflow
