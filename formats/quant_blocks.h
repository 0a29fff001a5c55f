// Packed layouts of ggml's quantized blocks, byte for byte as GGUF stores them.
//
// Role in the data flow: quants.cc (the scalar reference) and the per-ISA
// expert kernels read weight bytes through these structs, so they are the one
// place where the on-disk layout is written down. Field order and sizes follow
// ggml's block_* structs (ggml-common.h); the static_asserts pin the sizes to
// the type table in formats/ggml_types.cc.
//
// Conventions: `uint16_t` scale fields hold IEEE half (or, where named, bf16)
// bits; convert with Fp16ToFp32 from quants.h. Little-endian hosts only (as
// ggml). Plain data: no thread-safety concerns, no failure modes.
#ifndef MOEFLOW_FORMATS_QUANT_BLOCKS_H_
#define MOEFLOW_FORMATS_QUANT_BLOCKS_H_

#include <cstdint>

namespace moeflow {

// Elements per block of the legacy formats (Q4_0 ... Q8_0).
inline constexpr int kQK = 32;
// Elements per super-block of the K-quants and IQ4_XS.
inline constexpr int kQK_K = 256;
// Bytes of the packed 6-bit scales and mins of Q4_K / Q5_K (and Q3_K's scales).
inline constexpr int kKScaleSize = 12;

#pragma pack(push, 1)

// x[i] = d * (q[i] - 8); element j in the low nibble of qs[j], element j + 16
// in the high nibble.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};

// x[i] = d * q[i] + m; nibbles as Q4_0.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};

// x[i] = d * (q[i] - 16); the low 4 bits as Q4_0, bit 4 of element j is bit j
// of the little-endian u32 qh.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

// x[i] = d * q[i] + m; bits as Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

// x[i] = d * qs[i].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};

// 16 sub-blocks of 16: x = d * (scales[s] & 15) * q - dmin * (scales[s] >> 4),
// q 2 bits. qs holds two 128-element halves; in each, byte l carries elements
// l, l + 32, l + 64, l + 96 in bit pairs 0-1, 2-3, 4-5, 6-7.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};

// 16 sub-blocks of 16: x = d * (scale6 - 32) * (q - 4), q 3 bits: low 2 bits
// packed as Q2_K, the high bit of element e in bit e / 32 of hmask[e % 32]
// (set means "no -4"). scales: 16 6-bit values (low nibbles in bytes 0-7,
// high 2-bit pairs in bytes 8-11).
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[kKScaleSize];
  uint16_t d;
};

// 8 sub-blocks of 32: x = d * sc * q - dmin * m, q 4 bits, sc/m 6-bit packed
// in `scales` (see ScaleMinK4 in quants.cc). qs holds four 64-element
// chunks of 32 bytes: low nibbles the first 32 elements, high nibbles the next.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};

// As Q4_K with a fifth bit: element 64c + l (l < 32) has its bit 4 in bit 2c
// of qh[l], element 64c + 32 + l in bit 2c + 1.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};

// 16 sub-blocks of 16: x = d * scales[s] * (q - 32), q 6 bits: 4 low bits in
// ql, 2 high bits in qh (two 128-element halves of 64 ql / 32 qh bytes).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

// Activation format of the K-quant dot products: x = d * qs, d a float;
// bsums[g] = sum of qs[16g .. 16g + 15].
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

// 8 sub-blocks of 32: x = d * (ls - 32) * kIq4nlValues[q] (iq_grids.h), q 4 bits (nibbles
// as Q4_0 within each 16-byte group), ls 6 bits: low 4 in scales_l, high 2 in
// scales_h.
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQK_K / 64];
  uint8_t qs[kQK_K / 2];
};

// The IQ ("i-quant") formats: 8 or 4 values at a time come from a fixed grid
// (formats/iq_grids.h) chosen by an index, with separate sign bits (IQ2, IQ3)
// or a shift (IQ1). Element order within a block is the natural one: group g
// of 8 values covers elements 8g .. 8g + 7. `ls` below is a sub-block scale.

// 2.0625 bpw. Per 32 elements ib: qs[4ib..4ib+3] as two u32 a0, a1: bytes of
// a0 index kIq2XxsGrid for groups 0-3; a1 bits 7l..7l+6 the sign index of
// group l (kIqSigns), bits 28-31 ls: x = d * (0.5 + ls) * 0.25 * grid * sign.
struct BlockIQ2_XXS {
  uint16_t d;
  uint16_t qs[kQK_K / 8];
};

// 2.3125 bpw. qs[g]: bits 0-8 index kIq2XsGrid, bits 9-15 the sign index of
// group g; scales[ib] low nibble for groups 4ib, 4ib+1, high for 4ib+2, 4ib+3:
// x = d * (0.5 + ls) * 0.25 * grid * sign.
struct BlockIQ2_XS {
  uint16_t d;
  uint16_t qs[kQK_K / 8];
  uint8_t scales[kQK_K / 32];
};

