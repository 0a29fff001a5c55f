// Kernel micro-benchmarks of kernels/cpu on DeepSeek-V2-Lite expert shapes,
// for `moeflow bench --kernels`: per weight type and ISA variant, the GEMV
// (decode: 1 token) bandwidth achieved while streaming many experts' weights
// from memory and over one expert held in the caches, and the GEMM (prefill: 64 and 512 tokens on
// one expert) int8 throughput — next to this machine's measured memory bandwidth and int8 peak
// (kernels/cpu/membw), the two ceilings they are bound by.
//
// Shapes are (rows × cols) of one expert matrix: 1408 × 2048 (ffn_gate /
// ffn_up: 1408 outputs over the 2048-wide hidden state) and 2048 × 1408
// (ffn_down). K-quants need cols % 256 == 0, so Q4_K / Q6_K have no
// 2048 × 1408 entry (GGUF files fall back to another type there).
//
// Thread-safety: uses the given pool (one owner at a time). Takes tens of
// seconds with the scalar variant included. Failure: none (buffers come from
// the heap; allocation failure aborts).
#ifndef MOEFLOW_KERNELS_CPU_KERNEL_BENCHMARKS_H_
#define MOEFLOW_KERNELS_CPU_KERNEL_BENCHMARKS_H_

#include <cstdint>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace moeflow {

struct KernelBenchOptions {
  // Variants to time; empty: every variant this CPU runs. A variant is only
  // timed for the types where it has its own kernel (a vec_dot no earlier
  // variant in the list uses, or amx's Q8_0 GEMM): avx512bf16 only for
  // BF16 (every other type runs avx512's kernels), a variant listed twice
  // once. avx2 / avx512 have BF16 kernels of their own (BF16 widened to F32).
  std::vector<CpuIsa> isas;
  std::vector<GgmlType> types = {GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ5_0, GgmlType::kQ8_0,
                                 GgmlType::kBF16};
  // GEMV: experts are cycled through until this many weight bytes have been
  // allocated, so the stream does not come from the caches.
  int64_t gemv_bytes = int64_t{256} << 20;
  std::vector<int64_t> gemm_tokens = {64, 512};
  // Timed runs per measurement (best kept), after one warm-up; a
  // measurement stops early once it has run for max_seconds.
  int repetitions = 5;
  double max_seconds = 1.0;
  bool measure_machine = true;  // bandwidth and int8 peak (~0.5 s)
};

struct KernelBenchRow {
  GgmlType type = GgmlType::kF32;
  CpuIsa isa = CpuIsa::kScalar;
  // The layout the engine repacks these weights into on `isa` (matmul.h:
  // PreferredLayout), which is what was timed.
  WeightLayout layout = WeightLayout::kGgml;
  int64_t rows = 0, cols = 0;
  double gemv_gb_per_s = 0;              // weight bytes streamed per second, 1 token
  // The same GEMV over one expert matrix that stays in the caches: the
  // kernel's own decode rate. Below the memory bandwidth means the streamed
  // GEMV is bound by compute, not by memory.
  double gemv_cached_gb_per_s = 0;
  std::vector<double> gemm_gops;         // 2·rows·cols·tokens / s, per options.gemm_tokens
};

struct KernelBenchReport {
  int threads = 1;
  MemoryBandwidth bandwidth;   // zero unless measure_machine
  double int8_peak_gops = 0;   // vpdpbusd loop; 0 without AVX-512 VNNI or measure_machine
  std::vector<int64_t> gemm_tokens;
  std::vector<KernelBenchRow> rows;
};

KernelBenchReport RunKernelBenchmarks(const KernelBenchOptions& options, ThreadPool* pool);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_KERNEL_BENCHMARKS_H_
