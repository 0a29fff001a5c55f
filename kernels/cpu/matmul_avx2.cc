// AVX2 + FMA + F16C build of the SIMD vec_dots (see matmul_simd.inc).
#define MOEFLOW_SIMD_NS avx2
#define MOEFLOW_SIMD_AVX512 0
#define MOEFLOW_SIMD_VNNI 0
#include "kernels/cpu/matmul_simd.inc"

namespace moeflow {
const SimdVecDots& Avx2VecDots() { return avx2::Table(); }
}  // namespace moeflow
