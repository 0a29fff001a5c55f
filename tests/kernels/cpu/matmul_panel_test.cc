// WeightLayout::kPanel16 (kernels/cpu/panel_layout.h, matmul_panel_avx512.cc):
// the repacking round-trips every byte, the AVX-512 VNNI panel tiles agree
// with the scalar reference on the GGUF bytes (within a few ulp of Σ|w·a|,
// on quantized data and on raw blocks with every bit pattern), a (row, token)
// result is the same bit for bit whatever the number of tokens in the call,
// the thread count or the tile it falls in, and the scalar path multiplies
// panels as if they were GGUF blocks. PreferredLayout picks panels on the
// VNNI ISAs only, for whole panels.
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
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/cpu/matmul_test_support.h"

namespace moeflow {
namespace {

using matmul_testing::RandomFloats;
using matmul_testing::SimdIsas;

const GgmlType kPanelTypes[] = {GgmlType::kQ8_0, GgmlType::kQ5_0, GgmlType::kQ4_K, GgmlType::kQ5_K,
                                GgmlType::kQ6_K};

struct Matrix {
  MatmulWeight w;
  std::vector<uint8_t> bytes;
};

Matrix Quantized(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  const std::vector<float> values = RandomFloats(rows * cols, seed);
  const int64_t row_bytes = RowBytes(type, cols).value();
  m.bytes.resize(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(
        Quantize(type, values.data() + r * cols, m.bytes.data() + r * row_bytes, cols).ok());
  }
  m.w = MatmulWeight{type, m.bytes.data(), cols, rows, row_bytes};
  return m;
}

// Every bit pattern of the quants and scales, with scales kept finite and
// moderate (fp16 exponents in [-12, 2]).
Matrix RawBlocks(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  std::mt19937 rng(seed);
  const int64_t row_bytes = RowBytes(type, cols).value();
  m.bytes.resize(static_cast<size_t>(rows * row_bytes));
  for (uint8_t& b : m.bytes) b = static_cast<uint8_t>(rng());
  std::uniform_int_distribution<int> e(-12, 2);
  auto scale = [&]() { return Fp32ToFp16(std::ldexp(rng() % 2 ? 1.f : -1.f, e(rng))); };
  const int64_t bs = Traits(type).type_size, nb = row_bytes / bs;
  for (int64_t i = 0; i < rows * nb; ++i) {
    uint8_t* blk = m.bytes.data() + i * bs;
    uint16_t d = scale(), d2 = scale();
    switch (type) {
      case GgmlType::kQ8_0:
      case GgmlType::kQ5_0:
        std::memcpy(blk, &d, 2);
        break;
      case GgmlType::kQ4_K:
      case GgmlType::kQ5_K:
        std::memcpy(blk, &d, 2);
        std::memcpy(blk + 2, &d2, 2);
        break;
      case GgmlType::kQ6_K:
        std::memcpy(blk + 208, &d, 2);
        break;
      default:
        ADD_FAILURE();
    }
  }
  m.w = MatmulWeight{type, m.bytes.data(), cols, rows, row_bytes};
  return m;
}

MatmulWeight Panels(const MatmulWeight& w, std::vector<uint8_t>& storage) {
  storage.resize(static_cast<size_t>(w.rows * w.row_bytes));
  RepackRows(w, WeightLayout::kPanel16, w.data, storage.data(), w.rows);
  MatmulWeight p = w;
  p.data = storage.data();
  p.layout = WeightLayout::kPanel16;
  return p;
}

std::vector<uint8_t> Activations(GgmlType type, int64_t tokens, int64_t cols, uint32_t seed) {
  const std::vector<float> x = RandomFloats(tokens * cols, seed);
  std::vector<uint8_t> act(static_cast<size_t>(tokens * ActivationRowBytes(type, cols)));
  QuantizeActivations(type, x.data(), tokens, cols, cols, act.data());
  return act;
}

// Σ |dequant(w)·dequant(a)| of one row and one token.
double AbsDot(const MatmulWeight& w, int64_t r, const uint8_t* a_row) {
  std::vector<float> wf(static_cast<size_t>(w.cols)), af(static_cast<size_t>(w.cols));
  EXPECT_TRUE(Dequantize(w.type, w.row(r), wf.data(), w.cols).ok());
  EXPECT_TRUE(Dequantize(ActivationType(w.type), a_row, af.data(), w.cols).ok());
  double s = 0;
  for (int64_t i = 0; i < w.cols; ++i) s += std::fabs(static_cast<double>(wf[i]) * af[i]);
  return s;
}

int64_t ColsFor(GgmlType type) { return Traits(type).block_size == 256 ? 1024 : 1408; }

TEST(MatmulPanelTest, RepackingRoundTripsEveryByte) {
  for (GgmlType type : kPanelTypes) {
    SCOPED_TRACE(Traits(type).name);
    const Matrix m = RawBlocks(type, 48, ColsFor(type), 7);
    std::vector<uint8_t> packed;
    const MatmulWeight p = Panels(m.w, packed);
    EXPECT_NE(packed, m.bytes);  // the layout really changes the bytes
    std::vector<uint8_t> in_place = m.bytes;
    RepackRows(m.w, WeightLayout::kPanel16, in_place.data(), in_place.data(), m.w.rows);
    EXPECT_EQ(in_place, packed);
    std::vector<uint8_t> back(packed.size());
    UnpackRowsToGgml(p, packed.data(), back.data(), p.rows);
    EXPECT_EQ(back, m.bytes);
    UnpackRowsToGgml(p, in_place.data(), in_place.data(), p.rows);
    EXPECT_EQ(in_place, m.bytes);
  }
}

TEST(MatmulPanelTest, PreferredLayoutIsPanelsOnVnniIsasForWholePanels) {
  for (GgmlType type : kPanelTypes) {
    const int64_t cols = ColsFor(type);
    EXPECT_EQ(PreferredLayout(type, cols, CpuIsa::kAvx512, 1408), WeightLayout::kPanel16);
    EXPECT_EQ(PreferredLayout(type, cols, CpuIsa::kAvx512Bf16, 64), WeightLayout::kPanel16);
    EXPECT_EQ(PreferredLayout(type, cols, CpuIsa::kAvx512, 40), WeightLayout::kGgml);
    EXPECT_EQ(PreferredLayout(type, cols, CpuIsa::kAvx512NoVnni, 64), WeightLayout::kGgml);
    EXPECT_EQ(PreferredLayout(type, cols, CpuIsa::kScalar, 64), WeightLayout::kGgml);
  }
  EXPECT_EQ(PreferredLayout(GgmlType::kQ8_0, 1408, CpuIsa::kAmx, 64), WeightLayout::kGgml);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ4_K, 1024, CpuIsa::kAmx, 64), WeightLayout::kPanel16);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ4_0, 1024, CpuIsa::kAvx512, 64), WeightLayout::kGgml);
  EXPECT_EQ(PreferredLayout(GgmlType::kQ5_0, 1408, CpuIsa::kAvx2, 64), WeightLayout::kQ5_0Pairs);
}

