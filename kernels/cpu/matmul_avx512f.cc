// AVX-512 (F, BW, VL, DQ) build of the SIMD vec_dots and GEMM tiles, without
// VNNI (see matmul_simd.inc): CpuIsa::kAvx512NoVnni, for CPUs with AVX-512
// but no vpdpbusd (Skylake-SP / Skylake-X); forced with MOEFLOW_ISA=avx512f.
#define MOEFLOW_SIMD_NS avx512f
#define MOEFLOW_SIMD_AVX512 1
#define MOEFLOW_SIMD_VNNI 0
#include "kernels/cpu/matmul_simd.inc"

namespace moeflow {
const SimdVecDots& Avx512NoVnniVecDots() { return avx512f::Table(); }
}  // namespace moeflow
