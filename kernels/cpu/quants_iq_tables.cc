// The search structures of ggml's IQ quantizers (what its iq2xs_init_impl /
// iq3xs_init_impl build), derived here from the grids of formats/iq_grids.h:
//   - each grid entry as "positions" 2 l + 1 per value, l the value's level
//     index (0, 1, 2 for IQ1 / IQ2; 0..7 for IQ3), the space the quantizers
//     search in;
//   - a map from a packed level code (2 or 3 bits per value) to its entry,
//     or, for a code off the grid, to its list of neighbours: the entries at
//     the `nwant` smallest squared distances from it, by (distance, entry)
//     ascending — the order a sort of (distance, entry) pairs gives, which is
//     what ggml's qsort of them gives.
// Built once per grid on first use (thread-safe static initialization).
// Also the sign split the IQ2 / IQ3 quantizers share.
#include <algorithm>
#include <array>
#include <vector>

#include "base/check.h"
#include "formats/iq_grids.h"
#include "kernels/cpu/quants_internal.h"

namespace moeflow {
namespace quants_internal {
namespace {

// Entry e's value j as an int8 (IQ1 grids hold -1, 0, 1; IQ2 / IQ3 positive).
template <typename Grid>
int8_t GridValue(const Grid& g, int e, int j) {
  return static_cast<int8_t>((static_cast<uint64_t>(g.v[e]) >> (8 * j)) & 0xff);
}

template <typename Grid>
IqSearchGrid Build(const Grid& grid, int entries, int width, int bits, int nwant) {
  IqSearchGrid s;
  s.width = width;
  s.bits = bits;
  // The levels, ascending: a value's level index l is its rank.
  std::vector<int8_t> levels;
  for (int e = 0; e < entries; ++e) {
    for (int j = 0; j < width; ++j) levels.push_back(GridValue(grid, e, j));
  }
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  MOEFLOW_CHECK(static_cast<int>(levels.size()) <= (1 << bits));
  MOEFLOW_CHECK(nwant >= 1 && nwant <= 3);
  const int map_size = bits == 2 ? 43692 : 4096;  // every code of levels 0..2 (IQ2), 0..7 (IQ3)
  s.pos.resize(static_cast<size_t>(entries));
  s.map.assign(static_cast<size_t>(map_size), -1);
  for (int e = 0; e < entries; ++e) {
    uint32_t code = 0;
    for (int j = 0; j < width; ++j) {
      const int l = static_cast<int>(
          std::lower_bound(levels.begin(), levels.end(), GridValue(grid, e, j)) - levels.begin());
      s.pos[e][j] = static_cast<int8_t>(2 * l + 1);
      code |= static_cast<uint32_t>(l) << (bits * j);
    }
    s.map[code] = e;
  }
  const int mask = (1 << bits) - 1;
  std::vector<int> d2(static_cast<size_t>(entries));
  for (int code = 0; code < map_size; ++code) {
    if (s.map[code] >= 0) continue;
    int pos[8];
    for (int j = 0; j < width; ++j) pos[j] = 2 * ((code >> (bits * j)) & mask) + 1;
    // The nwant smallest distinct distances, ascending (nwant ≤ 3).
    int smallest[3];
    int n_smallest = 0;
    for (int e = 0; e < entries; ++e) {
      int d = 0;
      for (int j = 0; j < width; ++j) d += (s.pos[e][j] - pos[j]) * (s.pos[e][j] - pos[j]);
      d2[e] = d;
      int k = 0;
      while (k < n_smallest && smallest[k] < d) ++k;
      if (k < n_smallest && smallest[k] == d) continue;
      if (k >= nwant) continue;
      if (n_smallest < nwant) ++n_smallest;
      for (int m = n_smallest - 1; m > k; --m) smallest[m] = smallest[m - 1];
      smallest[k] = d;
    }
    const size_t start = s.neighbours.size();
    s.map[code] = -static_cast<int32_t>(start) - 1;
    s.neighbours.push_back(0);
    for (int k = 0; k < n_smallest; ++k) {
      const int d = smallest[k];
      for (int e = 0; e < entries; ++e) {
        if (d2[e] == d) s.neighbours.push_back(static_cast<uint16_t>(e));
      }
    }
    s.neighbours[start] = static_cast<uint16_t>(s.neighbours.size() - start - 1);
  }
  return s;
}

}  // namespace

uint8_t SplitSigns8(const float* xb, const float* weight, bool even, float* xval) {
  int nflip = 0;
  uint8_t s = 0;
  for (int i = 0; i < 8; ++i) {
    if (xb[i] >= 0.0f) {
      xval[i] = xb[i];
    } else {
      xval[i] = -xb[i];
      ++nflip;
      s = static_cast<uint8_t>(s | (1 << i));
    }
  }
  if (even && nflip % 2 != 0) {
    int imin = 0;
    float min = weight[0] * xb[0] * xb[0];
    for (int i = 1; i < 8; ++i) {
      const float ax = weight[i] * xb[i] * xb[i];
      if (ax < min) {
        min = ax;
        imin = i;
      }
    }
    xval[imin] = -xval[imin];
    s = static_cast<uint8_t>(s ^ (1 << imin));
  }
  return s;
}

const IqSearchGrid& SearchGrid(IqGridId id) {
  switch (id) {
    case IqGridId::kIq2Xxs: {
      static const IqSearchGrid g = Build(kIq2XxsGrid, 256, 8, 2, 2);
      return g;
    }
    case IqGridId::kIq2Xs: {
      static const IqSearchGrid g = Build(kIq2XsGrid, 512, 8, 2, 2);
      return g;
    }
    case IqGridId::kIq2S: {
      static const IqSearchGrid g = Build(kIq2SGrid, 1024, 8, 2, 1);
      return g;
    }
    case IqGridId::kIq1S: {
      static const IqSearchGrid g = Build(kIq1SGrid, 2048, 8, 2, 3);
      return g;
    }
    case IqGridId::kIq3Xxs: {
      static const IqSearchGrid g = Build(kIq3XxsGrid, 256, 4, 3, 2);
      return g;
    }
    case IqGridId::kIq3S: {
      static const IqSearchGrid g = Build(kIq3SGrid, 512, 4, 3, 3);
      return g;
    }
  }
  MOEFLOW_CHECK(false && "unknown IQ grid");
  static const IqSearchGrid empty;
  return empty;
}

}  // namespace quants_internal
}  // namespace moeflow
