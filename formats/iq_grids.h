// The fixed grids of ggml's IQ formats (IQ1_S/M, IQ2_XXS/XS/S, IQ3_XXS/S) and
// the non-uniform levels of IQ4_NL / IQ4_XS: part of the file format, since a
// block stores only indices into them.
//
// Role in the data flow: the dequantizers and quantizers (kernels/cpu/quants)
// and the IQ matmul kernels look values up here. Each grid entry packs 8 (or
// 4) values, one per byte, value j in byte j (little-endian), exactly as
// ggml's iq*_grid tables; IQ2 / IQ3 values are positive magnitudes (signs are
// stored separately), IQ1 values are -1, 0 or 1 as int8.
//
// Where they come from: formats/iq_grid_codes.inc, written by a tool outside
// this repository that dequantizes crafted blocks with ggml itself and reads
// each grid entry back (formats/README.md); the tables below are expanded
// from those codes at compile time.
//
// Thread-safety: immutable constants. No failure modes.
#ifndef MOEFLOW_FORMATS_IQ_GRIDS_H_
#define MOEFLOW_FORMATS_IQ_GRIDS_H_

#include <cstdint>

namespace moeflow {

template <int N>
struct IqGrid64 {
  uint64_t v[N];
};
template <int N>
struct IqGrid32 {
  uint32_t v[N];
};

extern const IqGrid64<256> kIq2XxsGrid;  // levels 8, 25, 43
extern const IqGrid64<512> kIq2XsGrid;   // levels 8, 25, 43
extern const IqGrid64<1024> kIq2SGrid;   // levels 8, 25, 43
extern const IqGrid32<256> kIq3XxsGrid;  // levels 4, 12, ..., 52, 62
extern const IqGrid32<512> kIq3SGrid;    // levels 1, 3, ..., 15
extern const IqGrid64<2048> kIq1SGrid;   // int8 -1, 0, 1

// IQ2_XXS / IQ2_XS / IQ3_XXS sign index (7 bits) -> the signs of 8 values
// (bit j set: value j negated): the 7 bits and, as bit 7, their parity (an
// even number of negated values), as ggml's ksigns_iq2xs.
struct IqSignTable {
  uint8_t v[128];
};
extern const IqSignTable kIqSigns;

// IQ1_S / IQ1_M: the shift added to every grid value, ±1/8 (ggml's
// IQ1S_DELTA / IQ1M_DELTA).
inline constexpr float kIq1Delta = 0.125f;

// The 16 levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace moeflow

#endif  // MOEFLOW_FORMATS_IQ_GRIDS_H_
