#include "kernels/cpu/panel_layout.h"

#include <cstring>
#include <vector>

#include "base/check.h"
#include "formats/quant_blocks.h"

namespace moeflow {
namespace {

// One field of a GGUF block and where its panel form goes: `len` bytes at
// `src_off` of each row's block become either len / 4 dword groups (16 rows
// × 4 bytes each, `xor_mask` applied) or, for 2-byte fields, 16 halves.
struct Field {
  int src_off;
  int len;
  int dst_off;
  uint8_t xor_mask;
};

// The fields of each type, in the order of panel_layout.h (dst_off in the
// 16-row panel block). Q5_0's qh masks are handled apart (a bit transpose).
int Fields(GgmlType type, Field* f) {
  switch (type) {
    case GgmlType::kQ8_0:  // d, qs[32]
      f[0] = {2, 32, 0, 0x80};
      f[1] = {0, 2, 16 * 32, 0};
      return 2;
    case GgmlType::kQ5_0:  // d, qh[4], qs[16]
      f[0] = {6, 16, 0, 0};
      f[1] = {0, 2, 16 * 20, 0};
      return 2;
    case GgmlType::kQ4_K:  // d, dmin, scales[12], qs[128]
      f[0] = {16, 128, 0, 0};
      f[1] = {4, 12, 16 * 128, 0};
      f[2] = {0, 2, 16 * 140, 0};
      f[3] = {2, 2, 16 * 142, 0};
      return 4;
    case GgmlType::kQ5_K:  // d, dmin, scales[12], qh[32], qs[128]
      f[0] = {48, 128, 0, 0};
      f[1] = {16, 32, 16 * 128, 0};
      f[2] = {4, 12, 16 * 160, 0};
      f[3] = {0, 2, 16 * 172, 0};
      f[4] = {2, 2, 16 * 174, 0};
      return 5;
    case GgmlType::kQ6_K:  // ql[128], qh[64], scales[16], d
      f[0] = {0, 128, 0, 0};
      f[1] = {128, 64, 16 * 128, 0};
      f[2] = {192, 16, 16 * 192, 0};
      f[3] = {208, 2, 16 * 208, 0};
      return 4;
    default:
      MOEFLOW_CHECK(false && "no panel layout for this type");
  }
  return 0;
}

// Q5_0: qh (bit k = bit 4 of element k) of 16 rows <-> 8 masks of 64 bits,
// mask g bit 4r + j = bit 4g + j of row r's qh. At panel offset 16 · 16.
constexpr int kQ5_0MaskOff = 16 * 16;

template <bool kPack>
void ConvertPanel(GgmlType type, int64_t row_bytes, const uint8_t* src, uint8_t* dst) {
  const GgmlTypeTraits& t = Traits(type);
  const int64_t bs = t.type_size;
  const int64_t nb = row_bytes / bs;
  MOEFLOW_CHECK(nb * bs == row_bytes);
  Field fields[5];
  const int n_fields = Fields(type, fields);
  std::vector<uint8_t> out(static_cast<size_t>(kPanelRows * row_bytes));
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* panel = (kPack ? out.data() : const_cast<uint8_t*>(src)) + b * kPanelRows * bs;
    for (int64_t r = 0; r < kPanelRows; ++r) {
      uint8_t* block = (kPack ? const_cast<uint8_t*>(src) : out.data()) + r * row_bytes + b * bs;
      for (int k = 0; k < n_fields; ++k) {
        const Field& f = fields[k];
        if (f.len == 2) {
          uint8_t* p = panel + f.dst_off + 2 * r;
          uint8_t* q = block + f.src_off;
          if (kPack)
            std::memcpy(p, q, 2);
          else
            std::memcpy(q, p, 2);
          continue;
        }
        for (int i = 0; i < f.len / 4; ++i) {
          for (int j = 0; j < 4; ++j) {
            uint8_t* p = panel + f.dst_off + 64 * i + 4 * r + j;
            uint8_t* q = block + f.src_off + 4 * i + j;
            if (kPack)
              *p = *q ^ f.xor_mask;
            else
              *q = *p ^ f.xor_mask;
          }
        }
      }
      if (type == GgmlType::kQ5_0) {
        uint32_t qh = 0;
        if (kPack) std::memcpy(&qh, block + 2, 4);
        for (int g = 0; g < 8; ++g) {
          uint64_t mask;
          std::memcpy(&mask, panel + kQ5_0MaskOff + 8 * g, 8);
          for (int j = 0; j < 4; ++j) {
            const uint64_t bit = uint64_t{1} << (4 * r + j);
            if (kPack) {
              mask = (qh >> (4 * g + j)) & 1 ? mask | bit : mask & ~bit;
            } else if (mask & bit) {
              qh |= uint32_t{1} << (4 * g + j);
            }
          }
          if (kPack) std::memcpy(panel + kQ5_0MaskOff + 8 * g, &mask, 8);
        }
        if (!kPack) std::memcpy(block + 2, &qh, 4);
      }
    }
  }
  std::memcpy(dst, out.data(), out.size());
}

}  // namespace

bool PanelTypeSupported(GgmlType type) {
  return type == GgmlType::kQ8_0 || type == GgmlType::kQ5_0 || type == GgmlType::kQ4_K ||
         type == GgmlType::kQ5_K || type == GgmlType::kQ6_K;
}

void PackPanel(GgmlType type, int64_t row_bytes, const uint8_t* src, uint8_t* dst) {
  ConvertPanel<true>(type, row_bytes, src, dst);
}

void UnpackPanel(GgmlType type, int64_t row_bytes, const uint8_t* src, uint8_t* dst) {
  ConvertPanel<false>(type, row_bytes, src, dst);
}

}  // namespace moeflow
