#include "tests/kernels/cpu/matmul_test_support.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "formats/ggml_types.h"
#include "formats/quant_blocks.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"

namespace moeflow::matmul_testing {

std::vector<CpuIsa> SimdIsas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512}) {
    if (CpuSupportsIsa(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = dist(rng);
    if (x == 0.f) x = 0.5f;
  }
  for (int64_t i = 0; i < n; i += 37) v[i] *= 6.f;
  return v;
}

Quantized QuantizeMatrix(GgmlType type, const std::vector<float>& values, int64_t rows,
                         int64_t cols) {
  Quantized q;
  const int64_t row_bytes = RowBytes(type, cols).value();
  q.bytes.resize(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(
        Quantize(type, values.data() + r * cols, q.bytes.data() + r * row_bytes, cols).ok());
  }
  q.w = MatmulWeight{type, q.bytes.data(), cols, rows, row_bytes};
  return q;
}

void DequantizedDot(GgmlType type, int64_t cols, const uint8_t* w_row, const uint8_t* a_row,
                    double* dot, double* abs_sum) {
  std::vector<float> w(static_cast<size_t>(cols)), a(static_cast<size_t>(cols));
  ASSERT_TRUE(Dequantize(type, w_row, w.data(), cols).ok());
  const GgmlType at = ActivationType(type);
  if (at == GgmlType::kQ8_1) {
    // Q8_1 has no dequantizer in quants.h: d * qs.
    for (int64_t b = 0; b < cols / 32; ++b) {
      const uint8_t* blk = a_row + b * 36;
      uint16_t d;
      std::memcpy(&d, blk, 2);
      for (int j = 0; j < 32; ++j) {
        a[b * 32 + j] = Fp16ToFp32(d) * static_cast<float>(static_cast<int8_t>(blk[4 + j]));
      }
    }
  } else {
    ASSERT_TRUE(Dequantize(at, a_row, a.data(), cols).ok());
  }
  *dot = 0;
  *abs_sum = 0;
  for (int64_t i = 0; i < cols; ++i) {
    const double p = static_cast<double>(w[i]) * a[i];
    *dot += p;
    *abs_sum += std::fabs(p);
  }
  if (at == GgmlType::kQ8_1) {
    // ggml's Q4_1 / Q5_1 dot takes the min term as m · s with s = fp16(d · Σq)
    // stored in the activation block, not m · Σ a: use that definition.
    const int64_t w_block = Traits(type).type_size;
    for (int64_t b = 0; b < cols / 32; ++b) {
      uint16_t m, s;
      std::memcpy(&m, w_row + b * w_block + 2, 2);
      std::memcpy(&s, a_row + b * 36 + 2, 2);
      double sum_a = 0;
      for (int j = 0; j < 32; ++j) sum_a += a[b * 32 + j];
      *dot += static_cast<double>(Fp16ToFp32(m)) * (Fp16ToFp32(s) - sum_a);
    }
  }
}

void FillRawWeights(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng) {
  const int64_t bytes = RowBytes(type, cols).value();
  for (int64_t i = 0; i < bytes; ++i) row[i] = static_cast<uint8_t>(rng());
  const uint16_t two_m4 = Fp32ToFp16(0.0625f), two_m5 = Fp32ToFp16(0.03125f);
  switch (type) {
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < cols / 32; ++b) reinterpret_cast<BlockQ8_0*>(row)[b].d = two_m4;
      break;
    case GgmlType::kQ5_0:
      for (int64_t b = 0; b < cols / 32; ++b) reinterpret_cast<BlockQ5_0*>(row)[b].d = two_m4;
      break;
    case GgmlType::kQ4_K:
      for (int64_t b = 0; b < cols / 256; ++b) {
        reinterpret_cast<BlockQ4_K*>(row)[b].d = two_m4;
        reinterpret_cast<BlockQ4_K*>(row)[b].dmin = two_m5;
      }
      break;
    case GgmlType::kQ6_K:
      for (int64_t b = 0; b < cols / 256; ++b) reinterpret_cast<BlockQ6_K*>(row)[b].d = two_m4;
      break;
    default:
      FAIL();
  }
}

void FillRawActivations(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> q(-127, 127);
  if (ActivationType(type) == GgmlType::kQ8_0) {
    for (int64_t b = 0; b < cols / 32; ++b) {
      BlockQ8_0& blk = reinterpret_cast<BlockQ8_0*>(row)[b];
      blk.d = Fp32ToFp16(0.0078125f);
      for (int j = 0; j < 32; ++j) blk.qs[j] = static_cast<int8_t>(q(rng));
    }
  } else {
    for (int64_t b = 0; b < cols / 256; ++b) {
      BlockQ8_K& blk = reinterpret_cast<BlockQ8_K*>(row)[b];
      blk.d = 0.0078125f;
      for (int j = 0; j < 256; ++j) blk.qs[j] = static_cast<int8_t>(q(rng));
      for (int g = 0; g < 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += blk.qs[g * 16 + l];
        blk.bsums[g] = static_cast<int16_t>(sum);
      }
    }
  }
}

}  // namespace moeflow::matmul_testing
