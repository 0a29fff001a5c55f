// Internal to kernels/cpu/matmul: the activation block of Q4_1 / Q5_1 dot
// products and the per-ISA vec_dot tables. The ISA files (matmul_avx2.cc,
// matmul_avx512.cc) are compiled with their own -m flags from one source
// (matmul_simd.inc) and export only these tables; a null entry means "use the
// scalar reference". Plain data; no failure modes.
#ifndef MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_
#define MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_

#include <cstdint>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant_blocks.h"

namespace moeflow {

#pragma pack(push, 1)
// ggml's block_q8_1: x = d * qs; s = d * Σ qs (both IEEE half).
struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ8_1) == 36, "ggml block_q8_1");

struct SimdVecDots {
  VecDotFn f32 = nullptr;
  VecDotFn q8_0 = nullptr;
  VecDotFn q5_0 = nullptr;
  VecDotFn q4_k = nullptr;
  VecDotFn q6_k = nullptr;
};

const SimdVecDots& Avx2VecDots();
const SimdVecDots& Avx512VecDots();

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_
