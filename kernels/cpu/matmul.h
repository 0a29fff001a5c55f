// Quantized matrix multiply y[t, r] = W[r, :] · x[t, :] with W kept in its
// ggml blocks, as llama.cpp's CPU backend computes ggml_mul_mat.
//
// Role in the data flow: every weight matmul of the single-process engine
// (engine/engine.h) runs here, on the bytes of the mmapped GGUF
// tensor; nothing is dequantized to a float copy. Like ggml, the float
// activations are first converted to the weight type's `vec_dot_type`
// (QuantizeActivations), then each output is one vec_dot of a weight row with
// an activation row:
//
//   weight type                  activation blocks
//   F32                          F32 (plain float dot, double accumulator)
//   F16 / BF16                   F16 / BF16
//   Q4_0, Q5_0, Q8_0, IQ4_NL     Q8_0
//   Q4_1, Q5_1                   Q8_1
//   Q2_K, Q3_K, Q4_K, Q5_K, Q6_K Q8_K
//   IQ1_S, IQ1_M, IQ2_XXS,       Q8_K
//   IQ2_XS, IQ2_S, IQ3_XXS,
//   IQ3_S, IQ4_XS
//
// Reproducing llama.cpp's activation quantization is what makes quantized
// files agree with llama.cpp's logits. Q8_0 / Q8_1 activations follow ggml's
// x86 quantize_row_q8_0 / q8_1 (the path llama.cpp takes on AVX2/AVX-512
// hosts): d = amax / 127, scaled by 127 / amax, rounded half to even. Q8_K
// follows quantize_row_q8_K_ref (the x86 build uses it too).
//
// The scalar vec_dot of each pair reproduces ggml's generic
// ggml_vec_dot_*_q8_* arithmetic: integer sums per (sub-)block, then the float
// scale products in ggml's order (bit-equal to ggml's generic C built without
// FMA for the K and IQ types: tests/kernels/cpu/matmul_iq_test.cc). The AVX2 and AVX-512 (VNNI)
// variants of the hot pairs (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K; the 16-bit float pairs'
// products are exact in float, summed in float lanes) compute the same integer sums
// exactly but add the per-block float terms in a different order (as ggml's
// own SIMD paths do), so they differ from the scalar result by a few ulp of
// the sum of |terms|. On AVX2 and AVX-512 (with or without VNNI),
// MatmulQuantized of Q4_K, Q6_K, Q5_0 and Q8_0 weights runs register-blocked
// tiles instead of one vec_dot per (row, token) (matmul_tiles_avx512.inc, 512-bit;
// matmul_tiles_avx2.inc, 256-bit): R rows × 1 token with software prefetch
// for decode (≤ 2 tokens: GEMV, bandwidth-bound; each block prefetched into
// L2 one tile — R rows — ahead, since rows are contiguous; R = 4 on AVX-512;
// on AVX2 Q4_K 1, Q6_K 1, Q8_0 1, Q5_0 2), R rows × 4 tokens in chunks of
// 64 tokens for prefill (GEMM: each unpacked weight block serves 4 tokens,
// each activation block R rows; AVX-512 4 × 4 (Q6_K 2 × 4), AVX2 2 × 4
// (Q6_K 1 × 4)). Q5_0 routed experts are repacked at load on AVX2 (see
// WeightLayout below) and run their own tiles. The IQ types and Q2_K, Q3_K,
// Q5_K (Q5_K: when not in 16-row panels) run the "unpacked" kernels
// (matmul_unpacked_tiles.inc, per ISA): each block is read as unsigned
// 8-bit values plus integer scales per 16 values; decode keeps them in registers (R rows × 1-2 tokens, R = 4 on AVX-512, 2
// on AVX2), prefill unpacks a panel of rows once into a stack buffer and
// runs R × T register tiles over it for every token (AVX-512 4 × 3, AVX2
// 2 × 2); on AVX-512 VNNI, from 3 tokens on, 16-row panels × 8 tokens with
// vpdpbusd (matmul_unpacked_panel16.inc). Every path sums each sub-block's
// integers first and then steps the float sum the same way (FinishSums), so
// a (row, token) result is bit for bit the same in decode, register tiles
// and panels. On AVX-512, IQ2_XXS, IQ2_XS and IQ3_XXS expand each block's
// sign indices in vector registers once, and read their grid entries by
// gather or by scalar loads (knob grid_lookup; AMD's gathers are the slower).
// IQ4_NL and Q4_0 (the same block layout, other levels) have a
// decode tile of their own, and for prefill their rows become Q8_0 rows
// (exact) for the Q8_0 tiles.
// Integer sums stay exact (vpdpbusd / vpmaddubsw + vpdpwssd or vpmaddwd with
// biased operands), so they too differ from the scalar result only in float
// summation order, and a (row, token) result never depends on the tile it
// falls in. The ISA is chosen at run time from CPUID; the
// environment variable MOEFLOW_ISA=scalar|avx2|avx512f|avx512|avx512bf16|amx forces one (an ISA the
// CPU lacks falls back to the best it has).
//
// Thread-safety: all functions are pure; Matmul splits rows over the given
// pool. Failure: unsupported types and shapes are programmer errors here
// (CHECK) — loaders call MatmulSupports first and report the tensor by name.
#ifndef MOEFLOW_KERNELS_CPU_MATMUL_H_
#define MOEFLOW_KERNELS_CPU_MATMUL_H_

