// Timings of the CUDA kernels on one device (the device kit's timing table,
// deploy/gpu-kit.sh):
//
//   cuda_kernel_bench [--contexts 1024,8192,32768] [--heads 128] [--seqs 1]
//                     [--reps 20] [--device 0] [--json]
//
// Prints the card (name, compute capability, memory), its memory bandwidth
// from the clock and bus width the driver reports and the bandwidth a
// device-to-device copy reaches (bytes read + written per second), then:
//   - MLA decode over the paged bf16 cache (DeepSeek-V3's kv_lora 512 +
//     rope 64, --heads heads, --seqs sequences) at each context: the split-K
//     decode kernel (splits as MlaDecodeSplitsFor) and the chunked-prefill
//     kernel run on one token (what the gpu_worker's decode step uses now),
//     in µs per call and cache bytes read per second;
//   - the weight-only GEMV (1 token) on DeepSeek-V3's dense FFN shapes
//     (7168 -> 18432 and 18432 -> 7168) from Q4_K (int4) and Q8_0 (int8):
//     µs, weight bytes streamed per second and that as a share of the copy
//     bandwidth.
// Each time is the median of --reps calls timed with CUDA events after three
// warm-up calls. Weights are quantized from 64 random rows repeated (the
// values do not change the time). Without a usable device it prints the
// reason (JSON: "skipped") and exits 0: the kit's dry run calls it so.
// --json prints one JSON object instead of the table.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/quants.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/weight_only_gemm.h"
#include "kernels/cuda/weight_repack.h"

