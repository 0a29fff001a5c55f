// `moeflow bench`: prefill and decode speed of the engine (the dataflow over
// the single-process topology, coordinator/local_topology.h) on one model
// file, like llama-bench:
//
//   moeflow bench -m F.gguf -p 512 -n 128 [-d 0] -r 5 -t 2 [--active-experts K] [--json]
//
// Each repetition times a prompt of p tokens from an empty cache (prefill:
// p / time to the first token's logits) and, separately, n single-token
// decode steps from an empty cache (decode: n / time), as llama-bench's pp
// and tg tests do; with -d D both start after D cached tokens, prefilled
// untimed before each repetition (llama-bench -d); one untimed warm-up run
// comes first. Prompts go in steps of at most kPrefillTokenChunk tokens. Token ids are fixed
// pseudo-random ones. Reports mean ± sd tokens/s over the repetitions, the
// peak RSS of the process, the memory bandwidth measured just before and just
// after the decode runs (kernels/cpu/membw) and the decode "floor": bytes of
// weights one decode token must stream (every matrix but the embedding, the
// routed experts at K / n_experts of their size) divided by that bandwidth.
//
//   moeflow bench --kernels [-t 2] [--kernel-isas avx512,amx] [--json]
//
// runs the kernel micro-benchmarks instead (no model): GEMV GB/s and GEMM
// GOP/s per weight type and ISA variant on expert shapes, next to the
// measured memory bandwidth and int8 peak (kernels/cpu/kernel_benchmarks).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/check.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"
#include "kernels/cpu/kernel_benchmarks.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/thread_pool.h"
#include "model/gguf.h"

ABSL_DECLARE_FLAG(bool, json);
ABSL_FLAG(int64_t, prompt_tokens, 512, "prefill test: prompt length in tokens (0: skip)");
ABSL_FLAG(int64_t, p, -1, "short for --prompt-tokens");
ABSL_FLAG(int64_t, gen_tokens, 128, "decode test: tokens generated one at a time (0: skip)");
ABSL_FLAG(int64_t, depth, 0,
          "both tests start after this many cached tokens (prefilled untimed before each "
          "repetition), as llama-bench -d");
ABSL_FLAG(int64_t, d, -1, "short for --depth");
ABSL_FLAG(int64_t, n, -1, "short for --gen-tokens");
ABSL_FLAG(int32_t, repetitions, 5, "timed repetitions of each test (after one warm-up)");
ABSL_FLAG(int32_t, r, -1, "short for --repetitions");
ABSL_FLAG(int32_t, t, -1, "short for --threads");
ABSL_FLAG(std::string, m, "", "short for --model");
ABSL_FLAG(bool, kernels, false,
          "bench: run the kernel micro-benchmarks (GEMV GB/s, GEMM GOP/s per ISA variant) "
          "instead of a model");
ABSL_FLAG(std::string, kernel_isas, "",
          "bench --kernels: comma-separated variants to time (scalar, avx2, avx512f, avx512, "
          "avx512bf16, amx); empty: every variant this CPU runs");

