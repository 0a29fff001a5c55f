// WeightLayout::kPanel16 (matmul.h): 16 rows of a quantized matrix stored
// together, block by block, so that one 512-bit register holds the same four
// consecutive quants of 16 rows — the operand vpdpbusd wants when its 16
// int32 lanes are 16 output rows and one token's 4 activation bytes are
// broadcast to all of them. Rows never need a horizontal sum, and each
// unpacked weight register serves every token of a tile.
//
// Role in the data flow: the engine and the expert workers repack Q8_0, Q5_0,
// Q4_K, Q5_K and Q6_K matrices into panels at load on AVX-512 VNNI hosts
// (PreferredLayout); matmul_panel_avx512.cc multiplies them; the scalar path
// reads panels back into GGUF blocks (UnpackPanel) for the reference vec_dot.
//
// A panel keeps the bytes of its 16 rows: 16 · row_bytes at the first row's
// offset, so rows, experts and heads keep their positions. Inside, block b
// of all 16 rows comes at b · 16 · type_size, laid out per type ("dword
// group" = 16 rows × 4 bytes, row r's 4 bytes at 4r):
//   Q8_0 (34 B): 8 dword groups g: qs[4g .. 4g+3] XOR 0x80 (q + 128, for
//     vpdpbusd's unsigned operand), then 16 × d (fp16).
//   Q5_0 (22 B): 4 dword groups i of qs[4i .. 4i+3] (low nibbles: elements
//     4i + j; high nibbles: elements 16 + 4i + j), then 8 × 64-bit masks,
//     mask g bit 4r + j = bit 4 of element 4g + j of row r, then 16 × d.
//   Q4_K (144 B): 32 dword groups of qs (group 8c + i = qs[32c + 4i ..]: low
//     nibbles sub-block 2c, high nibbles sub-block 2c + 1), then 3 dword
//     groups of scales (bytes 0-3, 4-7, 8-11), then 16 × d, 16 × dmin.
//   Q5_K (176 B): 32 dword groups of qs as Q4_K, 8 dword groups of qh
//     (group i = qh[4i .. 4i+3]: bit 2c / 2c + 1 of byte l is the fifth bit
//     of element l of sub-block 2c / 2c + 1), 3 dword groups of scales,
//     then 16 × d, 16 × dmin.
//   Q6_K (210 B): 32 dword groups of ql (group 8k + i = ql[32k + 4i ..]),
//     16 dword groups of qh (group 8h + i = qh[32h + 4i ..]), 4 dword groups
//     of scales, then 16 × d.
// Matrices need rows % 16 == 0 (slices start on a panel) and whole blocks.
//
// Thread-safety: pure functions. Failure: none (shapes are CHECKed by the
// callers in weight_layout.cc).
#ifndef MOEFLOW_KERNELS_CPU_PANEL_LAYOUT_H_
#define MOEFLOW_KERNELS_CPU_PANEL_LAYOUT_H_

#include <cstdint>

#include "formats/ggml_types.h"

namespace moeflow {

inline constexpr int64_t kPanelRows = 16;

// Whether kPanel16 exists for `type` (Q8_0, Q5_0, Q4_K, Q5_K, Q6_K).
bool PanelTypeSupported(GgmlType type);

// One panel: 16 rows of `row_bytes` GGUF bytes at `src` (row r at
// src + r · row_bytes) -> the panel at `dst`, or back. src and dst may be
// the same memory.
void PackPanel(GgmlType type, int64_t row_bytes, const uint8_t* src, uint8_t* dst);
void UnpackPanel(GgmlType type, int64_t row_bytes, const uint8_t* src, uint8_t* dst);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_PANEL_LAYOUT_H_