#include <cstdint>

#include "formats/ggml_types.h"
#include "kernels/cpu/thread_pool.h"

namespace moeflow {

// kAvx512Bf16 is kAvx512 plus AVX-512 BF16: BF16 weights use vdpbf16ps
// (matmul_bf16.cc) with ggml's BF16 activations; every other type runs as on
// kAvx512. vdpbf16ps multiplies BF16 pairs exactly and adds in fp32 (round to
// nearest even; BF16 denormals read as zero), as ggml's own AVX512_BF16
// vec_dot_bf16 does, so the result differs from the scalar reference (exact
// products, double sum) only by fp32 summation: the tests allow
// (n / 16 + 16) · 2^-24 · Σ|w·a|. F16 weights keep ggml's F16 arithmetic
// here; F16ViaBf16VecDot below is the converting variant, opt-in.
// kAmx is kAvx512Bf16 plus AMX-INT8: Q8_0 weights × Q8_0 activations of
// calls with ≥ 16 tokens run as 16 × 16 int8 tiles (matmul_amx.cc), whose
// integer sums are exact and whose float terms are added in the scalar
// reference's order (bit-equal to it); fewer tokens use the AVX-512 tiles.
// Explicit values: the numbers are not an order of capability.
// kAvx512NoVnni is AVX-512 F/BW/VL/DQ without VNNI (matmul_avx512f.cc): the
// same 512-bit tiles as kAvx512 with vpdpbusd / vpdpwssd emulated by
// vpmaddubsw / vpmaddwd (same exact integer sums); selected on CPUs with
// AVX-512 but no VNNI, forced with MOEFLOW_ISA=avx512f.
enum class CpuIsa {
  kScalar = 0,
  kAvx2 = 1,
  kAvx512 = 2,
  kAvx512Bf16 = 3,
  kAmx = 4,
  kAvx512NoVnni = 5
};

const char* CpuIsaName(CpuIsa isa);
// Whether this CPU (and OS) can run `isa`: AVX2 needs AVX2+FMA+F16C; AVX-512
// needs F, BW, VL, DQ and VNNI; AVX-512 BF16 needs that and AVX512_BF16;
// AMX needs that, AMX-TILE, AMX-INT8, XCR0's tile state and the kernel's
// permission (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, requested once);
// AVX-512 without VNNI (avx512f) needs F, BW, VL and DQ.
bool CpuSupportsIsa(CpuIsa isa);
// The best ISA this CPU supports (amx > avx512bf16 > avx512 > avx512f >
// avx2 > scalar), or MOEFLOW_ISA=scalar|avx2|avx512f|avx512|avx512bf16|amx
// when set (an ISA
// the CPU lacks falls back to the best it has). Read once; later calls
// return the same value.
CpuIsa SelectedIsa();

// Whether Matmul handles weights of `type`.
bool MatmulSupports(GgmlType weight_type);
// ggml's vec_dot_type of a weight type (the table above).
GgmlType ActivationType(GgmlType weight_type);
// Bytes of one activation row of `cols` elements for weights of `weight_type`:
// the vec_dot_type's blocks, and for Q8_0 activations then one int16 per
// block, the sum of its 32 quants (the zero-point correction of the kPanel16
// tiles: their weights are unsigned, q + 128 or q5, and Σ w·a comes out as
// Σ (w + z)·a − z·Σa). Every caller sizes rows with this and fills them with
// QuantizeActivations, which writes both parts.
int64_t ActivationRowBytes(GgmlType weight_type, int64_t cols);

// Converts n_rows rows of `cols` floats (row i at x + i * x_stride) into
// activation blocks for `weight_type`, row i at out + i * ActivationRowBytes.
// Runs SelectedIsa()'s quantizer; every variant writes the same bytes.
void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out);
// The same with `isa`'s quantizer (Q8_0 / Q8_1 / Q8_K activations have
// SIMD variants; the scalar one is the reference). `isa` must be supported.
void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out, CpuIsa isa);

