// CodePointFlags: a direct table for the BMP, binary search above it.
#include <algorithm>
#include <array>

#include "tokenizer/unicode_tables.h"

namespace moeflow {
namespace {

using unicode_internal::CodePointRun;
using unicode_internal::kCodePointRunCount;
using unicode_internal::kCodePointRuns;

uint8_t FlagsBySearch(uint32_t cp) {
  const CodePointRun* end = kCodePointRuns + kCodePointRunCount;
  const CodePointRun* it = std::upper_bound(
      kCodePointRuns, end, cp, [](uint32_t c, const CodePointRun& run) { return c < run.first; });
  return (it - 1)->flags;
}

const std::array<uint8_t, 0x10000>& BmpTable() {
  static const auto* const table = [] {
    auto* t = new std::array<uint8_t, 0x10000>();
    for (int i = 0; i < kCodePointRunCount; ++i) {
      const uint32_t first = kCodePointRuns[i].first;
      const uint32_t last = i + 1 < kCodePointRunCount ? kCodePointRuns[i + 1].first : 0x110000;
      for (uint32_t c = first; c < last && c < 0x10000; ++c) (*t)[c] = kCodePointRuns[i].flags;
    }
    return t;
  }();
  return *table;
}

}  // namespace

uint8_t CodePointFlags(uint32_t cp) {
  if (cp < 0x10000) return BmpTable()[cp];
  if (cp > 0x10FFFF) return 0;
  return FlagsBySearch(cp);
}

}  // namespace moeflow
