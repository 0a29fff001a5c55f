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
// vpdpbusd has a long latency); 24 + 2 operands fit the 32 zmm registers.
constexpr int kVnniChains = 24;

__attribute__((target("avx512f,avx512vnni"))) int64_t VnniLoop(int64_t iters) {
  __m512i acc[kVnniChains];
  for (int i = 0; i < kVnniChains; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kVnniChains; ++i) {
      acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
      __asm__ volatile("" : "+v"(acc[i]));
    }
  }
  int64_t s = 0;
  for (int i = 0; i < kVnniChains; ++i) s += _mm512_reduce_add_epi32(acc[i]);
  return s;
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

}  // namespace

MemoryBandwidth MeasureMemoryBandwidth(ThreadPool* pool) {
  MemoryBandwidth bw;
  const int64_t n = (256LL << 20) / 8;
  std::vector<uint64_t> buf(static_cast<size_t>(n), 1);
  volatile uint64_t sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    Split(pool, n / 4096, [&](int64_t b0, int64_t b1, int) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = b0 * 4096; i < b1 * 4096; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      sink = sink + s0 + s1 + s2 + s3;
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
