// The AMX Q8_0 GEMM (kernels/cpu/matmul_amx.cc) with its tile instructions
// replaced by a scalar model of their architectural semantics (Intel SDM:
// TILELOADD, TILESTORED, TILEZERO, TDPBSSD), run on any CPU against the
// scalar reference. This checks the kernel's tile configuration, operand
// layout (in-place A rows, VNNI-repacked B) and edge handling, as far as the
// model of the instructions is right; it is not a run on AMX hardware
// (matmul_variants_test does that where AMX exists).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace amx_model {

struct Tile {
  int rows = 0;
  int colsb = 0;
  uint8_t data[16][64] = {};
};
Tile tiles[8];

void LoadConfig(const void* config) {
  const uint8_t* c = static_cast<const uint8_t*>(config);
  if (c[0] != 1) std::abort();  // palette 1 only
  for (int t = 0; t < 8; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, c + 16 + 2 * t, 2);
    tiles[t].colsb = colsb;
    tiles[t].rows = c[48 + t];
    if (tiles[t].colsb > 64 || tiles[t].rows > 16) std::abort();
  }
}
void Release() {
  for (Tile& t : tiles) t = Tile();
}
void Load(int t, const void* base, int64_t stride) {
  for (int r = 0; r < tiles[t].rows; ++r) {
    std::memcpy(tiles[t].data[r], static_cast<const uint8_t*>(base) + r * stride,
                static_cast<size_t>(tiles[t].colsb));
  }
}
void Store(int t, void* base, int64_t stride) {
  for (int r = 0; r < tiles[t].rows; ++r) {
    std::memcpy(static_cast<uint8_t*>(base) + r * stride, tiles[t].data[r],
                static_cast<size_t>(tiles[t].colsb));
  }
}
void Zero(int t) { std::memset(tiles[t].data, 0, sizeof(tiles[t].data)); }
// C[m][n] += Σ_k Σ_j A[m][4k + j] · B[k][4n + j], s8 × s8 into s32.
void Dpbssd(int c, int a, int b) {
  const Tile &ta = tiles[a], &tb = tiles[b];
  Tile& tc = tiles[c];
  if (ta.rows != tc.rows || ta.colsb / 4 != tb.rows || tb.colsb != tc.colsb) std::abort();
  for (int m = 0; m < tc.rows; ++m) {
    for (int n = 0; n < tc.colsb / 4; ++n) {
      int32_t acc;
      std::memcpy(&acc, &tc.data[m][4 * n], 4);
      for (int k = 0; k < ta.colsb / 4; ++k) {
        for (int j = 0; j < 4; ++j) {
          acc += static_cast<int8_t>(ta.data[m][4 * k + j]) *
                 static_cast<int8_t>(tb.data[k][4 * n + j]);
        }
      }
      std::memcpy(&tc.data[m][4 * n], &acc, 4);
    }
  }
}

}  // namespace amx_model

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbssd
#define _tile_loadconfig(cfg) amx_model::LoadConfig(cfg)
#define _tile_release() amx_model::Release()
#define _tile_loadd(t, base, stride) amx_model::Load(t, base, stride)
#define _tile_stored(t, base, stride) amx_model::Store(t, base, stride)
#define _tile_zero(t) amx_model::Zero(t)
#define _tile_dpbssd(c, a, b) amx_model::Dpbssd(c, a, b)
// The library's own AmxGemmQ8_0 is linked too: rename this copy.
#define AmxGemmQ8_0 EmulatedAmxGemmQ8_0
#define AmxRequestPermission EmulatedAmxRequestPermission
#include "kernels/cpu/matmul_amx.cc"
#undef AmxGemmQ8_0
#undef AmxRequestPermission

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

std::vector<uint8_t> QuantizeQ8_0(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(cols));
  const int64_t row_bytes = RowBytes(GgmlType::kQ8_0, cols).value();
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& x : v) x = dist(rng) + 0.01f;
    EXPECT_TRUE(Quantize(GgmlType::kQ8_0, v.data(), out.data() + r * row_bytes, cols).ok());
  }
  return out;
}

TEST(MatmulAmxEmulatedTest, BitEqualToScalarReference) {
  const VecDotFn ref = GetVecDot(GgmlType::kQ8_0, CpuIsa::kScalar);
  const int64_t cols = 1408;
  const int64_t row_bytes = RowBytes(GgmlType::kQ8_0, cols).value();
  for (int64_t rows : {16, 40, 203}) {
    for (int64_t tokens : {1, 16, 37}) {
      const std::vector<uint8_t> w = QuantizeQ8_0(rows, cols, static_cast<uint32_t>(rows));
      std::mt19937 rng(static_cast<uint32_t>(tokens));
      std::normal_distribution<float> dist(0.f, 1.f);
      std::vector<float> x(static_cast<size_t>(tokens * cols));
      for (float& v : x) v = dist(rng) + 0.01f;
      const int64_t ab = ActivationRowBytes(GgmlType::kQ8_0, cols);
      std::vector<uint8_t> act(static_cast<size_t>(tokens * ab));
      QuantizeActivations(GgmlType::kQ8_0, x.data(), tokens, cols, cols, act.data());
      // y with a row stride wider than rows, to catch stride mix-ups.
      const int64_t y_stride = rows + 3;
      std::vector<float> y(static_cast<size_t>(tokens * y_stride), -7.f);
      EmulatedAmxGemmQ8_0(cols, w.data(), row_bytes, rows, act.data(), ab, tokens, y.data(),
                          y_stride);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          ASSERT_EQ(y[static_cast<size_t>(t * y_stride + r)],
                    ref(cols, w.data() + r * row_bytes, act.data() + t * ab))
              << "rows=" << rows << " tokens=" << tokens << " r=" << r << " t=" << t;
        }
        for (int64_t r = rows; r < y_stride; ++r) {
          ASSERT_EQ(y[static_cast<size_t>(t * y_stride + r)], -7.f) << "wrote past the rows";
        }
      }
    }
  }
}

}  // namespace
}  // namespace moeflow
