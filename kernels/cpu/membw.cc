#include "kernels/cpu/membw.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace moeflow {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename Fn>
void Split(ThreadPool* pool, int64_t n, const Fn& fn) {
  if (pool == nullptr) {
    fn(int64_t{0}, n, 0);
  } else {
    pool->ParallelFor(n, fn);
  }
}

// Independent vpdpbusd chains: enough to cover its latency × throughput
// (8 chains measured only ~half the rate of 24 on Zen 4, whose 512-bit
// vpdpbusd has a long latency). Written in assembly: GCC 12 spills and
// copies 24 intrinsic accumulators (a 2026-12-07 Xeon measured 220 GOP/s on
// two threads with the intrinsics, 1,400+ with this loop: two vpdpbusd per
// cycle per core). zmm30/31 hold the operands (all ones bytes).
constexpr int kVnniChains = 24;

__attribute__((target("avx512f,avx512vnni"), noinline)) int64_t VnniLoop(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n"
      "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n"
      "1:\n"
#define MOEFLOW_DPBUSD(i) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #i "\n"
      MOEFLOW_DPBUSD(0) MOEFLOW_DPBUSD(1) MOEFLOW_DPBUSD(2) MOEFLOW_DPBUSD(3) MOEFLOW_DPBUSD(4)
          MOEFLOW_DPBUSD(5) MOEFLOW_DPBUSD(6) MOEFLOW_DPBUSD(7) MOEFLOW_DPBUSD(8) MOEFLOW_DPBUSD(9)
              MOEFLOW_DPBUSD(10) MOEFLOW_DPBUSD(11) MOEFLOW_DPBUSD(12) MOEFLOW_DPBUSD(13)
                  MOEFLOW_DPBUSD(14) MOEFLOW_DPBUSD(15) MOEFLOW_DPBUSD(16) MOEFLOW_DPBUSD(17)
                      MOEFLOW_DPBUSD(18) MOEFLOW_DPBUSD(19) MOEFLOW_DPBUSD(20) MOEFLOW_DPBUSD(21)
                          MOEFLOW_DPBUSD(22) MOEFLOW_DPBUSD(23)
#undef MOEFLOW_DPBUSD
                              "dec %0\n"
                              "jnz 1b\n"
      : "+r"(n)
      :
      : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20",
        "zmm21", "zmm22", "zmm23", "zmm30", "zmm31", "cc");
  return iters;
}

// Without VNNI (AVX2): the u8·s8 step the AVX2 tiles use, vpmaddubsw then
// vpmaddwd (× 1) and vpaddd, 32 products per step; 12 chains + 3 operands
// fit the 16 ymm registers.
constexpr int kAvx2Chains = 12;

__attribute__((target("avx2"))) int64_t Avx2Int8Loop(int64_t iters) {
  __m256i acc[kAvx2Chains];
  for (int i = 0; i < kAvx2Chains; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i b = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kAvx2Chains; ++i) {
      // The accumulator is the unsigned operand too, so no step can be
      // hoisted or shared between chains.
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(acc[i], b), ones));
      __asm__ volatile("" : "+x"(acc[i]));
    }
  }
  alignas(32) int32_t lanes[8];
  int64_t s = 0;
  for (int i = 0; i < kAvx2Chains; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i]);
    for (int32_t v : lanes) s += v;
  }
  return s;
}

// Sum of n words with the widest loads the CPU has: the kernels stream their
// weights with vector loads, and scalar loads reach only ~2/3 of the memory's
// rate on one core (a 2026-12-07 Xeon: 19.5 GB/s scalar, 28.8 GB/s AVX-512 on
// two threads).
__attribute__((target("avx512f"))) uint64_t ReadSum512(const uint64_t* p, int64_t n) {
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  for (int64_t i = 0; i + 32 <= n; i += 32) {
    a = _mm512_add_epi64(a, _mm512_loadu_si512(p + i));
    b = _mm512_add_epi64(b, _mm512_loadu_si512(p + i + 8));
    c = _mm512_add_epi64(c, _mm512_loadu_si512(p + i + 16));
    d = _mm512_add_epi64(d, _mm512_loadu_si512(p + i + 24));
  }
  return static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d))));
}

__attribute__((target("avx2"))) uint64_t ReadSum256(const uint64_t* p, int64_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t ReadSum(const uint64_t* p, int64_t n, int vector_width) {
  if (vector_width == 512) return ReadSum512(p, n);
  if (vector_width == 256) return ReadSum256(p, n);
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t i = 0; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  return s0 + s1 + s2 + s3;
}

}  // namespace

MemoryBandwidth MeasureMemoryBandwidth(ThreadPool* pool) {
  MemoryBandwidth bw;
  const int vector_width = CpuSupportsIsa(CpuIsa::kAvx512NoVnni) ? 512
                           : CpuSupportsIsa(CpuIsa::kAvx2)       ? 256
                                                                 : 64;
  const int64_t n = (256LL << 20) / 8;
  std::vector<uint64_t> buf(static_cast<size_t>(n), 1);
  volatile uint64_t sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    Split(pool, n / 4096, [&](int64_t b0, int64_t b1, int) {
      sink = sink + ReadSum(buf.data() + b0 * 4096, (b1 - b0) * 4096, vector_width);
    });
    best = std::min(best, Now() - t0);
  }
  bw.read_gbps = static_cast<double>(n * 8) / best / 1e9;
  const int64_t m = (64LL << 20) / 8;
  std::vector<double> a(static_cast<size_t>(m), 0.0), b(static_cast<size_t>(m), 1.0),
      c(static_cast<size_t>(m), 2.0);
  best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    Split(pool, m / 4096, [&](int64_t b0, int64_t b1, int) {
      for (int64_t i = b0 * 4096; i < b1 * 4096; ++i) a[i] = b[i] + 3.0 * c[i];
    });
    best = std::min(best, Now() - t0);
  }
  sink = sink + static_cast<uint64_t>(a[m / 2]);
  bw.triad_gbps = static_cast<double>(3 * m * 8) / best / 1e9;
  return bw;
}

double MeasureInt8PeakGops(ThreadPool* pool) {
  const int n_threads = pool == nullptr ? 1 : pool->size();
  const bool vnni = CpuSupportsIsa(CpuIsa::kAvx512);
  if (!vnni && !CpuSupportsIsa(CpuIsa::kAvx2)) return 0;
  // u8·s8 products per loop iteration: kVnniChains vpdpbusd of 64, or
  // kAvx2Chains vpmaddubsw steps of 32.
  const int64_t per_iter = vnni ? 64 * kVnniChains : 32 * kAvx2Chains;
  const int64_t iters = 16000000 / (vnni ? kVnniChains : kAvx2Chains);
  volatile int64_t sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    Split(pool, n_threads, [&](int64_t, int64_t, int) {
      sink = sink + (vnni ? VnniLoop(iters) : Avx2Int8Loop(iters));
    });
    best = std::min(best, Now() - t0);
  }
  // 2 ops (multiply, add) per product.
  return 2.0 * static_cast<double>(per_iter * iters) * n_threads / best / 1e9;
}

}  // namespace moeflow
