// kernels/cpu/matmul for the IQ types and the K types Q2_K, Q3_K, Q5_K: the
// scalar reference against ggml's own vec_dot results (tests/data/quants
// vecdot.*.bin) and against the dequantized dot, then every SIMD variant
// this CPU runs against the scalar reference (bit-equal where the float
// arithmetic is exact, within a few ulp of Σ|w·a| on realistic data).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "formats/ggml_types.h"
#include "formats/quant_blocks.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

// The types these kernels add (IQ4_XS had a dequantizer only before).
const GgmlType kNewTypes[] = {GgmlType::kIQ2_XXS, GgmlType::kIQ2_XS, GgmlType::kIQ2_S,
                              GgmlType::kIQ3_XXS, GgmlType::kIQ3_S,  GgmlType::kIQ1_S,
                              GgmlType::kIQ1_M,   GgmlType::kIQ4_NL, GgmlType::kIQ4_XS,
                              GgmlType::kQ2_K,    GgmlType::kQ3_K,   GgmlType::kQ5_K};

std::vector<CpuIsa> SimdIsas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512}) {
    if (CpuSupportsIsa(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A "MFVD" file (format in tests/data/quants/README.md): ggml-quantized
// weights, ggml-quantized activations and ggml's vec_dot of each pair.
struct VecDotDump {
  GgmlType type = GgmlType::kF32;
  GgmlType act_type = GgmlType::kF32;
  int64_t rows = 0, tokens = 0, cols = 0, w_row_bytes = 0, a_row_bytes = 0;
  std::vector<uint8_t> w, a;
  std::vector<float> generic, native;  // [token][row]
};

VecDotDump LoadVecDot(const std::string& name) {
  const std::vector<uint8_t> b = ReadFile("tests/data/quants/vecdot." + name + ".bin");
  VecDotDump d;
  if (b.size() < 36 || std::memcmp(b.data(), "MFVD", 4) != 0) {
    ADD_FAILURE() << name << ": not an MFVD file";
    return d;
  }
  uint32_t h[8];
  std::memcpy(h, b.data() + 4, sizeof(h));
  d.type = static_cast<GgmlType>(h[1]);
  d.act_type = static_cast<GgmlType>(h[2]);
  d.rows = h[3];
  d.tokens = h[4];
  d.cols = h[5];
  d.w_row_bytes = h[6];
  d.a_row_bytes = h[7];
  const size_t nw = d.rows * d.w_row_bytes, na = d.tokens * d.a_row_bytes;
  const size_t nr = d.rows * d.tokens;
  if (b.size() != 36 + nw + na + 8 * nr) {
    ADD_FAILURE() << name << ": " << b.size() << " bytes";
    return d;
  }
  size_t off = 36;
  d.w.assign(b.begin() + off, b.begin() + off + nw);
  off += nw;
  d.a.assign(b.begin() + off, b.begin() + off + na);
  off += na;
  d.generic.resize(nr);
  d.native.resize(nr);
  std::memcpy(d.generic.data(), b.data() + off, 4 * nr);
  std::memcpy(d.native.data(), b.data() + off + 4 * nr, 4 * nr);
  return d;
}

// Σ|dequant(w)·dequant(a)| in double (the scale of the float rounding).
double AbsDot(GgmlType type, int64_t cols, const uint8_t* w_row, const uint8_t* a_row,
              double* dot) {
  std::vector<float> w(static_cast<size_t>(cols)), a(static_cast<size_t>(cols));
  EXPECT_TRUE(Dequantize(type, w_row, w.data(), cols).ok());
  EXPECT_TRUE(Dequantize(ActivationType(type), a_row, a.data(), cols).ok());
  double abs_sum = 0;
  *dot = 0;
  for (int64_t i = 0; i < cols; ++i) {
    *dot += static_cast<double>(w[i]) * a[i];
    abs_sum += std::fabs(static_cast<double>(w[i]) * a[i]);
  }
  return abs_sum;
}

// The scalar reference does ggml's generic arithmetic: bit-equal to ggml's
// generic C vec_dot built without FMA (as ggml-base is; the file's
// "generic" results), for every pair. ggml's SIMD vec_dot of the reference
// build (the "native" results) adds in another order: close, not equal.
TEST(MatmulIqTest, ScalarReferenceMatchesGgmlVecDot) {
  for (const char* name : {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m",
                           "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"}) {
    SCOPED_TRACE(name);
    const VecDotDump d = LoadVecDot(name);
    ASSERT_TRUE(MatmulSupports(d.type));
    ASSERT_EQ(ActivationType(d.type), d.act_type);
    ASSERT_EQ(ActivationRowBytes(d.type, d.cols), d.a_row_bytes);
    const VecDotFn dot = GetVecDot(d.type, CpuIsa::kScalar);
    int equal = 0;
    for (int64_t t = 0; t < d.tokens; ++t) {
      for (int64_t r = 0; r < d.rows; ++r) {
        const uint8_t* w = d.w.data() + r * d.w_row_bytes;
        const uint8_t* a = d.a.data() + t * d.a_row_bytes;
        const float ours = dot(d.cols, w, a);
        const float ggml = d.generic[t * d.rows + r];
        double exact;
        const double abs_sum = AbsDot(d.type, d.cols, w, a, &exact);
        EXPECT_EQ(ours, ggml) << "t " << t << " r " << r;
        // ggml's own SIMD vec_dot is as close to it.
        EXPECT_NEAR(d.native[t * d.rows + r], ggml, abs_sum * std::ldexp(1.0, -20));
        EXPECT_NEAR(exact, ggml, abs_sum * std::ldexp(1.0, -18));
        equal += ours == ggml;
      }
    }
    std::printf("%-8s scalar == ggml generic bit for bit: %d / %d\n", name, equal,
                static_cast<int>(d.rows * d.tokens));
  }
}

}  // namespace
}  // namespace moeflow
