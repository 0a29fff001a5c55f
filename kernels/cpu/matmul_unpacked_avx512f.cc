// AVX-512 (F, BW, VL, DQ) without VNNI build of the unpacked kernels (IQ types, Q2_K, Q3_K, Q5_K;
// see matmul_unpacked_tiles.inc).
#define MOEFLOW_SIMD_NS unpacked_avx512f
#define MOEFLOW_SIMD_AVX512 1
#define MOEFLOW_SIMD_VNNI 0
#define MOEFLOW_SIMD_VECDOTS Avx512NoVnniVecDots
#include "kernels/cpu/matmul_unpacked_tiles.inc"

namespace moeflow {
UnpackedKernels Avx512NoVnniUnpackedKernels(GgmlType type) {
  return unpacked_avx512f::Lookup(type);
}
}  // namespace moeflow