namespace moeflow {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stats {
  double mean = 0, sd = 0;
};

Stats MeanSd(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return s;
}

// Measures bandwidth in a forked child so that its 448 MiB of buffers do not
// count in this process's peak RSS (which is reported against the model
// size). Falls back to measuring in-process if the fork fails.
MemoryBandwidth MeasureBandwidthInChild(int threads) {
  int fds[2];
  if (pipe(fds) != 0) {
    ThreadPool pool(threads);
    return MeasureMemoryBandwidth(&pool);
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    ThreadPool pool(threads);
    const MemoryBandwidth bw = MeasureMemoryBandwidth(&pool);
    const ssize_t n = write(fds[1], &bw, sizeof(bw));
    _exit(n == static_cast<ssize_t>(sizeof(bw)) ? 0 : 1);
  }
  close(fds[1]);
  MemoryBandwidth bw;
  bool ok = false;
  if (pid > 0) {
    ok = read(fds[0], &bw, sizeof(bw)) == static_cast<ssize_t>(sizeof(bw));
    int status = 0;
    waitpid(pid, &status, 0);
  }
  close(fds[0]);
  if (!ok) {
    ThreadPool pool(threads);
    return MeasureMemoryBandwidth(&pool);
  }
  return bw;
}

// llama-bench's test names: pp512, tg128, "tg128 @ d4096".
std::string TestName(const char* kind, int64_t tokens, int64_t depth) {
  std::string name = absl::StrCat(kind, tokens);
  if (depth > 0) absl::StrAppend(&name, " @ d", depth);
  return name;
}

int64_t PeakRssBytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

// Weight bytes one decode token reads: every matrix but token_embd (one row
// is gathered), the routed experts' tensors at k / n_experts.
double DecodeBytesPerToken(const GgufFile& file, const Deepseek2Config& c, int64_t k) {
  double bytes = 0;
  for (const GgufTensorInfo& t : file.tensors()) {
    if (t.name == "token_embd.weight") continue;
    if (absl::StrContains(t.name, "_exps.")) {
      bytes += static_cast<double>(t.n_bytes) * static_cast<double>(k) /
               static_cast<double>(c.n_experts);
    } else {
      bytes += static_cast<double>(t.n_bytes);
    }
  }
  return bytes;
}

// `moeflow bench --kernels`.
int RunKernelBench(int threads, bool json) {
  KernelBenchOptions options;
  const std::string wanted = absl::GetFlag(FLAGS_kernel_isas);
  if (!wanted.empty()) {
    for (absl::string_view name : absl::StrSplit(wanted, ',', absl::SkipEmpty())) {
      bool found = false;
      for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512,
                         CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
        if (name != CpuIsaName(isa)) continue;
        found = true;
        if (CpuSupportsIsa(isa)) {
          options.isas.push_back(isa);
        } else {
          std::fprintf(stderr, "moeflow bench: this CPU cannot run %s; skipping it\n",
                       CpuIsaName(isa));
        }
      }
      if (!found) {
        std::fprintf(stderr,
                     "moeflow bench: --kernel-isas: unknown variant \"%s\" (scalar, avx2, avx512f, "
                     "avx512, avx512bf16, amx)\n",
                     std::string(name).c_str());
        return kExitUsage;
      }
    }
    if (options.isas.empty()) {
      std::fprintf(stderr, "moeflow bench: --kernel-isas: none of \"%s\" runs on this CPU\n",
                   wanted.c_str());
      return kExitUsage;
    }
  }
  ThreadPool pool(threads);
  const KernelBenchReport r = RunKernelBenchmarks(options, &pool);
  auto type_name = [](GgmlType t) {
    return std::string(Traits(t).name.data(), Traits(t).name.size());
  };
  // Integer-dot types are compared with the int8 peak; BF16 is not.
  auto int8_type = [](GgmlType t) { return t != GgmlType::kBF16 && t != GgmlType::kF16; };
  if (json) {
    std::printf(
        "{\"threads\": %d, \"selected_isa\": \"%s\", \"read_gb_per_s\": %.2f, "
        "\"triad_gb_per_s\": %.2f, \"int8_peak_gops\": %.1f, \"kernels\": [",
        r.threads, CpuIsaName(SelectedIsa()), r.bandwidth.read_gbps, r.bandwidth.triad_gbps,
        r.int8_peak_gops);
    for (size_t i = 0; i < r.rows.size(); ++i) {
      const KernelBenchRow& k = r.rows[i];
      std::printf(
          "%s{\"type\": \"%s\", \"isa\": \"%s\", \"layout\": \"%s\", \"rows\": %lld, "
          "\"cols\": %lld, \"gemv_gb_per_s\": %.3f, \"gemv_fraction_of_read_bandwidth\": %.4f, "
          "\"gemv_cached_gb_per_s\": %.3f",
          i ? ", " : "", type_name(k.type).c_str(), CpuIsaName(k.isa), WeightLayoutName(k.layout),
          static_cast<long long>(k.rows), static_cast<long long>(k.cols), k.gemv_gb_per_s,
          r.bandwidth.read_gbps > 0 ? k.gemv_gb_per_s / r.bandwidth.read_gbps : 0.0,
          k.gemv_cached_gb_per_s);
      for (size_t j = 0; j < r.gemm_tokens.size(); ++j) {
        std::printf(", \"gemm%lld_gops\": %.2f", static_cast<long long>(r.gemm_tokens[j]),
                    k.gemm_gops[j]);
      }
      std::printf("}");
    }
    std::printf("]}\n");
    return kExitOk;
  }
  std::printf(
      "kernel micro-benchmarks, %d threads (selected isa %s)\n"
      "memory bandwidth: read %.1f GB/s, triad %.1f GB/s; int8 peak (%s loop): %.0f GOP/s\n"
      "GEMV: 1 token, every weight byte streamed from memory (%% of read bandwidth), and over one\n"
      "expert held in the caches (the kernel's own rate: below the bandwidth, decode is bound by\n"
      "compute); GEMM: one expert, cache-resident, T tokens (2·rows·cols·T ops; %% of the int8\n"
      "peak for quantized types)\n",
      r.threads, CpuIsaName(SelectedIsa()), r.bandwidth.read_gbps, r.bandwidth.triad_gbps,
      CpuSupportsIsa(CpuIsa::kAvx512) ? "vpdpbusd" : "vpmaddubsw+vpmaddwd", r.int8_peak_gops);
  std::printf("%-5s %-10s %-11s %-10s %9s %6s %9s", "type", "rows×cols", "isa", "layout",
              "GEMV GB/s", "of bw", "in cache");
  for (int64_t t : r.gemm_tokens) {
    std::printf(" %11s %7s", absl::StrCat("GEMM", t, " GOP/s").c_str(), "of peak");
  }
  std::printf("\n");
  for (const KernelBenchRow& k : r.rows) {
    const std::string shape = absl::StrCat(k.rows, "x", k.cols);
    std::printf("%-5s %-10s %-11s %-10s %9.2f %5.0f%% %9.2f", type_name(k.type).c_str(),
                shape.c_str(), CpuIsaName(k.isa), WeightLayoutName(k.layout), k.gemv_gb_per_s,
                r.bandwidth.read_gbps > 0 ? 100 * k.gemv_gb_per_s / r.bandwidth.read_gbps : 0.0,
                k.gemv_cached_gb_per_s);
    for (size_t j = 0; j < r.gemm_tokens.size(); ++j) {
      if (int8_type(k.type) && r.int8_peak_gops > 0) {
        std::printf(" %11.1f %6.0f%%", k.gemm_gops[j], 100 * k.gemm_gops[j] / r.int8_peak_gops);
      } else {
        std::printf(" %11.1f %7s", k.gemm_gops[j], "-");
      }
    }
    std::printf("\n");
  }
  std::printf(
      "(K-quants need 256-column blocks: no q4_K / q6_K row for 2048x1408; layout: the\n"
      "one the engine repacks these weights into at load on that isa, MOEFLOW_REPACK=0: "
      "ggml)\n");
  return kExitOk;
}

