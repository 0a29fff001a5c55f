#include "formats/iq_grids.h"

namespace moeflow {
namespace {

#include "formats/iq_grid_codes.inc"

// Code `code` of a grid with levels `levels`: value j is levels[(code >> bits
// j) & mask], stored in byte j.
template <int N>
constexpr IqGrid64<N> Expand64(const uint16_t (&codes)[N], const int8_t* levels, int bits) {
  IqGrid64<N> g{};
  for (int e = 0; e < N; ++e) {
    uint64_t v = 0;
    for (int j = 0; j < 8; ++j) {
      const int8_t level = levels[(codes[e] >> (bits * j)) & ((1 << bits) - 1)];
      v |= static_cast<uint64_t>(static_cast<uint8_t>(level)) << (8 * j);
    }
    g.v[e] = v;
  }
  return g;
}

template <int N>
constexpr IqGrid32<N> Expand32(const uint16_t (&codes)[N], const int8_t* levels, int bits) {
  IqGrid32<N> g{};
  for (int e = 0; e < N; ++e) {
    uint32_t v = 0;
    for (int j = 0; j < 4; ++j) {
      const int8_t level = levels[(codes[e] >> (bits * j)) & ((1 << bits) - 1)];
      v |= static_cast<uint32_t>(static_cast<uint8_t>(level)) << (8 * j);
    }
    g.v[e] = v;
  }
  return g;
}

constexpr IqSignTable MakeSigns() {
  IqSignTable t{};
  for (int s = 0; s < 128; ++s) {
    int parity = 0;
    for (int b = 0; b < 7; ++b) parity ^= (s >> b) & 1;
    t.v[s] = static_cast<uint8_t>(s | (parity << 7));
  }
  return t;
}

}  // namespace

constexpr IqGrid64<256> kIq2XxsGrid = Expand64(kIq2XxsCodes, kIq2XxsLevels, 2);
constexpr IqGrid64<512> kIq2XsGrid = Expand64(kIq2XsCodes, kIq2XsLevels, 2);
constexpr IqGrid64<1024> kIq2SGrid = Expand64(kIq2SCodes, kIq2SLevels, 2);
constexpr IqGrid32<256> kIq3XxsGrid = Expand32(kIq3XxsCodes, kIq3XxsLevels, 3);
constexpr IqGrid32<512> kIq3SGrid = Expand32(kIq3SCodes, kIq3SLevels, 3);
constexpr IqGrid64<2048> kIq1SGrid = Expand64(kIq1SCodes, kIq1SLevels, 2);
constexpr IqSignTable kIqSigns = MakeSigns();

}  // namespace moeflow