// The scalar path reads panels back: bit-identical to the GGUF bytes' result.
TEST(MatmulPanelTest, ScalarPathMultipliesPanelsAsGgufBlocks) {
  for (GgmlType type : kPanelTypes) {
    SCOPED_TRACE(Traits(type).name);
    const int64_t rows = 32, cols = ColsFor(type), tokens = 3;
    const Matrix m = Quantized(type, rows, cols, 11);
    std::vector<uint8_t> storage;
    const MatmulWeight p = Panels(m.w, storage);
    const std::vector<uint8_t> act = Activations(type, tokens, cols, 12);
    std::vector<float> want(tokens * rows), got(tokens * rows);
    MatmulQuantized(m.w, act.data(), tokens, want.data(), rows, CpuIsa::kScalar, nullptr);
    ThreadPool pool(2);
    MatmulQuantized(p, act.data(), tokens, got.data(), rows, CpuIsa::kScalar, &pool);
    EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0);
    if (CpuSupportsIsa(CpuIsa::kAvx2)) {  // an ISA without panel tiles reads them back too
      MatmulQuantized(p, act.data(), tokens, got.data(), rows, CpuIsa::kAvx2, nullptr);
      EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0);
    }
  }
}

void ExpectTilesMatchScalar(const Matrix& m, int64_t tokens, uint32_t seed) {
  const int64_t rows = m.w.rows, cols = m.w.cols;
  std::vector<uint8_t> storage;
  const MatmulWeight p = Panels(m.w, storage);
  const std::vector<uint8_t> act = Activations(m.w.type, tokens, cols, seed);
  const int64_t ab = ActivationRowBytes(m.w.type, cols);
  std::vector<float> want(tokens * rows), got(tokens * rows);
  MatmulQuantized(m.w, act.data(), tokens, want.data(), rows, CpuIsa::kScalar, nullptr);
  MatmulQuantized(p, act.data(), tokens, got.data(), rows, CpuIsa::kAvx512, nullptr);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const double bound = 64 * AbsDot(m.w, r, act.data() + t * ab) * std::ldexp(1.0, -24);
      ASSERT_NEAR(got[t * rows + r], want[t * rows + r], bound + 1e-30)
          << "tokens " << tokens << " t " << t << " r " << r;
    }
  }
}