// One weight row (`cols` elements, blocks of `weight_type`) · one activation
// row (as QuantizeActivations writes it).
using VecDotFn = float (*)(int64_t cols, const void* weight_row, const void* activation_row);
VecDotFn GetVecDot(GgmlType weight_type, CpuIsa isa);

// The F16-via-BF16 dot, or null when the CPU lacks AVX-512 BF16: F16 weights
// · ggml's F16 activations, each value rounded to BF16 (nearest even) and
// multiplied with vdpbf16ps. Faster per instruction than the F16 path but
// lossy where ggml is not (ggml's F16 vec_dot multiplies the F16 values
// exactly in fp32): BF16 keeps 8 significant bits, so each rounding is off
// by ≤ 2^-8 relative and a product by ≤ 2^-7 + 2^-16 — the tests allow that
// plus the summation bound above, times Σ|w·a|. Not used by Matmul; for callers that accept the
// precision.
VecDotFn F16ViaBf16VecDot();

// How a weight's rows are laid out in memory.
//   kGgml: the GGUF file's blocks, as they are.
//   kQ5_0Pairs: Q5_0 rows repacked at load time (RepackRows) for the AVX2
//     kernel, in pairs of blocks of the same row (2p, 2p + 1), 44 bytes each:
//       bytes  0..31  byte j: element j of block 2p in the low nibble, of
//                     block 2p + 1 in the high nibble (the 4 low bits);
//       bytes 32..39  the fifth bits: byte k, bit 4b + L is that of element
//                     8L + k of block 2p + b (b = 0, 1; L = 0..3);
//       bytes 40..43  d of block 2p, d of block 2p + 1 (IEEE half).
//     The same bytes per row as the GGUF blocks (row_bytes unchanged), so
//     rows keep their offsets; cols must be a multiple of 64 and at most
//     28,032 (the kernel's activation buffer; every DeepSeek shape fits).
//   kPanel16: Q8_0, Q5_0, Q4_K, Q5_K and Q6_K matrices on AVX-512 VNNI hosts, 16
//     rows stored together block by block so that vpdpbusd's 16 lanes are 16
//     output rows (panel_layout.h gives the bytes; matmul_panel_avx512.cc
//     the tiles). Each panel keeps its 16 rows' bytes at their offset; rows
//     must be a multiple of 16 and slices start on a panel.
// Every ISA multiplies every layout (the scalar path and the ISAs without
// a kernel for a layout read it back into GGUF blocks, so their results are
// those of the GGUF bytes).
enum class WeightLayout : uint8_t { kGgml = 0, kQ5_0Pairs = 1, kPanel16 = 2 };

const char* WeightLayoutName(WeightLayout layout);

