// Shared by the matmul tests of tests/kernels/cpu (matmul_test.cc,
// matmul_tiles_test.cc, matmul_q5_0_pairs_test.cc, matmul_panel_test.cc,
// matmul_iq_test.cc): the SIMD ISAs this CPU runs, activation-like random
// floats, quantized matrices, the dequantized reference dot, and raw blocks
// with power-of-two scales (every float sum exact).
//
// Thread-safety: plain functions. Failure: reported as gtest failures of the
// calling test (a bad quantization, an unsupported type).
#ifndef MOEFLOW_TESTS_KERNELS_CPU_MATMUL_TEST_SUPPORT_H_
#define MOEFLOW_TESTS_KERNELS_CPU_MATMUL_TEST_SUPPORT_H_

#include <cstdint>
#include <random>
#include <vector>

#include "formats/ggml_types.h"
#include "kernels/cpu/matmul.h"

namespace moeflow::matmul_testing {

// The SIMD variants (AVX2, AVX-512 without and with VNNI) this CPU runs.
std::vector<CpuIsa> SimdIsas();

// Random non-zero floats: N(0, 1) with a few larger outliers, as activations are.
std::vector<float> RandomFloats(int64_t n, uint32_t seed);

// A matrix of `type` rows; w points into bytes (move it, do not copy it).
struct Quantized {
  MatmulWeight w;
  std::vector<uint8_t> bytes;
};

// `values` (rows × cols floats) quantized row by row to `type`.
Quantized QuantizeMatrix(GgmlType type, const std::vector<float>& values, int64_t rows,
                         int64_t cols);

// Σ dequant(w)·dequant(a) in double, and Σ |dequant(w)·dequant(a)|, of one
// weight row and one activation row of `type`'s activation type.
void DequantizedDot(GgmlType type, int64_t cols, const uint8_t* w_row, const uint8_t* a_row,
                    double* dot, double* abs_sum);

// Random raw blocks (every bit pattern of the quants, including Q8_0's -128)
// with power-of-two scales, so that every partial sum is exact in float:
// one row of weights of `type` (Q8_0, Q5_0, Q4_K or Q6_K) ...
void FillRawWeights(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng);
// ... and one row of its activations (Q8_0 or Q8_K, values in [-127, 127]).
void FillRawActivations(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng);

}  // namespace moeflow::matmul_testing

#endif  // MOEFLOW_TESTS_KERNELS_CPU_MATMUL_TEST_SUPPORT_H_
