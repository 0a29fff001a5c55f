// Internal to kernels/cpu/matmul: the activation block of Q4_1 / Q5_1 dot
// products and the per-ISA vec_dot tables. The ISA files (matmul_avx2.cc,
// matmul_avx512.cc) are compiled with their own -m flags from one source
// (matmul_simd.inc) and export only these tables; a null entry means "use the
// scalar reference". Plain data; no failure modes.
#ifndef MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_
#define MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_

#include <cstdint>
#include <cstring>

#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul.h"

namespace moeflow {

#pragma pack(push, 1)
// ggml's block_q8_1: x = d * qs; s = d * Σ qs (both IEEE half).
struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ8_1) == 36, "ggml block_q8_1");

// Bytes of one pair of Q5_0 blocks in WeightLayout::kQ5_0Pairs (= 2 × 22:
// repacking keeps every row's size and position).
constexpr int64_t kQ5_0PairBytes = 2 * static_cast<int64_t>(sizeof(BlockQ5_0));
// Its kernel's prepared activations: per pair a0[32] a1[32] neg[8 × i32]
// d_a[4 × f32], for a chunk of tokens in a stack buffer of
// kQ5_0PairsActBufferBytes; one token's row must fit, hence the column limit.
constexpr int64_t kQ5_0PairActBytes = 112;
constexpr int64_t kQ5_0PairsActBufferBytes = 48 << 10;
constexpr int64_t kQ5_0PairsMaxCols = kQ5_0PairsActBufferBytes / kQ5_0PairActBytes * 64;

// Many rows × many tokens at once: y[t * y_stride + r] for r < n_rows,
// t < n_tokens; row r of W at w + r * w_row_bytes, token t's activation row
// at act + t * act_row_bytes. Register-blocked tiles reuse each unpacked
// weight block across several tokens (prefill) and each activation block
// across several rows (decode). The result of (r, t) does not depend on the
// tile it falls in, so the thread split never changes results.
using GemmFn = void (*)(int64_t cols, const uint8_t* w, int64_t w_row_bytes, int64_t n_rows,
                        const uint8_t* act, int64_t act_row_bytes, int64_t n_tokens, float* y,
                        int64_t y_stride);

// Converts n floats (a multiple of the block size) into activation blocks.
using QuantizeRowFn = void (*)(const float* x, void* blocks, int64_t n);

struct SimdVecDots {
  // Activation quantizers (ggml's from_float), bit-identical to the scalar
  // QuantizeRowQ8_0 / Q8_1 / Q8_K of matmul.cc.
  QuantizeRowFn quantize_q8_0 = nullptr;
  QuantizeRowFn quantize_q8_1 = nullptr;
  QuantizeRowFn quantize_q8_k = nullptr;
  GemmFn gemm_q8_0 = nullptr;
  GemmFn gemm_q5_0 = nullptr;
  GemmFn gemm_q5_0_pairs = nullptr;  // WeightLayout::kQ5_0Pairs rows
  GemmFn gemm_q4_k = nullptr;
  GemmFn gemm_q6_k = nullptr;
  VecDotFn f32 = nullptr;
  VecDotFn f16 = nullptr;
  VecDotFn bf16 = nullptr;
  VecDotFn q8_0 = nullptr;
  VecDotFn q5_0 = nullptr;
  VecDotFn q4_k = nullptr;
  VecDotFn q6_k = nullptr;
};

// matmul_scalar.cc: the scalar reference. ScalarVecDot is null for a type
// Matmul does not take; the quantizers are ggml's from_float (x86 rounding
// for Q8_0 / Q8_1, quantize_row_q8_K_ref for Q8_K).
VecDotFn ScalarVecDot(GgmlType type);
// matmul_scalar_iq.cc: the same for the IQ types (null for any other type).
VecDotFn ScalarIqVecDot(GgmlType type);
void QuantizeRowQ8_0(const float* x, BlockQ8_0* y, int64_t n);
void QuantizeRowQ8_1(const float* x, BlockQ8_1* y, int64_t n);
void QuantizeRowQ8_K(const float* x, BlockQ8_K* y, int64_t n);

// A little-endian u32 at any alignment (Q5_0's qh).
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// matmul_panel_avx512.cc (-mavx512vnni): the WeightLayout::kPanel16 GEMMs
// (panel_layout.h), n_rows a multiple of 16, w at a panel's first row.
struct PanelGemms {
  GemmFn q8_0 = nullptr;
  GemmFn q5_0 = nullptr;
  GemmFn q4_k = nullptr;
  GemmFn q5_k = nullptr;
  GemmFn q6_k = nullptr;
};
const PanelGemms& Avx512PanelGemms();

// matmul_unpacked_{avx2,avx512f,avx512}.cc (matmul_unpacked_tiles.inc): the
// GEMM and vec_dot of the IQ types, Q2_K, Q3_K and Q5_K per ISA; both null
// for any other type.
struct UnpackedKernels {
  GemmFn gemm = nullptr;
  VecDotFn dot = nullptr;
};
UnpackedKernels Avx2UnpackedKernels(GgmlType type);
UnpackedKernels Avx512UnpackedKernels(GgmlType type);
UnpackedKernels Avx512NoVnniUnpackedKernels(GgmlType type);
// Whether the AVX-512 IQ2_XXS / IQ2_XS / IQ3_XXS kernels read their grid
// entries with a gather (true) or with scalar loads: the knob grid_lookup,
// whose default picks the loads on AMD CPUs (slow gathers) and the gather
// elsewhere. Both give the same bits. Read once (cpu_isa.cc).
bool IqGridByGather();

const SimdVecDots& Avx2VecDots();
const SimdVecDots& Avx512VecDots();
// matmul_avx512f.cc: the AVX-512 tables without VNNI (CpuIsa::kAvx512NoVnni).
const SimdVecDots& Avx512NoVnniVecDots();

// matmul_bf16.cc (-mavx512bf16): vdpbf16ps dots of BF16 weights · BF16
// activations, and of F16 weights · F16 activations rounded to BF16.
struct Bf16VecDots {
  VecDotFn bf16 = nullptr;
  VecDotFn f16_via_bf16 = nullptr;
};
const Bf16VecDots& Avx512Bf16VecDots();

// matmul_amx.cc (-mamx-tile -mamx-int8): Q8_0 weights · Q8_0 activations in
// 16 × 16 int8 tiles (_tile_dpbssd). Needs a thread that may use AMX state
// (AmxRequestPermission has succeeded in this process).
void AmxGemmQ8_0(int64_t cols, const uint8_t* w, int64_t w_row_bytes, int64_t n_rows,
                 const uint8_t* act, int64_t act_row_bytes, int64_t n_tokens, float* y,
                 int64_t y_stride);
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): true when the kernel
// lets this process use AMX tile data (Linux ≥ 5.16).
bool AmxRequestPermission();

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_MATMUL_INTERNAL_H_