int RunBench(const std::vector<std::string>& args) {
  if (absl::GetFlag(FLAGS_kernels)) {
    const int threads =
        absl::GetFlag(FLAGS_t) >= 0 ? absl::GetFlag(FLAGS_t) : absl::GetFlag(FLAGS_threads);
    if (threads < 1 || !args.empty()) {
      std::fprintf(stderr, "moeflow bench --kernels: takes no model; needs -t >= 1\n");
      return kExitUsage;
    }
    return RunKernelBench(threads, absl::GetFlag(FLAGS_json));
  }
  std::string model =
      absl::GetFlag(FLAGS_m).empty() ? absl::GetFlag(FLAGS_model) : absl::GetFlag(FLAGS_m);
  if (model.empty() && args.size() == 1) model = args[0];
  if (model.empty() || args.size() > 1) {
    std::fprintf(stderr, "moeflow bench: give the model as -m / --model FILE.gguf\n");
    return kExitUsage;
  }
  const int64_t prompt =
      absl::GetFlag(FLAGS_p) >= 0 ? absl::GetFlag(FLAGS_p) : absl::GetFlag(FLAGS_prompt_tokens);
  const int64_t gen =
      absl::GetFlag(FLAGS_n) >= 0 ? absl::GetFlag(FLAGS_n) : absl::GetFlag(FLAGS_gen_tokens);
  const int reps =
      absl::GetFlag(FLAGS_r) >= 0 ? absl::GetFlag(FLAGS_r) : absl::GetFlag(FLAGS_repetitions);
  const int threads =
      absl::GetFlag(FLAGS_t) >= 0 ? absl::GetFlag(FLAGS_t) : absl::GetFlag(FLAGS_threads);
  const int64_t depth =
      absl::GetFlag(FLAGS_d) != -1 ? absl::GetFlag(FLAGS_d) : absl::GetFlag(FLAGS_depth);
  const bool json = absl::GetFlag(FLAGS_json);
  if (prompt < 0 || gen < 0 || reps < 1 || threads < 1 || prompt + gen == 0 || depth < 0) {
    std::fprintf(stderr,
                 "moeflow bench: need -p >= 0, -n >= 0 (not both 0), -r >= 1, -t >= 1, -d >= 0\n");
    return kExitUsage;
  }
  // The single-process topology (coordinator/local_topology.h): the engine
  // `serve`, `generate` and `launch` run, one sequence at a time here.
  LocalTopologyOptions options;
  options.n_threads = threads;
  options.active_experts = absl::GetFlag(FLAGS_active_experts);
  // Steps of at most kPrefillTokenChunk tokens (LocalTopology's cap): scratch
  // for one chunk, not for the whole prompt.
  options.max_batch_tokens = std::max<int64_t>(std::max(prompt, depth), 1);
  options.max_sequences = 1;
  options.kv_tokens = depth + std::max<int64_t>(prompt, gen) + 1;
  options.context_tokens = options.kv_tokens;
  auto engine_or = LocalTopology::Open(model, options);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "moeflow bench: %s\n", std::string(engine_or.status().message()).c_str());
    return kExitFailure;
  }
  LocalTopology& e = **engine_or;
  DataflowBatchModel batch_model(&e, /*tokenizer=*/nullptr);
  const Deepseek2Config& c = e.config();
  const int64_t k = e.active_experts();
  // The topology's own parse of the file (a second one would add its
  // metadata's heap to the peak RSS reported below).
  const double model_bytes = static_cast<double>(e.file().file_size());
  const double bytes_per_token = DecodeBytesPerToken(e.file(), c, k);

  std::vector<int32_t> tokens(static_cast<size_t>(depth + std::max(prompt, gen)));
  uint32_t state = 12345;
  for (int32_t& t : tokens) {
    state = state * 1664525u + 1013904223u;
    t = static_cast<int32_t>((state >> 8) % static_cast<uint32_t>(c.vocab_size));
  }
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  auto fail = [&](const absl::Status& s) {
    std::fprintf(stderr, "moeflow bench: %s\n", std::string(s.message()).c_str());
    return kExitFailure;
  };
  // A sequence from an empty cache each run: nothing reused or published.
  auto start = [&](int64_t first_tokens, int64_t positions) {
    return batch_model.StartSequence(
        absl::MakeConstSpan(tokens.data(), static_cast<size_t>(first_tokens)), positions,
        /*reuse_prefix=*/false, /*publish=*/false);
  };
  auto forward = [&](int64_t sequence, int64_t pos, int64_t n) {
    const server::BatchModel::Entry entry{
        sequence, absl::MakeConstSpan(tokens.data() + pos, static_cast<size_t>(n)), pos};
    return batch_model.Forward(absl::MakeConstSpan(&entry, 1), absl::MakeSpan(logits));
  };
  // Tokens [from, to) of a sequence in steps of the topology's (at most
  // kPrefillTokenChunk tokens), as llama-bench's 512-token micro-batches.
  auto prefill = [&](int64_t sequence, int64_t from, int64_t to) {
    const int64_t step = e.limits().max_tokens;
    absl::Status st;
    for (int64_t pos = from; pos < to && st.ok(); pos += step) {
      st = forward(sequence, pos, std::min(step, to - pos));
    }
    return st;
  };
  // A sequence of `positions` past the depth, with the depth's tokens
  // cached (untimed).
  auto start_at_depth = [&](int64_t positions) -> absl::StatusOr<int64_t> {
    MOEFLOW_ASSIGN_OR_RETURN(const server::BatchModel::Started s,
                             start(std::max<int64_t>(depth, 1), depth + positions));
    if (absl::Status st = prefill(s.sequence, 0, depth); !st.ok()) {
      batch_model.EndSequence(s.sequence);
      return st;
    }
    return s.sequence;
  };
  auto run_prefill = [&]() -> absl::StatusOr<double> {
    MOEFLOW_ASSIGN_OR_RETURN(const int64_t sequence, start_at_depth(prompt));
    const double t0 = Now();
    const absl::Status st = prefill(sequence, depth, depth + prompt);
    const double t1 = Now();
    batch_model.EndSequence(sequence);
    if (!st.ok()) return st;
    return static_cast<double>(prompt) / (t1 - t0);
  };
  auto run_decode = [&]() -> absl::StatusOr<double> {
    MOEFLOW_ASSIGN_OR_RETURN(const int64_t sequence, start_at_depth(gen));
    const double t0 = Now();
    absl::Status st;
    for (int64_t i = depth; i < depth + gen && st.ok(); ++i) st = forward(sequence, i, 1);
    const double t1 = Now();
    batch_model.EndSequence(sequence);
    if (!st.ok()) return st;
    return static_cast<double>(gen) / (t1 - t0);
  };

  std::vector<double> pp, tg;
  if (prompt > 0) {
    if (auto w = run_prefill(); !w.ok()) return fail(w.status());  // warm-up
    for (int i = 0; i < reps; ++i) {
      auto v = run_prefill();
      if (!v.ok()) return fail(v.status());
      pp.push_back(*v);
    }
  }
  MemoryBandwidth bw_before, bw_after;
  if (gen > 0) {
    bw_before = MeasureBandwidthInChild(threads);
    if (auto w = run_decode(); !w.ok()) return fail(w.status());  // warm-up
    for (int i = 0; i < reps; ++i) {
      auto v = run_decode();
      if (!v.ok()) return fail(v.status());
      tg.push_back(*v);
    }
    bw_after = MeasureBandwidthInChild(threads);
  }
  const Stats sp = MeanSd(pp), st = MeanSd(tg);
  const double bw = 0.5 * (bw_before.read_gbps + bw_after.read_gbps);
  const double floor_tps = bw > 0 ? bw * 1e9 / bytes_per_token : 0;
  const int64_t rss = PeakRssBytes();
  const char* isa = CpuIsaName(SelectedIsa());
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"model_bytes\": %.0f, \"isa\": \"%s\", \"threads\": %d, "
        "\"active_experts\": %lld, \"depth\": %lld, \"prompt_tokens\": %lld, "
        "\"gen_tokens\": %lld, "
        "\"repetitions\": %d, \"prefill_tokens_per_s\": %.3f, \"prefill_tokens_per_s_sd\": %.3f, "
        "\"decode_tokens_per_s\": %.3f, \"decode_tokens_per_s_sd\": %.3f, "
        "\"peak_rss_bytes\": %lld, \"peak_rss_over_model\": %.4f, "
        "\"bandwidth_read_gb_per_s_before\": %.2f, \"bandwidth_read_gb_per_s_after\": %.2f, "
        "\"bandwidth_triad_gb_per_s_before\": %.2f, \"bandwidth_triad_gb_per_s_after\": %.2f, "
        "\"decode_bytes_per_token\": %.0f, \"decode_floor_tokens_per_s\": %.3f, "
        "\"decode_fraction_of_floor\": %.4f, \"weight_memory\": \"%s\"}\n",
        model.c_str(), model_bytes, isa, threads, static_cast<long long>(k),
        static_cast<long long>(depth), static_cast<long long>(prompt), static_cast<long long>(gen),
        reps, sp.mean, sp.sd, st.mean, st.sd, static_cast<long long>(rss),
        static_cast<double>(rss) / model_bytes, bw_before.read_gbps, bw_after.read_gbps,
        bw_before.triad_gbps, bw_after.triad_gbps, bytes_per_token, floor_tps,
        floor_tps > 0 ? st.mean / floor_tps : 0.0, e.weight_memory().c_str());
    return kExitOk;
  }
  std::printf("model %s (%s), isa %s, %d threads, %lld of %lld routed experts\n", model.c_str(),
              HumanBytes(model_bytes).c_str(), isa, threads, static_cast<long long>(k),
              static_cast<long long>(c.n_experts_used));
  std::printf("%s\n", e.weight_memory().c_str());
  std::printf("%-14s %6s %20s\n", "test", "reps", "tokens/s");
  if (prompt > 0) {
    std::printf("%-14s %6d %12.2f ± %5.2f\n", TestName("pp", prompt, depth).c_str(), reps, sp.mean,
                sp.sd);
  }
  if (gen > 0) {
    std::printf("%-14s %6d %12.2f ± %5.2f\n", TestName("tg", gen, depth).c_str(), reps, st.mean,
                st.sd);
    std::printf(
        "memory bandwidth (read) %.1f GB/s before, %.1f after decode; %s of weights per decode "
        "token -> floor %.1f tok/s; decode at %.0f%% of the floor\n",
        bw_before.read_gbps, bw_after.read_gbps, HumanBytes(bytes_per_token).c_str(), floor_tps,
        floor_tps > 0 ? 100 * st.mean / floor_tps : 0.0);
  }
  std::printf("peak RSS %s (%.2fx the model file)\n", HumanBytes(static_cast<double>(rss)).c_str(),
              static_cast<double>(rss) / model_bytes);
  return kExitOk;
}

}  // namespace

