// AVX-512 (F, BW, VL, DQ) + VNNI build of the SIMD vec_dots (see matmul_simd.inc).
#define MOEFLOW_SIMD_NS avx512
#define MOEFLOW_SIMD_AVX512 1
#define MOEFLOW_SIMD_VNNI 1
#include "kernels/cpu/matmul_simd.inc"

namespace moeflow {
const SimdVecDots& Avx512VecDots() { return avx512::Table(); }
}  // namespace moeflow
