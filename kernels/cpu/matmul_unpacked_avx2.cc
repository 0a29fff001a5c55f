// AVX2 + FMA + F16C build of the unpacked kernels (IQ types, Q2_K, Q3_K, Q5_K; see
// matmul_unpacked_tiles.inc).
#define MOEFLOW_SIMD_NS unpacked_avx2
#define MOEFLOW_SIMD_AVX512 0
#define MOEFLOW_SIMD_VNNI 0
#define MOEFLOW_SIMD_VECDOTS Avx2VecDots
#include "kernels/cpu/matmul_unpacked_tiles.inc"

namespace moeflow {
UnpackedKernels Avx2UnpackedKernels(GgmlType type) { return unpacked_avx2::Lookup(type); }
}  // namespace moeflow