// 2.5625 bpw. Group g: index qs[g] | ((qh[g / 4] >> 2 (g % 4)) & 3) << 8 into
// kIq2SGrid, sign bits qs[32 + g] (bit j: element j negated); scales as
// IQ2_XS.
struct BlockIQ2_S {
  uint16_t d;
  uint8_t qs[kQK_K / 4];
  uint8_t qh[kQK_K / 32];
  uint8_t scales[kQK_K / 32];
};

// 3.0625 bpw. qs[0..63]: one kIq3XxsGrid index per 4 elements; qs[64 + 4ib ..]
// one u32 per 32 elements: bits 7l..7l+6 the sign index of group l, bits
// 28-31 ls: x = d * (0.5 + ls) * 0.5 * grid * sign.
struct BlockIQ3_XXS {
  uint16_t d;
  uint8_t qs[3 * kQK_K / 8];
};

// 3.4375 bpw. 4 elements per index qs[k] | ((qh[k / 8] >> (k % 8)) & 1) << 8
// into kIq3SGrid; signs[g] bit j negates element 8g + j; scales[ib / 2] low
// nibble for ib even, high for odd: x = d * (1 + 2 ls) * grid * sign.
struct BlockIQ3_S {
  uint16_t d;
  uint8_t qs[kQK_K / 4];
  uint8_t qh[kQK_K / 32];
  uint8_t signs[kQK_K / 8];
  uint8_t scales[kQK_K / 64];
};

// 1.5625 bpw. Group g: index qs[g] | ((qh[g / 4] >> 3 (g % 4)) & 7) << 8 into
// kIq1SGrid (values -1, 0, 1); qh[ib] bits 12-14 ls, bit 15 the delta's sign:
// x = d * (2 ls + 1) * (grid + delta), delta = -1/8 if set else +1/8.
struct BlockIQ1_S {
  uint16_t d;
  uint8_t qs[kQK_K / 8];
  uint16_t qh[kQK_K / 32];
};

// 1.75 bpw. No separate d: the fp16 d is the top nibbles of the four u16 of
// `scales` (nibble k from u16 k). Group g: index qs[g] | (qh[g / 2] >> 4 (g %
// 2) & 7) << 8 into kIq1SGrid, delta sign in bit 3 (g even) / 7 (g odd) of
// qh[g / 2]; 3-bit scale per 16 elements s: bits 3 (s % 4) .. of u16 s / 4:
// x = d * (2 ls + 1) * (grid + delta).
struct BlockIQ1_M {
  uint8_t qs[kQK_K / 8];
  uint8_t qh[kQK_K / 16];
  uint8_t scales[kQK_K / 32];
};

// 32 elements: x = d * kIq4nlValues[q], nibbles as Q4_0.
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[kQK / 2];
};

#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18, "ggml block_q4_0");
static_assert(sizeof(BlockQ4_1) == 20, "ggml block_q4_1");
static_assert(sizeof(BlockQ5_0) == 22, "ggml block_q5_0");
static_assert(sizeof(BlockQ5_1) == 24, "ggml block_q5_1");
static_assert(sizeof(BlockQ8_0) == 34, "ggml block_q8_0");
static_assert(sizeof(BlockQ2_K) == 84, "ggml block_q2_K");
static_assert(sizeof(BlockQ3_K) == 110, "ggml block_q3_K");
static_assert(sizeof(BlockQ4_K) == 144, "ggml block_q4_K");
static_assert(sizeof(BlockQ5_K) == 176, "ggml block_q5_K");
static_assert(sizeof(BlockQ6_K) == 210, "ggml block_q6_K");
static_assert(sizeof(BlockQ8_K) == 292, "ggml block_q8_K");
static_assert(sizeof(BlockIQ4_XS) == 136, "ggml block_iq4_xs");
static_assert(sizeof(BlockIQ2_XXS) == 66, "ggml block_iq2_xxs");
static_assert(sizeof(BlockIQ2_XS) == 74, "ggml block_iq2_xs");
static_assert(sizeof(BlockIQ2_S) == 82, "ggml block_iq2_s");
static_assert(sizeof(BlockIQ3_XXS) == 98, "ggml block_iq3_xxs");
static_assert(sizeof(BlockIQ3_S) == 110, "ggml block_iq3_s");
static_assert(sizeof(BlockIQ1_S) == 50, "ggml block_iq1_s");
static_assert(sizeof(BlockIQ1_M) == 56, "ggml block_iq1_m");
static_assert(sizeof(BlockIQ4_NL) == 18, "ggml block_iq4_nl");

}  // namespace moeflow

#endif  // MOEFLOW_FORMATS_QUANT_BLOCKS_H_
