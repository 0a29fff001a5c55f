// This machine's memory bandwidth and int8 compute peak, measured: the
// denominators of the kernel and engine benchmarks (achieved GB/s against
// what the memory delivers, GOP/s against what vpdpbusd can do).
//
// Thread-safety: each call uses the given pool (null: the calling thread).
// Takes ~0.3 s (bandwidth) and ~0.1 s (peak). Failure: none; allocation
// failure aborts.
#ifndef MOEFLOW_KERNELS_CPU_MEMBW_H_
#define MOEFLOW_KERNELS_CPU_MEMBW_H_

#include "kernels/cpu/thread_pool.h"

namespace moeflow {

struct MemoryBandwidth {
  double read_gbps = 0;   // streaming read of a 256 MiB buffer, widest vector loads (best of 3)
  double triad_gbps = 0;  // STREAM triad a = b + s·c, 3 × 64 MiB (bytes read + written)
};

MemoryBandwidth MeasureMemoryBandwidth(ThreadPool* pool);

// u8·s8 multiply-adds per second × 2 of an unrolled vpdpbusd (512-bit) loop
// (24 chains, in assembly)
// on every thread of the pool; without AVX-512 VNNI, of the AVX2
// vpmaddubsw + vpmaddwd + vpaddd step (32 products); 0 without AVX2.
double MeasureInt8PeakGops(ThreadPool* pool);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_MEMBW_H_
