// ggml quantization formats: conversion between float32 and ggml blocks.
//
// Role in the data flow: the model loader dequantizes tensors it keeps in
// float (norms, small matrices), `moeflow mkmodel` quantizes the weights it
// generates, and the expert kernels use these routines as their scalar
// reference. Block layouts (see quant_blocks.h) are ggml's, byte for byte.
//
// Dequantize is bit-exact with ggml's dequantize_row_* for every supported
// type: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K, Q8_K and
// the IQ types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL,
// IQ4_XS (their grids: formats/iq_grids.h). Quantize reproduces
// ggml_quantize_chunk without an importance matrix byte for byte for all of
// them but Q8_K (quantize_row_q8_K_ref there); ggml refuses IQ2_XXS, IQ2_XS
// and IQ1_S without one, and Quantize gives them importance 1 for every
// value (documented in tests/data/quants/README.md). QuantizeRows with an
// importance vector reproduces ggml's importance-weighted quantizers (what
// llama-quantize --imatrix runs) for Q4_0, Q4_1, Q5_0, Q5_1, Q2_K ... Q6_K
// and every IQ type. tests/kernels/cpu/quants_test.cc checks all of it
// against vectors dumped from ggml and against llama-quantize's files.
//
// Thread-safety: pure functions, callable from any thread. Failure: an
// unsupported type or an element count that is not a multiple of the block
// size returns InvalidArgument naming both; nothing is written then.
#ifndef MOEFLOW_KERNELS_CPU_QUANTS_H_
#define MOEFLOW_KERNELS_CPU_QUANTS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "formats/ggml_types.h"

namespace moeflow {

// IEEE half <-> float, round to nearest even (ggml_compute_fp32_to_fp16).
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);
// bfloat16 <-> float; float->bf16 rounds to nearest even and keeps NaN quiet,
// as ggml_compute_fp32_to_bf16.
float Bf16ToFp32(uint16_t h);
uint16_t Fp32ToBf16(float f);

// True if Dequantize / Quantize handle `type`.
bool CanDequantize(GgmlType type);
bool CanQuantize(GgmlType type);

// Converts `n` elements (a multiple of the type's block size) starting at
// `src` (blocks of `type`) into `dst`.
absl::Status Dequantize(GgmlType type, const void* src, float* dst, int64_t n);

// Converts `n` floats into blocks of `type` at `dst` (RowBytes(type, n)
// bytes), without an importance matrix. Rows are independent, so callers
// quantize row by row.
absl::Status Quantize(GgmlType type, const float* src, void* dst, int64_t n);

// Converts n_rows rows of n_per_row floats (row r at src + r * n_per_row)
// into blocks, row r at dst + r * RowBytes(type, n_per_row), with ggml's
// importance-weighted quantizer when `importance` is not null: n_per_row
// weights, one per column, shared by the rows (llama-quantize's imatrix entry
// of the tensor, or of one expert's slice). Types whose ggml quantizer
// ignores the importance (QuantizeUsesImportance false) ignore it here too.
absl::Status QuantizeRows(GgmlType type, const float* src, void* dst, int64_t n_rows,
                          int64_t n_per_row, const float* importance);
// Whether QuantizeRows reads `importance` for `type`.
bool QuantizeUsesImportance(GgmlType type);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_QUANTS_H_
