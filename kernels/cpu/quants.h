// ggml quantization formats: conversion between float32 and ggml blocks.
//
// Role in the data flow: the model loader dequantizes tensors it keeps in
// float (norms, small matrices), `moeflow mkmodel` quantizes the weights it
// generates, and the expert kernels use these routines as their scalar
// reference. Block layouts (see quant_blocks.h) are ggml's, byte for byte.
//
// Dequantize is bit-exact with ggml's dequantize_row_* for every supported
// type (IQ4_XS included). Quantize reproduces llama-quantize without an
// importance matrix (ggml's quantize_row_*_ref) byte for byte for F16, BF16,
// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K; IQ4_XS
// is dequantize-only. tests/kernels/cpu/quants_test.cc checks both against
// vectors dumped from ggml and against llama-quantize's output files.
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
// bytes). Rows are independent, so callers quantize row by row.
absl::Status Quantize(GgmlType type, const float* src, void* dst, int64_t n);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_QUANTS_H_
