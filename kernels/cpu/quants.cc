#include "kernels/cpu/quants.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "kernels/cpu/quants_internal.h"

// The formats themselves live in quants_legacy.cc, quants_k.cc,
// quants_k_dequant.cc, quants_iq_dequant.cc and quants_iq*.cc; this file
// holds the float conversions and the dispatch.

namespace moeflow {
namespace quants_internal {

uint16_t FloatToHalf(float f) {
  const uint32_t w = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((w >> 16) & 0x8000u);
  uint32_t a = w & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;     // every NaN -> the canonical quiet NaN
  if (a >= 0x38800000u) {                         // |f| >= 2^-14: a normal half (or overflow)
    a += 0x0fffu + ((a >> 13) & 1u);              // round to nearest even at bit 13
    if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 65520 (or Inf) -> Inf
    return sign | static_cast<uint16_t>((a - (112u << 23)) >> 13);
  }
  // Subnormal half: adding 0.5 puts the value where one float ulp is 2^-24,
  // so the addition itself rounds to the half's grid (ties to even).
  const float rounded = BitsFloat(a) + 0.5f;
  return sign | static_cast<uint16_t>(FloatBits(rounded) - FloatBits(0.5f));
}

}  // namespace quants_internal

namespace {

using namespace quants_internal;  // NOLINT: this file's own helpers

using DequantizeRowFn = void (*)(const void* src, float* dst, int64_t n);
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n, const float* importance);

void DequantizeRowF32(const void* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
void DequantizeRowF16(const void* src, float* __restrict y, int64_t n) {
  const uint16_t* __restrict h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) y[i] = HalfToFloat(h[i]);
}
void DequantizeRowBF16(const void* src, float* __restrict y, int64_t n) {
  const uint16_t* __restrict h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) y[i] = BitsFloat(static_cast<uint32_t>(h[i]) << 16);
}
void QuantizeRowF32(const float* src, void* dst, int64_t n, const float*) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
void QuantizeRowF16(const float* src, void* dst, int64_t n, const float*) {
  uint16_t* h = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = FloatToHalf(src[i]);
}
void QuantizeRowBF16(const float* src, void* dst, int64_t n, const float*) {
  uint16_t* h = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToBf16(src[i]);
}

// One row of the dispatch table. `uses_importance`: the quantizer reads an
// importance matrix (ggml ignores it for F16, BF16, Q8_0 and Q8_K);
// `needs_importance`: ggml refuses to quantize without one (IQ2_XXS, IQ2_XS,
// IQ1_S), so a missing one is replaced by 1 for every value.
struct Format {
  GgmlType type;
  DequantizeRowFn dequantize;
  QuantizeRowFn quantize;
  bool uses_importance;
  bool needs_importance;
};

// `f.quantize` of n_rows rows, with the uniform importance where the type
// needs one and none was given.
void QuantizeFormatRows(const Format& f, const float* src, uint8_t* dst, int64_t n_rows,
                        int64_t n_per_row, int64_t row_bytes, const float* importance) {
  std::vector<float> ones;
  if (importance == nullptr && f.needs_importance) {
    ones.assign(static_cast<size_t>(n_per_row), 1.0f);
    importance = ones.data();
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    f.quantize(src + r * n_per_row, dst + r * row_bytes, n_per_row,
               f.uses_importance ? importance : nullptr);
  }
}