namespace moeflow::cuda {
namespace {

struct Options {
  std::vector<int64_t> contexts = {1024, 8192, 32768};
  int heads = 128;
  int seqs = 1;
  int reps = 20;
  int device = 0;
  bool json = false;
};

constexpr char kUsage[] =
    "usage: cuda_kernel_bench [--contexts 1024,8192,32768] [--heads 128] [--seqs 1] "
    "[--reps 20] [--device 0] [--json]\n";

// Parses argv into `o`; an error names the flag and the value.
absl::Status ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      o->json = true;
      continue;
    }
    if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(arg, ": needs a value"));
    const std::string value = argv[++i];
    auto positive = [&](int* out, int max) -> absl::Status {
      if (!absl::SimpleAtoi(value, out) || *out < 1 || *out > max) {
        return absl::InvalidArgumentError(
            absl::StrCat(arg, " ", value, ": must be an integer in [1, ", max, "]"));
      }
      return absl::OkStatus();
    };
    absl::Status s;
    if (arg == "--contexts") {
      o->contexts.clear();
      for (absl::string_view p : absl::StrSplit(value, ',')) {
        int64_t v = 0;
        if (!absl::SimpleAtoi(p, &v) || v < 1 || v > (1 << 20)) {
          return absl::InvalidArgumentError(
              absl::StrCat("--contexts: '", p, "' must be an integer in [1, 1048576]"));
        }
        o->contexts.push_back(v);
      }
    } else if (arg == "--heads") {
      s = positive(&o->heads, 128);
    } else if (arg == "--seqs") {
      s = positive(&o->seqs, 64);
    } else if (arg == "--reps") {
      s = positive(&o->reps, 10000);
    } else if (arg == "--device") {
      if (!absl::SimpleAtoi(value, &o->device) || o->device < 0) {
        return absl::InvalidArgumentError(absl::StrCat("--device ", value, ": must be >= 0"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

bool Ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "cuda_kernel_bench: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

// Median µs of `reps` calls of `f` (after 3 warm-up calls), timed with events.
double MedianMicros(int reps, const std::function<absl::Status()>& f) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) {
    if (absl::Status s = f(); !s.ok()) {
      std::fprintf(stderr, "cuda_kernel_bench: %s\n", std::string(s.message()).c_str());
      return -1;
    }
  }
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    (void)f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    us.push_back(ms * 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (!Ok(cudaGetLastError(), "timed calls")) return -1;
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0, sms = 0;
  double mem_gib = 0, peak_gbps = 0, copy_gbps = 0;
};

DeviceInfo Describe(int device, int reps) {
  DeviceInfo d;
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, device);
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sms = p.multiProcessorCount;
  d.mem_gib = static_cast<double>(p.totalGlobalMem) / (1 << 30);
  int clock_khz = 0, bus_bits = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  d.peak_gbps = 2.0 * clock_khz * 1e3 * (bus_bits / 8) / 1e9;  // double data rate
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  if (Ok(cudaMalloc(&src, bytes), "cudaMalloc") && Ok(cudaMalloc(&dst, bytes), "cudaMalloc")) {
    cudaMemset(src, 1, bytes);
    const double us = MedianMicros(std::max(3, reps / 4), [&] {
      return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice) == cudaSuccess
                 ? absl::OkStatus()
                 : absl::InternalError("cudaMemcpyAsync");
    });
    if (us > 0) d.copy_gbps = 2.0 * bytes / (us * 1e-6) / 1e9;
  }
  cudaFree(src);
  cudaFree(dst);
  return d;
}

struct MlaRow {
  int64_t context = 0;
  int splits = 0;
  double decode_us = 0, decode_gbps = 0, prefill1_us = 0, prefill1_gbps = 0;
};

MlaRow BenchMla(const Options& o, int64_t context) {
  MlaRow row;
  row.context = context;
  const int kv_lora = 512, rope = 64, row_dim = kv_lora + rope, page_tokens = 64;
  const int max_pages = static_cast<int>((context + page_tokens - 1) / page_tokens);
  const int64_t slots = static_cast<int64_t>(o.seqs) * max_pages * page_tokens;
  std::vector<uint16_t> pool(static_cast<size_t>(slots * row_dim));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-2, 2);
  for (size_t i = 0; i < std::min<size_t>(pool.size(), 1 << 20); ++i)
    pool[i] = Fp32ToBf16(dist(rng));
  for (size_t i = 1 << 20; i < pool.size(); ++i) pool[i] = pool[i % (1 << 20)];
  std::vector<int32_t> table(static_cast<size_t>(o.seqs) * max_pages);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int32_t> lens(o.seqs, static_cast<int32_t>(context));
  std::vector<float> q(static_cast<size_t>(o.seqs) * o.heads * row_dim);
  for (float& v : q) v = dist(rng) * 0.1f;
  row.splits = MlaDecodeSplitsFor(context);
  uint16_t* dpool = nullptr;
  int32_t *dtable = nullptr, *dlens = nullptr;
  float *dq = nullptr, *dout = nullptr, *work = nullptr;
  const int64_t work_floats = MlaDecodeWorkspaceFloats(o.seqs, o.heads, row.splits, kv_lora);
  if (!Ok(cudaMalloc(&dpool, pool.size() * 2), "cudaMalloc") ||
      !Ok(cudaMalloc(&dtable, table.size() * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&dlens, lens.size() * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&dq, q.size() * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&dout, static_cast<size_t>(o.seqs) * o.heads * kv_lora * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&work, work_floats * 4), "cudaMalloc")) {
    return row;
  }
  cudaMemcpy(dpool, pool.data(), pool.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dtable, table.data(), table.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dlens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice);
  const MlaDeviceParams params{o.heads, kv_lora, rope, page_tokens, max_pages, 0.07f};
  const double cache_bytes = static_cast<double>(o.seqs) * context * row_dim * 2;
  MlaDecodeArguments d;
  d.params = params;
  d.q = dq;
  d.cache = dpool;
  d.page_table = dtable;
  d.seq_lens = dlens;
  d.out = dout;
  d.n_seqs = o.seqs;
  d.n_splits = row.splits;
  d.workspace = work;
  row.decode_us = MedianMicros(o.reps, [&] { return RunMlaDecode(d); });
  if (row.decode_us > 0) row.decode_gbps = cache_bytes / (row.decode_us * 1e-6) / 1e9;
  // The prefill kernel on one token of sequence 0 (its last position).
  MlaPrefillArguments p;
  p.params = params;
  p.q = dq;
  p.cache = dpool;
  p.page_table = dtable;
  p.start_pos = context - 1;
  p.n_tokens = 1;
  p.out = dout;
  row.prefill1_us = MedianMicros(o.reps, [&] { return RunMlaPrefill(p); });
  if (row.prefill1_us > 0) {
    row.prefill1_gbps = cache_bytes / o.seqs / (row.prefill1_us * 1e-6) / 1e9;
  }
  for (void* ptr :
       {static_cast<void*>(dpool), static_cast<void*>(dtable), static_cast<void*>(dlens),
        static_cast<void*>(dq), static_cast<void*>(dout), static_cast<void*>(work)}) {
    cudaFree(ptr);
  }
  return row;
}

