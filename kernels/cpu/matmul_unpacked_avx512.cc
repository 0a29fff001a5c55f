// AVX-512 (F, BW, VL, DQ) + VNNI build of the unpacked kernels (IQ types, Q2_K, Q3_K, Q5_K; see
// matmul_unpacked_tiles.inc).
#define MOEFLOW_SIMD_NS unpacked_avx512
#define MOEFLOW_SIMD_AVX512 1
#define MOEFLOW_SIMD_VNNI 1
#define MOEFLOW_SIMD_VECDOTS Avx512VecDots
#include "kernels/cpu/matmul_unpacked_tiles.inc"

namespace moeflow {
UnpackedKernels Avx512UnpackedKernels(GgmlType type) { return unpacked_avx512::Lookup(type); }
}  // namespace moeflow
