// AMX int8 build of the Q8_0 GEMM: the kAmx variant of kernels/cpu/matmul
// for prefill-sized batches (matmul.cc sends calls with fewer tokens to the
// AVX-512 VNNI tiles). Compiled with -mamx-tile -mamx-int8 in this
// translation unit only; called only after CPUID has reported AMX-TILE and
// AMX-INT8 and the kernel has granted XTILEDATA (AmxRequestPermission).
//
// Per 32-element Q8_0 block b, for 16 weight rows × 16 tokens:
//
//   A (tile 1): 16 rows × 32 bytes — the rows' qs of block b, loaded in place
//               from the GGUF blocks (stride = weight row bytes; tail rows
//               from a zero-padded copy)
//   B (tile 2): 8 rows × 64 bytes — the tokens' qs of block b in AMX's VNNI
//               layout, B[k / 4][4 n + k % 4] = act[n].qs[k] (repacked once
//               per call, zero for missing tokens)
//   C (tile 0): 16 × 16 int32 = A · B (_tile_dpbssd: s8 × s8, exact)
//
// then y[m][n] += float(C[m][n]) · (d_w[m] · d_a[n]) in block order, which is
// the scalar reference's arithmetic (compiled without FMA contraction), so
// the result is the scalar reference's bit for bit. One block per tile
// product keeps the per-block scales exact; the cost is one tile store per
// block. Not run on AMX hardware yet (the development machine has none):
// tests/kernels/cpu/matmul_amx_emulated_test.cc runs this file with the tile
// instructions modelled in software (bit-equal to the scalar reference), and
// matmul_variants_test.cc runs it for real where CPUID reports AMX.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/matmul_internal.h"
#include "formats/quant_blocks.h"

namespace moeflow {
namespace {

constexpr int kTileRows = 16;    // weight rows per tile
constexpr int kTileTokens = 16;  // tokens per tile

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg operand");

void ConfigureTiles() {
  TileConfig cfg;
  cfg.palette_id = 1;
  cfg.rows[0] = kTileRows;  // C: 16 rows × 16 int32
  cfg.colsb[0] = kTileTokens * 4;
  cfg.rows[1] = kTileRows;  // A: 16 rows × 32 s8
  cfg.colsb[1] = kQK;
  cfg.rows[2] = kQK / 4;  // B: 8 rows × (16 tokens × 4 s8)
  cfg.colsb[2] = kTileTokens * 4;
  _tile_loadconfig(&cfg);
}

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

// Per-thread scratch, grown as needed (no allocation once warm).
struct AmxScratch {
  std::vector<int8_t> b;    // [token group][block][8][64]
  std::vector<float> d_a;   // [token group][block][16]
  std::vector<float> acc;   // [16 rows][16 tokens]
};

}  // namespace

bool AmxRequestPermission() {
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

void AmxGemmQ8_0(int64_t cols, const uint8_t* w, int64_t w_row_bytes, int64_t n_rows,
                 const uint8_t* act, int64_t act_row_bytes, int64_t n_tokens, float* y,
                 int64_t y_stride) {
  const int64_t n_blocks = cols / kQK;
  const int64_t n_groups = (n_tokens + kTileTokens - 1) / kTileTokens;
  thread_local AmxScratch s;
  s.b.assign(static_cast<size_t>(n_groups * n_blocks * (kQK / 4) * kTileTokens * 4), 0);
  s.d_a.assign(static_cast<size_t>(n_groups * n_blocks * kTileTokens), 0.f);
  s.acc.resize(kTileRows * kTileTokens);
  // Repack the activations into B tiles (VNNI layout) and their scales.
  for (int64_t t = 0; t < n_tokens; ++t) {
    const BlockQ8_0* a = reinterpret_cast<const BlockQ8_0*>(act + t * act_row_bytes);
    const int64_t g = t / kTileTokens, n = t % kTileTokens;
    for (int64_t b = 0; b < n_blocks; ++b) {
      int8_t* tile = s.b.data() + ((g * n_blocks + b) * (kQK / 4)) * kTileTokens * 4;
      for (int k = 0; k < kQK; ++k) tile[(k / 4) * kTileTokens * 4 + n * 4 + k % 4] = a[b].qs[k];
      s.d_a[static_cast<size_t>((g * n_blocks + b) * kTileTokens + n)] = HalfToFloat(a[b].d);
    }
  }
  ConfigureTiles();
  alignas(64) int32_t c[kTileRows * kTileTokens];
  alignas(64) int8_t a_pad[kTileRows * kQK];
  float d_w[kTileRows];
  for (int64_t r0 = 0; r0 < n_rows; r0 += kTileRows) {
    const int64_t rows = n_rows - r0 < kTileRows ? n_rows - r0 : kTileRows;
    for (int64_t g = 0; g < n_groups; ++g) {
      const int64_t t0 = g * kTileTokens;
      const int64_t tokens = n_tokens - t0 < kTileTokens ? n_tokens - t0 : kTileTokens;
      float* acc = s.acc.data();
      std::memset(acc, 0, sizeof(float) * kTileRows * kTileTokens);
      for (int64_t b = 0; b < n_blocks; ++b) {
        for (int64_t m = 0; m < rows; ++m) {
          const BlockQ8_0* wr = reinterpret_cast<const BlockQ8_0*>(w + (r0 + m) * w_row_bytes);
          d_w[m] = HalfToFloat(wr[b].d);
        }
        if (rows == kTileRows) {
          _tile_loadd(1, w + r0 * w_row_bytes + b * sizeof(BlockQ8_0) + sizeof(uint16_t),
                      w_row_bytes);
        } else {
          std::memset(a_pad, 0, sizeof(a_pad));
          for (int64_t m = 0; m < rows; ++m) {
            const BlockQ8_0* wr = reinterpret_cast<const BlockQ8_0*>(w + (r0 + m) * w_row_bytes);
            std::memcpy(a_pad + m * kQK, wr[b].qs, kQK);
          }
          _tile_loadd(1, a_pad, kQK);
        }
        _tile_loadd(2, s.b.data() + ((g * n_blocks + b) * (kQK / 4)) * kTileTokens * 4,
                    kTileTokens * 4);
        _tile_zero(0);
        _tile_dpbssd(0, 1, 2);
        _tile_stored(0, c, kTileTokens * 4);
        const float* d_a = s.d_a.data() + (g * n_blocks + b) * kTileTokens;
        for (int64_t m = 0; m < rows; ++m) {
          for (int64_t n = 0; n < tokens; ++n) {
            acc[m * kTileTokens + n] +=
                static_cast<float>(c[m * kTileTokens + n]) * (d_w[m] * d_a[n]);
          }
        }
      }
      for (int64_t m = 0; m < rows; ++m) {
        for (int64_t n = 0; n < tokens; ++n) y[(t0 + n) * y_stride + r0 + m] = acc[m * kTileTokens + n];
      }
    }
  }
  _tile_release();
}

}  // namespace moeflow
