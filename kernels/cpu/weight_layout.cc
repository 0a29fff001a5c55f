// Load-time weight repacking (matmul.h: WeightLayout, PreferredLayout,
// RepackRows, UnpackRowsToGgml).
#include <cstring>

#include "base/check.h"
#include "base/knobs.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/panel_layout.h"

namespace moeflow {

// ---------------------------------------------------------------------------
// Repacked layouts (matmul.h: WeightLayout).

namespace {

bool LayoutAllowed(GgmlType type, int64_t cols, WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kGgml:
      return true;
    case WeightLayout::kQ5_0Pairs:
      return type == GgmlType::kQ5_0 && cols > 0 && cols % (2 * kQK) == 0 &&
             cols <= kQ5_0PairsMaxCols;
    case WeightLayout::kPanel16:
      return PanelTypeSupported(type) && cols > 0 && cols % Traits(type).block_size == 0;
  }
  return false;
}

// Blocks 2p, 2p + 1 of a Q5_0 row -> one kQ5_0Pairs pair (and back). `in`
// and `out` may be the same 44 bytes.
void PackQ5_0Pair(const uint8_t* in, uint8_t* out) {
  BlockQ5_0 b[2];
  std::memcpy(b, in, sizeof(b));
  uint8_t p[kQ5_0PairBytes];
  // Low 4 bits: qs byte j holds elements j (low nibble) and j + 16 (high).
  for (int j = 0; j < kQK / 2; ++j) {
    p[j] = static_cast<uint8_t>((b[0].qs[j] & 0x0F) | (b[1].qs[j] << 4));
    p[j + kQK / 2] = static_cast<uint8_t>((b[0].qs[j] >> 4) | (b[1].qs[j] & 0xF0));
  }
  // Fifth bits: bits k, 8 + k, 16 + k, 24 + k of a block's qh become bits
  // 0..3 of plane byte k (one multiply gathers them into bits 24..27; the
  // 16 partial products land on distinct bits, so nothing carries).
  const uint32_t qh0 = LoadU32(b[0].qh), qh1 = LoadU32(b[1].qh);
  for (int k = 0; k < 8; ++k) {
    const uint32_t g0 = (((qh0 >> k) & 0x01010101u) * 0x01020408u) >> 24;
    const uint32_t g1 = (((qh1 >> k) & 0x01010101u) * 0x01020408u) >> 24;
    p[32 + k] = static_cast<uint8_t>((g0 & 0x0F) | ((g1 & 0x0F) << 4));
  }
  std::memcpy(p + 40, &b[0].d, 2);
  std::memcpy(p + 42, &b[1].d, 2);
  std::memcpy(out, p, sizeof(p));
}

void UnpackQ5_0Pair(const uint8_t* in, uint8_t* out) {
  uint8_t p[kQ5_0PairBytes];
  std::memcpy(p, in, sizeof(p));
  BlockQ5_0 b[2] = {};
  for (int blk = 0; blk < 2; ++blk) {
    uint8_t q[kQK];
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) {
      const int k = j % 8, lane = j / 8;
      const int hi = (p[32 + k] >> (4 * blk + lane)) & 1;
      q[j] = static_cast<uint8_t>(((p[j] >> (4 * blk)) & 0x0F) | (hi << 4));
      qh |= static_cast<uint32_t>(hi) << j;
    }
    for (int j = 0; j < kQK / 2; ++j) {
      b[blk].qs[j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + kQK / 2] & 0x0F) << 4));
    }
    std::memcpy(b[blk].qh, &qh, 4);
    std::memcpy(&b[blk].d, p + 40 + 2 * blk, 2);
  }
  std::memcpy(out, b, sizeof(b));
}

}  // namespace

const char* WeightLayoutName(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kGgml:
      return "ggml";
    case WeightLayout::kQ5_0Pairs:
      return "q5_0_pairs";
    case WeightLayout::kPanel16:
      return "panel16";
  }
  return "?";
}

WeightLayout PreferredLayout(GgmlType type, int64_t cols, CpuIsa isa, int64_t rows) {
  static const bool repack = KnobBool(Knob::kRepack);
  if (!repack) return WeightLayout::kGgml;
  if (isa == CpuIsa::kAvx2 && LayoutAllowed(type, cols, WeightLayout::kQ5_0Pairs)) {
    return WeightLayout::kQ5_0Pairs;
  }
  // AMX keeps Q8_0 in the GGUF blocks its tile loads read.
  const bool vnni = isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16 ||
                    (isa == CpuIsa::kAmx && type != GgmlType::kQ8_0);
  if (vnni && rows % kPanelRows == 0 && LayoutAllowed(type, cols, WeightLayout::kPanel16)) {
    return WeightLayout::kPanel16;
  }
  return WeightLayout::kGgml;
}

namespace {

// `convert` on every 44-byte pair of `rows` rows of `w` (kQ5_0Pairs shape).
void ForEachQ5_0Pair(const MatmulWeight& w, const uint8_t* src, uint8_t* dst, int64_t rows,
                     void (*convert)(const uint8_t*, uint8_t*)) {
  const int64_t pairs = w.cols / (2 * kQK);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t off = r * w.row_bytes + i * kQ5_0PairBytes;
      convert(src + off, dst + off);
    }
  }
}

}  // namespace

void RepackRows(const MatmulWeight& w, WeightLayout to, const uint8_t* src, uint8_t* dst,
                int64_t rows) {
  MOEFLOW_CHECK(w.layout == WeightLayout::kGgml);
  MOEFLOW_CHECK(LayoutAllowed(w.type, w.cols, to));
  if (to == WeightLayout::kGgml) {
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(rows * w.row_bytes));
    return;
  }
  if (to == WeightLayout::kPanel16) {
    MOEFLOW_CHECK(rows % kPanelRows == 0);
    const int64_t panel_bytes = kPanelRows * w.row_bytes;
    for (int64_t p = 0; p < rows / kPanelRows; ++p) {
      PackPanel(w.type, w.row_bytes, src + p * panel_bytes, dst + p * panel_bytes);
    }
    return;
  }
  ForEachQ5_0Pair(w, src, dst, rows, PackQ5_0Pair);
}

void UnpackRowsToGgml(const MatmulWeight& w, const uint8_t* src, uint8_t* dst, int64_t rows) {
  if (w.layout == WeightLayout::kGgml) {
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(rows * w.row_bytes));
    return;
  }
  MOEFLOW_CHECK(LayoutAllowed(w.type, w.cols, w.layout));
  if (w.layout == WeightLayout::kPanel16) {
    MOEFLOW_CHECK(rows % kPanelRows == 0);
    const int64_t panel_bytes = kPanelRows * w.row_bytes;
    for (int64_t p = 0; p < rows / kPanelRows; ++p) {
      UnpackPanel(w.type, w.row_bytes, src + p * panel_bytes, dst + p * panel_bytes);
    }
    return;
  }
  ForEachQ5_0Pair(w, src, dst, rows, UnpackQ5_0Pair);
}

}  // namespace moeflow