const Format kFormats[] = {
    {GgmlType::kF32, DequantizeRowF32, QuantizeRowF32, false, false},
    {GgmlType::kF16, DequantizeRowF16, QuantizeRowF16, false, false},
    {GgmlType::kBF16, DequantizeRowBF16, QuantizeRowBF16, false, false},
    {GgmlType::kQ4_0, DequantizeRowQ4_0, QuantizeRowQ4_0, true, false},
    {GgmlType::kQ4_1, DequantizeRowQ4_1, QuantizeRowQ4_1, true, false},
    {GgmlType::kQ5_0, DequantizeRowQ5_0, QuantizeRowQ5_0, true, false},
    {GgmlType::kQ5_1, DequantizeRowQ5_1, QuantizeRowQ5_1, true, false},
    {GgmlType::kQ8_0, DequantizeRowQ8_0, QuantizeRowQ8_0, false, false},
    {GgmlType::kQ2_K, DequantizeRowQ2_K, QuantizeRowQ2_K, true, false},
    {GgmlType::kQ3_K, DequantizeRowQ3_K, QuantizeRowQ3_K, true, false},
    {GgmlType::kQ4_K, DequantizeRowQ4_K, QuantizeRowQ4_K, true, false},
    {GgmlType::kQ5_K, DequantizeRowQ5_K, QuantizeRowQ5_K, true, false},
    {GgmlType::kQ6_K, DequantizeRowQ6_K, QuantizeRowQ6_K, true, false},
    {GgmlType::kQ8_K, DequantizeRowQ8_K, QuantizeRowQ8_K, false, false},
    {GgmlType::kIQ2_XXS, DequantizeRowIQ2_XXS, QuantizeRowIQ2_XXS, true, true},
    {GgmlType::kIQ2_XS, DequantizeRowIQ2_XS, QuantizeRowIQ2_XS, true, true},
    {GgmlType::kIQ2_S, DequantizeRowIQ2_S, QuantizeRowIQ2_S, true, false},
    {GgmlType::kIQ3_XXS, DequantizeRowIQ3_XXS, QuantizeRowIQ3_XXS, true, false},
    {GgmlType::kIQ3_S, DequantizeRowIQ3_S, QuantizeRowIQ3_S, true, false},
    {GgmlType::kIQ1_S, DequantizeRowIQ1_S, QuantizeRowIQ1_S, true, true},
    {GgmlType::kIQ1_M, DequantizeRowIQ1_M, QuantizeRowIQ1_M, true, false},
    {GgmlType::kIQ4_NL, DequantizeRowIQ4_NL, QuantizeRowIQ4_NL, true, false},
    {GgmlType::kIQ4_XS, DequantizeRowIQ4_XS, QuantizeRowIQ4_XS, true, false},
};

const Format* FindFormat(GgmlType type) {
  for (const Format& f : kFormats) {
    if (f.type == type) return &f;
  }
  return nullptr;
}

absl::Status CheckCount(GgmlType type, int64_t n, bool supported, const char* what) {
  const GgmlTypeTraits& t = Traits(type);
  if (!supported) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ggml type ", t.name, " is not supported"));
  }
  if (n < 0 || n % t.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", n, " elements of ", t.name,
                                                   ": not a multiple of the block size ",
                                                   t.block_size));
  }
  return absl::OkStatus();
}

}  // namespace

float Fp16ToFp32(uint16_t h) { return HalfToFloat(h); }

uint16_t Fp32ToFp16(float f) { return FloatToHalf(f); }

float Bf16ToFp32(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToBf16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

bool CanDequantize(GgmlType type) { return FindFormat(type) != nullptr; }

bool CanQuantize(GgmlType type) {
  const Format* f = FindFormat(type);
  return f != nullptr && f->quantize != nullptr;
}

bool QuantizeUsesImportance(GgmlType type) {
  const Format* f = FindFormat(type);
  return f != nullptr && f->quantize != nullptr && f->uses_importance;
}

absl::Status Dequantize(GgmlType type, const void* src, float* dst, int64_t n) {
  MOEFLOW_RETURN_IF_ERROR(CheckCount(type, n, CanDequantize(type), "dequantizing"));
  FindFormat(type)->dequantize(src, dst, n);
  return absl::OkStatus();
}

absl::Status Quantize(GgmlType type, const float* src, void* dst, int64_t n) {
  MOEFLOW_RETURN_IF_ERROR(CheckCount(type, n, CanQuantize(type), "quantizing"));
  const Format& f = *FindFormat(type);
  if (f.needs_importance) {
    // Super-blocks are independent, so n values are quantized as one row.
    QuantizeFormatRows(f, src, static_cast<uint8_t*>(dst), 1, n, 0, nullptr);
  } else {
    f.quantize(src, dst, n, nullptr);
  }
  return absl::OkStatus();
}

absl::Status QuantizeRows(GgmlType type, const float* src, void* dst, int64_t n_rows,
                          int64_t n_per_row, const float* importance) {
  MOEFLOW_RETURN_IF_ERROR(CheckCount(type, n_per_row, CanQuantize(type), "quantizing"));
  MOEFLOW_CHECK(n_rows >= 0);
  QuantizeFormatRows(*FindFormat(type), src, static_cast<uint8_t*>(dst), n_rows, n_per_row,
                     RowBytes(type, n_per_row).value(), importance);
  return absl::OkStatus();
}

}  // namespace moeflow