Command BenchCommand() {
  return Command{
      "bench",
      "prefill / decode tokens per second of the CPU engine (like llama-bench)",
      "moeflow bench -m FILE.gguf [-p 512] [-n 128] [-d 0] [-r 5] [-t 2] [--active-experts K] "
      "[--json]\n"
      "moeflow bench --kernels [-t 2] [--kernel-isas LIST] [--json]",
      "pp: prompt tokens / time to the first token's logits; tg: generated tokens / time, one\n"
      "token per step; both from an empty cache (-d D: after D cached tokens, prefilled untimed),\n"
      "mean ± sd over -r repetitions after a warm-up.\n"
      "Also prints peak RSS and the decode bandwidth floor.\n"
      "--kernels: kernel micro-benchmarks instead of a model: per weight type (q4_K, q6_K, q8_0,\n"
      "bf16) and ISA variant, GEMV GB/s (1 token, expert shapes 1408x2048 and 2048x1408, weights\n"
      "streamed from memory) and GEMM GOP/s (64 and 512 tokens on one expert), next to the\n"
      "measured memory bandwidth and int8 peak.",
      {"model", "m", "prompt_tokens", "p", "gen_tokens", "n", "depth", "d", "repetitions", "r",
       "threads", "t", "active_experts", "json", "kernels", "kernel_isas"},
      RunBench,
  };
}

}  // namespace moeflow