TEST(MatmulPanelTest, VnniTilesMatchTheScalarReference) {
  if (!CpuSupportsIsa(CpuIsa::kAvx512)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (GgmlType type : kPanelTypes) {
    SCOPED_TRACE(Traits(type).name);
    for (int64_t rows : {16, 48}) {  // one pair of panels and one alone
      const Matrix q = Quantized(type, rows, ColsFor(type), 21);
      const Matrix raw = RawBlocks(type, rows, ColsFor(type), 22);
      for (int64_t tokens : {1, 2, 3, 5, 6, 7, 13}) {
        ExpectTilesMatchScalar(q, tokens, 30 + static_cast<uint32_t>(tokens));
        ExpectTilesMatchScalar(raw, tokens, 40 + static_cast<uint32_t>(tokens));
      }
    }
  }
}

// GEMV (each token alone), GEMM (all tokens at once, any tile), two threads:
// the same bits.
TEST(MatmulPanelTest, ResultsDoNotDependOnTokensThreadsOrTiles) {
  if (!CpuSupportsIsa(CpuIsa::kAvx512)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  ThreadPool pool(2);
  for (GgmlType type : kPanelTypes) {
    SCOPED_TRACE(Traits(type).name);
    const int64_t rows = 80, cols = ColsFor(type), tokens = 19;
    const Matrix m = Quantized(type, rows, cols, 51);
    std::vector<uint8_t> storage;
    const MatmulWeight p = Panels(m.w, storage);
    const std::vector<uint8_t> act = Activations(type, tokens, cols, 52);
    const int64_t ab = ActivationRowBytes(type, cols);
    std::vector<float> all(tokens * rows), threaded(tokens * rows), alone(tokens * rows);
    MatmulQuantized(p, act.data(), tokens, all.data(), rows, CpuIsa::kAvx512, nullptr);
    MatmulQuantized(p, act.data(), tokens, threaded.data(), rows, CpuIsa::kAvx512, &pool);
    for (int64_t t = 0; t < tokens; ++t) {
      MatmulQuantized(p, act.data() + t * ab, 1, alone.data() + t * rows, rows, CpuIsa::kAvx512,
                      nullptr);
    }
    // Rows 16..63 alone: other panel pairings.
    std::vector<float> part(tokens * rows, 0.f);
    MatmulQuantized(p.Slice(16, 48), act.data(), tokens, part.data() + 16, rows, CpuIsa::kAvx512,
                    nullptr);
    EXPECT_EQ(std::memcmp(all.data(), threaded.data(), all.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(all.data(), alone.data(), all.size() * sizeof(float)), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      EXPECT_EQ(
          std::memcmp(all.data() + t * rows + 16, part.data() + t * rows + 16, 48 * sizeof(float)),
          0)
          << "t " << t;
    }
  }
}

// Q8_0 activation rows end with each block's Σqs (what the panel tiles'
// zero points use), written by every quantizer variant.
TEST(MatmulPanelTest, Q8_0ActivationRowsCarryBlockSums) {
  const int64_t cols = 256, nb = cols / 32;
  EXPECT_EQ(ActivationRowBytes(GgmlType::kQ8_0, cols), nb * 36);
  EXPECT_EQ(ActivationRowBytes(GgmlType::kQ5_0, cols), nb * 36);
  const std::vector<float> x = RandomFloats(cols, 3);
  std::vector<CpuIsa> isas = SimdIsas();
  isas.insert(isas.begin(), CpuIsa::kScalar);
  for (CpuIsa isa : isas) {
    std::vector<uint8_t> act(static_cast<size_t>(nb * 36), 0xAA);
    QuantizeActivations(GgmlType::kQ8_0, x.data(), 1, cols, cols, act.data(), isa);
    const auto* blocks = reinterpret_cast<const BlockQ8_0*>(act.data());
    for (int64_t b = 0; b < nb; ++b) {
      int sum = 0;
      for (int j = 0; j < 32; ++j) sum += blocks[b].qs[j];
      int16_t stored;
      std::memcpy(&stored, act.data() + nb * 34 + 2 * b, 2);
      EXPECT_EQ(stored, sum) << CpuIsaName(isa) << " block " << b;
    }
  }
}

}  // namespace
}  // namespace moeflow