struct GemvRow {
  std::string type, kind;
  int64_t rows = 0, cols = 0, bytes = 0;
  double us = 0, gbps = 0;
};

GemvRow BenchGemv(const Options& o, GgmlType type, int64_t rows, int64_t cols) {
  GemvRow row;
  row.type = std::string(Traits(type).name);
  row.rows = rows;
  row.cols = cols;
  const int64_t row_bytes = RowBytes(type, cols).value();
  std::vector<uint8_t> blocks(static_cast<size_t>(rows * row_bytes));
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.f, 0.5f);
  std::vector<float> src(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    if (r < 64) {
      for (float& v : src) v = dist(rng);
      (void)Quantize(type, src.data(), blocks.data() + r * row_bytes, cols);
    } else {
      std::memcpy(blocks.data() + r * row_bytes, blocks.data() + (r % 64) * row_bytes,
                  static_cast<size_t>(row_bytes));
    }
  }
  auto m = RepackForGpu(type, blocks.data(), rows, cols);
  if (!m.ok()) {
    std::fprintf(stderr, "cuda_kernel_bench: %s\n", std::string(m.status().message()).c_str());
    return row;
  }
  row.kind = m->kind == RepackedKind::kInt4 ? "int4" : "int8";
  row.bytes = static_cast<int64_t>(m->qs.size() + m->scales.size() * 2 + m->sub.size());
  auto dm = DeviceRepackedMatrix::Upload(*m);
  if (!dm.ok()) {
    std::fprintf(stderr, "cuda_kernel_bench: %s\n", std::string(dm.status().message()).c_str());
    return row;
  }
  std::vector<float> x(static_cast<size_t>(cols));
  for (float& v : x) v = dist(rng);
  float *dx = nullptr, *dy = nullptr;
  if (!Ok(cudaMalloc(&dx, x.size() * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&dy, rows * 4), "cudaMalloc")) {
    return row;
  }
  cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  WeightOnlyGemmArguments a;
  a.device.w = dm->view();
  a.device.n_out = rows;
  a.device.n_tokens = 1;
  a.device.x = dx;
  a.device.x_stride = cols;
  a.device.y = dy;
  a.device.y_stride = rows;
  row.us = MedianMicros(o.reps, [&] { return RunWeightOnlyGemm(a); });
  if (row.us > 0) row.gbps = row.bytes / (row.us * 1e-6) / 1e9;
  cudaFree(dx);
  cudaFree(dy);
  return row;
}

