// kernels/cpu/matmul for the IQ types, the K types Q2_K, Q3_K, Q5_K and Q4_0: the
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
#include "tests/kernels/cpu/matmul_test_support.h"

namespace moeflow {
namespace {

using matmul_testing::SimdIsas;

// The types these kernels add (IQ4_XS had a dequantizer only before; Q4_0
// ran the scalar reference).
const GgmlType kNewTypes[] = {
    GgmlType::kIQ2_XXS, GgmlType::kIQ2_XS, GgmlType::kIQ2_S,  GgmlType::kIQ3_XXS, GgmlType::kIQ3_S,
    GgmlType::kIQ1_S,   GgmlType::kIQ1_M,  GgmlType::kIQ4_NL, GgmlType::kIQ4_XS,  GgmlType::kQ2_K,
    GgmlType::kQ3_K,    GgmlType::kQ5_K,   GgmlType::kQ4_0};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes the Σqs of each Q8_0 block after the row's blocks, where Matmul's
// Q8_0 activation rows keep them (ActivationRowBytes, matmul.h).
void WriteQ8_0Sums(uint8_t* row, int64_t cols) {
  const int64_t nb = cols / kQK;
  const BlockQ8_0* blocks = reinterpret_cast<const BlockQ8_0*>(row);
  for (int64_t b = 0; b < nb; ++b) {
    int16_t sum = 0;
    for (int j = 0; j < kQK; ++j) sum = static_cast<int16_t>(sum + blocks[b].qs[j]);
    std::memcpy(row + nb * static_cast<int64_t>(sizeof(BlockQ8_0)) + 2 * b, &sum, 2);
  }
}

// ggml's Q8_0 activation rows (the blocks only) as Matmul's rows.
std::vector<uint8_t> WithQ8_0Sums(const std::vector<uint8_t>& ggml_rows, int64_t tokens,
                                  int64_t cols, int64_t* row_bytes) {
  const int64_t ggml_bytes = cols / kQK * static_cast<int64_t>(sizeof(BlockQ8_0));
  EXPECT_EQ(*row_bytes, ggml_bytes);
  *row_bytes = ActivationRowBytes(GgmlType::kQ8_0, cols);
  std::vector<uint8_t> out(static_cast<size_t>(tokens * *row_bytes));
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(out.data() + t * *row_bytes, ggml_rows.data() + t * ggml_bytes, ggml_bytes);
    WriteQ8_0Sums(out.data() + t * *row_bytes, cols);
  }
  return out;
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
  if (d.act_type == GgmlType::kQ8_0) d.a = WithQ8_0Sums(d.a, d.tokens, d.cols, &d.a_row_bytes);
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

// Random blocks (every bit pattern of the indices, signs and scales) with
// power-of-two block scales, against activations with a power-of-two d:
// every partial sum is then an integer times a power of two, exact in float
// while below 2^24 units, so the SIMD result must equal the scalar one bit
// for bit — a check of the integer parts.
void FillRawWeights(GgmlType type, uint8_t* row, int64_t cols, std::mt19937& rng) {
  const int64_t bytes = RowBytes(type, cols).value();
  for (int64_t i = 0; i < bytes; ++i) row[i] = static_cast<uint8_t>(rng());
  const int64_t block_bytes = Traits(type).type_size;
  const int64_t nb = bytes / block_bytes;
  const uint16_t d = Fp32ToFp16(0.0625f), dmin = Fp32ToFp16(0.03125f);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blk = row + b * block_bytes;
    switch (type) {
      case GgmlType::kQ2_K:  // d, dmin after scales and qs
        std::memcpy(blk + 80, &d, 2);
        std::memcpy(blk + 82, &dmin, 2);
        break;
      case GgmlType::kQ3_K:
        std::memcpy(blk + 108, &d, 2);
        break;
      case GgmlType::kQ5_K:
        std::memcpy(blk, &d, 2);
        std::memcpy(blk + 2, &dmin, 2);
        break;
      case GgmlType::kIQ1_M: {  // d from the top nibbles of the four scale words
        uint16_t sc[4];
        std::memcpy(sc, blk + 48, 8);
        for (int k = 0; k < 4; ++k) {
          sc[k] = static_cast<uint16_t>((sc[k] & 0x0fff) | (((d >> (4 * k)) & 15) << 12));
        }
        std::memcpy(blk + 48, sc, 8);
        break;
      }
      default:  // every other IQ block starts with d
        std::memcpy(blk, &d, 2);
    }
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
    WriteQ8_0Sums(row, cols);
    return;
  }
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

TEST(MatmulIqTest, SimdVecDotsEqualScalarOnRawBlocks) {
  const int64_t cols = 2048;
  std::mt19937 rng(7);
  for (GgmlType type : kNewTypes) {
    SCOPED_TRACE(Traits(type).name);
    std::vector<uint8_t> w(static_cast<size_t>(RowBytes(type, cols).value()));
    std::vector<uint8_t> a(static_cast<size_t>(ActivationRowBytes(type, cols)));
    for (int trial = 0; trial < 50; ++trial) {
      FillRawWeights(type, w.data(), cols, rng);
      FillRawActivations(type, a.data(), cols, rng);
      const float ref = GetVecDot(type, CpuIsa::kScalar)(cols, w.data(), a.data());
      for (CpuIsa isa : SimdIsas()) {
        ASSERT_NE(GetVecDot(type, isa), GetVecDot(type, CpuIsa::kScalar)) << CpuIsaName(isa);
        EXPECT_EQ(GetVecDot(type, isa)(cols, w.data(), a.data()), ref)
            << CpuIsaName(isa) << " trial " << trial;
      }
    }
  }
}

// A rows × cols matrix of FillRawWeights rows.
matmul_testing::Quantized RawMatrix(GgmlType type, int64_t rows, int64_t cols,
                                    std::mt19937& rng) {
  const int64_t w_bytes = RowBytes(type, cols).value();
  matmul_testing::Quantized m;
  m.bytes.resize(static_cast<size_t>(rows * w_bytes));
  for (int64_t r = 0; r < rows; ++r) FillRawWeights(type, m.bytes.data() + r * w_bytes, cols, rng);
  m.w = MatmulWeight{type, m.bytes.data(), cols, rows, w_bytes};
  return m;
}

// The decode tiles (1-2 tokens, R rows) and the prefill panels (3+ tokens)
// with every leftover shape: bit-equal to the scalar reference on raw
// blocks, for 1536 columns (6 super-blocks, 48 IQ4_NL blocks) and 19 rows.
TEST(MatmulIqTest, SimdGemmTilesEqualScalarOnRawBlocks) {
  const int64_t cols = 1536, rows = 19;
  std::mt19937 rng(11);
  for (GgmlType type : kNewTypes) {
    SCOPED_TRACE(Traits(type).name);
    const matmul_testing::Quantized raw = RawMatrix(type, rows, cols, rng);
    const MatmulWeight& mw = raw.w;
    const int64_t a_bytes = ActivationRowBytes(type, cols);
    for (int64_t tokens : {1, 2, 3, 4, 5, 7, 9, 70}) {
      std::vector<uint8_t> a(static_cast<size_t>(tokens * a_bytes));
      for (int64_t t = 0; t < tokens; ++t) {
        FillRawActivations(type, a.data() + t * a_bytes, cols, rng);
      }
      std::vector<float> ref(static_cast<size_t>(tokens * rows));
      MatmulQuantized(mw, a.data(), tokens, ref.data(), rows, CpuIsa::kScalar, nullptr);
      for (CpuIsa isa : SimdIsas()) {
        std::vector<float> y(ref.size(), -1.f);
        MatmulQuantized(mw, a.data(), tokens, y.data(), rows, isa, nullptr);
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_EQ(y[i], ref[i]) << CpuIsaName(isa) << " tokens " << tokens << " index " << i;
        }
      }
    }
  }
}

// A (row, token) result must not depend on the other tokens of the call
// (decode tokens are batched with other requests' prefill): with float
// factors that round (activations quantized from random floats), every
// token of a 1..70-token call equals the same token alone, bit for bit, on
// 35 rows (two 16-row panels of the VNNI prefill kernel and 3 rows of the
// register tiles), per ISA.
TEST(MatmulIqTest, GemmEqualsOneTokenAtATimeBitForBit) {
  const int64_t cols = 1536, rows = 35;
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (GgmlType type : kNewTypes) {
    SCOPED_TRACE(Traits(type).name);
    const matmul_testing::Quantized raw = RawMatrix(type, rows, cols, rng);
    const MatmulWeight& mw = raw.w;
    const int64_t a_bytes = ActivationRowBytes(type, cols);
    const int64_t tokens = 70;
    std::vector<float> x(static_cast<size_t>(tokens * cols));
    for (float& v : x) v = normal(rng) * 3.3f;
    std::vector<uint8_t> a(static_cast<size_t>(tokens * a_bytes));
    QuantizeActivations(type, x.data(), tokens, cols, cols, a.data());
    for (CpuIsa isa : SimdIsas()) {
      std::vector<float> alone(static_cast<size_t>(tokens * rows));
      for (int64_t t = 0; t < tokens; ++t) {
        MatmulQuantized(mw, a.data() + t * a_bytes, 1, alone.data() + t * rows, rows, isa,
                        nullptr);
      }
      for (int64_t n : {2, 3, 4, 8, 9, 17, 70}) {
        std::vector<float> y(static_cast<size_t>(n * rows), -1.f);
        MatmulQuantized(mw, a.data(), n, y.data(), rows, isa, nullptr);
        for (int64_t i = 0; i < n * rows; ++i) {
          ASSERT_EQ(y[i], alone[i]) << CpuIsaName(isa) << " tokens " << n << " t " << i / rows
                                    << " r " << i % rows;
        }
      }
    }
  }
}

// Realistic data (ggml's quantized weights of vecdot.*.bin, activations
// quantized here from N(0, 1) floats with outliers): within a few float
// rounding steps of Σ|w·a| of the scalar reference, for decode and prefill.
TEST(MatmulIqTest, SimdVariantsMatchScalarOnGgmlQuantizedWeights) {
  std::printf("SIMD ISAs on this CPU:");
  for (CpuIsa isa : SimdIsas()) std::printf(" %s", CpuIsaName(isa));
  std::printf("\n");
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (const char* name : {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m",
                           "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q5_K"}) {
    SCOPED_TRACE(name);
    const VecDotDump d = LoadVecDot(name);
    const MatmulWeight mw{d.type, d.w.data(), d.cols, d.rows, d.w_row_bytes};
    for (int64_t tokens : {1, 2, 11}) {
      std::vector<float> x(static_cast<size_t>(tokens * d.cols));
      for (size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * (i % 37 == 0 ? 6.f : 1.f);
      std::vector<uint8_t> a(static_cast<size_t>(tokens * d.a_row_bytes));
      QuantizeActivations(d.type, x.data(), tokens, d.cols, d.cols, a.data());
      std::vector<float> ref(static_cast<size_t>(tokens * d.rows));
      MatmulQuantized(mw, a.data(), tokens, ref.data(), d.rows, CpuIsa::kScalar, nullptr);
      for (CpuIsa isa : SimdIsas()) {
        std::vector<float> y(ref.size());
        MatmulQuantized(mw, a.data(), tokens, y.data(), d.rows, isa, nullptr);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t r = 0; r < d.rows; ++r) {
            double exact;
            const double abs_sum = AbsDot(d.type, d.cols, d.w.data() + r * d.w_row_bytes,
                                          a.data() + t * d.a_row_bytes, &exact);
            EXPECT_NEAR(y[t * d.rows + r], ref[t * d.rows + r], 64 * abs_sum * std::ldexp(1.0, -24))
                << CpuIsaName(isa) << " tokens " << tokens << " t " << t << " r " << r;
          }
        }
      }
    }
  }
}

// A CPU without a variant skips it by name (so AVX2-only hosts run the AVX2
// checks and skip the AVX-512 ones).
TEST(MatmulIqTest, ReportsTheVariantsItCannotRun) {
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512}) {
    if (!CpuSupportsIsa(isa)) std::printf("skipping %s: this CPU lacks it\n", CpuIsaName(isa));
  }
  if (SimdIsas().empty()) GTEST_SKIP() << "no SIMD variant runs on this CPU";
}

}  // namespace
}  // namespace moeflow