// A 2-D view of a ggml weight tensor {cols, rows}: row r is `row_bytes`
// bytes at data + r * row_bytes, in `layout`.
struct MatmulWeight {
  GgmlType type = GgmlType::kF32;
  const uint8_t* data = nullptr;
  int64_t cols = 0;
  int64_t rows = 0;
  int64_t row_bytes = 0;
  WeightLayout layout = WeightLayout::kGgml;

  const uint8_t* row(int64_t r) const { return data + r * row_bytes; }
  // Rows [first, first + n) as their own matrix (e.g. one expert or head).
  MatmulWeight Slice(int64_t first, int64_t n) const;
};

// Load-time repacking (the weights' side of "the layout the chosen kernel
// wants"). PreferredLayout is the layout `isa`'s kernels are fastest on for
// weights of `type` with `cols` columns: kQ5_0Pairs for Q5_0 on AVX2 with
// cols a multiple of 64 (on Zen 3, one thread, weights in cache: GEMV
// 10.2 -> 16.4 GB/s, GEMM 50 -> 73 GOP/s; README.md, Performance), kGgml
// otherwise (the AVX-512 tiles expand the fifth bits with a mask register
// and keep the GGUF blocks); kPanel16 for Q8_0, Q5_0, Q4_K, Q5_K and Q6_K on the
// AVX-512 VNNI ISAs (avx512, avx512bf16; amx too but for Q8_0, whose AMX
// tiles read GGUF blocks) when `rows` — the rows repacked as one matrix, a
// whole tensor or one expert — is a multiple of 16. The knob repack
// (MOEFLOW_REPACK=0) makes it kGgml always (read once).
WeightLayout PreferredLayout(GgmlType type, int64_t cols, CpuIsa isa, int64_t rows = 16);
// Rewrites `rows` rows of `w` (type, cols, row_bytes; w.layout must be
// kGgml) from GGUF blocks at `src` into `to` at `dst`. src == dst repacks in
// place; otherwise the two must not overlap. CHECK-fails when `to` is not
// kGgml and not allowed for the shape (see WeightLayout).
void RepackRows(const MatmulWeight& w, WeightLayout to, const uint8_t* src, uint8_t* dst,
                int64_t rows);
// The inverse: `rows` rows of `w` (in w.layout) back to GGUF blocks at dst.
void UnpackRowsToGgml(const MatmulWeight& w, const uint8_t* src, uint8_t* dst, int64_t rows);

// y[t * y_stride + r] = W[r] · act[t] for t < n_act_rows, r < W.rows, where
// act holds rows of ActivationRowBytes(W.type, W.cols) bytes. Rows of W are
// split over `pool` in dynamically claimed chunks (null: the calling thread
// alone). Results do not depend on the number of threads or the split.
void MatmulQuantized(const MatmulWeight& w, const uint8_t* act, int64_t n_act_rows, float* y,
                     int64_t y_stride, CpuIsa isa, ThreadPool* pool);

// One matrix of a MatmulQuantizedBatch: y[t * y_stride + r] = w[r] · act[t].
struct MatmulJob {
  MatmulWeight w;
  const uint8_t* act = nullptr;
  int64_t n_act_rows = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
};

// MatmulQuantized of every job, with the rows of all jobs split over `pool`
// in one parallel loop (one synchronisation in all, instead of one per
// matrix: the many small expert matrices of a decode step). Each output is
// computed exactly as MatmulQuantized computes it, so results equal those of
// calling MatmulQuantized per job, for any number of threads.
void MatmulQuantizedBatch(const MatmulJob* jobs, int64_t n_jobs, CpuIsa isa, ThreadPool* pool);

// QuantizeActivations into `act_scratch` (at least
// n_rows * ActivationRowBytes(w.type, w.cols) bytes), then MatmulQuantized.
// x rows are w.cols floats at x + t * x_stride.
void Matmul(const MatmulWeight& w, const float* x, int64_t n_rows, int64_t x_stride, float* y,
            int64_t y_stride, uint8_t* act_scratch, CpuIsa isa, ThreadPool* pool);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_MATMUL_H_