int Main(int argc, char** argv) {
  Options o;
  if (absl::Status s = ParseArgs(argc, argv, &o); !s.ok()) {
    std::fprintf(stderr, "cuda_kernel_bench: %s\n%s", std::string(s.message()).c_str(), kUsage);
    return 2;
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  std::string reason;
  if (err != cudaSuccess) {
    reason = absl::StrCat("no CUDA device: ", cudaGetErrorString(err));
  } else if (count <= o.device) {
    reason = absl::StrCat("no CUDA device ", o.device, " (", count, " found)");
  }
  if (!reason.empty()) {
    if (o.json) {
      std::printf("{\"skipped\": \"%s\"}\n", reason.c_str());
    } else {
      std::printf("cuda_kernel_bench: skipped: %s\n", reason.c_str());
    }
    return 0;
  }
  if (!Ok(cudaSetDevice(o.device), "cudaSetDevice")) return 1;
  const DeviceInfo dev = Describe(o.device, o.reps);
  std::vector<MlaRow> mla;
  for (int64_t ctx : o.contexts) mla.push_back(BenchMla(o, ctx));
  std::vector<GemvRow> gemv;
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ8_0}) {
    gemv.push_back(BenchGemv(o, type, 18432, 7168));  // dense gate / up
    gemv.push_back(BenchGemv(o, type, 7168, 18432));  // dense down
  }
  const double ref_gbps = dev.copy_gbps > 0 ? dev.copy_gbps : dev.peak_gbps;
  if (o.json) {
    std::vector<std::string> m, g;
    for (const MlaRow& r : mla) {
      m.push_back(absl::StrFormat(
          "{\"context\": %d, \"heads\": %d, \"seqs\": %d, \"splits\": %d, \"decode_us\": %.2f, "
          "\"decode_cache_gbps\": %.1f, \"prefill_kernel_1token_us\": %.2f, "
          "\"prefill_kernel_1token_cache_gbps\": %.1f}",
          r.context, o.heads, o.seqs, r.splits, r.decode_us, r.decode_gbps, r.prefill1_us,
          r.prefill1_gbps));
    }
    for (const GemvRow& r : gemv) {
      g.push_back(absl::StrFormat(
          "{\"type\": \"%s\", \"kind\": \"%s\", \"rows\": %d, \"cols\": %d, \"weight_bytes\": %d, "
          "\"us\": %.2f, \"gbps\": %.1f, \"of_copy_bandwidth\": %.3f}",
          r.type, r.kind, r.rows, r.cols, r.bytes, r.us, r.gbps,
          ref_gbps > 0 ? r.gbps / ref_gbps : 0));
    }
    absl::PrintF(
        "{\"device\": {\"name\": \"%s\", \"compute_capability\": \"%d.%d\", \"sms\": %d, "
        "\"memory_gib\": %.1f, \"peak_gbps\": %.1f, \"copy_gbps\": %.1f}, \"reps\": %d, "
        "\"mla_decode\": [%s], \"gemv\": [%s]}\n",
        dev.name, dev.cc_major, dev.cc_minor, dev.sms, dev.mem_gib, dev.peak_gbps, dev.copy_gbps,
        o.reps, absl::StrJoin(m, ", "), absl::StrJoin(g, ", "));
    return 0;
  }
  std::printf(
      "%s: compute capability %d.%d, %d SMs, %.1f GiB, memory %.0f GB/s (clock x bus), "
      "device copy %.0f GB/s\n\n",
      dev.name.c_str(), dev.cc_major, dev.cc_minor, dev.sms, dev.mem_gib, dev.peak_gbps,
      dev.copy_gbps);
  std::printf("MLA decode, %d heads, kv_lora 512 + rope 64, %d sequence(s), median of %d\n",
              o.heads, o.seqs, o.reps);
  std::printf("%8s %6s %12s %12s %16s %16s\n", "context", "splits", "decode us", "cache GB/s",
              "prefill(1) us", "cache GB/s");
  for (const MlaRow& r : mla) {
    std::printf("%8lld %6d %12.1f %12.1f %16.1f %16.1f\n", static_cast<long long>(r.context),
                r.splits, r.decode_us, r.decode_gbps, r.prefill1_us, r.prefill1_gbps);
  }
  std::printf("\nweight-only GEMV, 1 token\n%6s %5s %7s %7s %10s %10s %10s %8s\n", "type", "kind",
              "rows", "cols", "MiB", "us", "GB/s", "of copy");
  for (const GemvRow& r : gemv) {
    std::printf("%6s %5s %7lld %7lld %10.1f %10.1f %10.1f %8.2f\n", r.type.c_str(), r.kind.c_str(),
                static_cast<long long>(r.rows), static_cast<long long>(r.cols), r.bytes / 1048576.0,
                r.us, r.gbps, ref_gbps > 0 ? r.gbps / ref_gbps : 0);
  }
  return 0;
}

}  // namespace
}  // namespace moeflow::cuda

int main(int argc, char** argv) { return moeflow::cuda::Main(argc, argv); }
