#include "formats/ggml_types.h"

#include <array>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {
namespace {

// Block sizes and byte sizes follow ggml's block structs (ggml-common.h):
// QK4_0 = QK8_0 = 32 elements per block; QK_K = 256 for the K-quants.
constexpr GgmlTypeTraits kTable[] = {
    {GgmlType::kF32, "f32", 1, 4, true},
    {GgmlType::kF16, "f16", 1, 2, true},
    {GgmlType::kQ4_0, "q4_0", 32, 2 + 16, true},
    {GgmlType::kQ4_1, "q4_1", 32, 2 + 2 + 16, true},
    {GgmlType::kQ5_0, "q5_0", 32, 2 + 4 + 16, true},
    {GgmlType::kQ5_1, "q5_1", 32, 2 + 2 + 4 + 16, true},
    {GgmlType::kQ8_0, "q8_0", 32, 2 + 32, true},
    {GgmlType::kQ8_1, "q8_1", 32, 4 + 32, false},
    {GgmlType::kQ2_K, "q2_K", 256, 256 / 16 + 256 / 4 + 2 + 2, true},
    {GgmlType::kQ3_K, "q3_K", 256, 256 / 8 + 256 / 4 + 12 + 2, true},
    {GgmlType::kQ4_K, "q4_K", 256, 2 + 2 + 12 + 256 / 2, true},
    {GgmlType::kQ5_K, "q5_K", 256, 2 + 2 + 12 + 256 / 8 + 256 / 2, true},
    {GgmlType::kQ6_K, "q6_K", 256, 256 / 2 + 256 / 4 + 256 / 16 + 2, true},
    {GgmlType::kQ8_K, "q8_K", 256, 4 + 256 + 256 / 16 * 2, true},
    {GgmlType::kIQ2_XXS, "iq2_xxs", 256, 2 + 256 / 8 * 2, true},
    {GgmlType::kIQ2_XS, "iq2_xs", 256, 2 + 256 / 8 * 2 + 256 / 32, true},
    {GgmlType::kIQ3_XXS, "iq3_xxs", 256, 2 + 256 / 4 + 256 / 8, true},
    {GgmlType::kIQ1_S, "iq1_s", 256, 2 + 256 / 8 + 256 / 16, true},
    {GgmlType::kIQ4_NL, "iq4_nl", 32, 2 + 16, true},
    {GgmlType::kIQ3_S, "iq3_s", 256, 2 + 256 / 4 + 256 / 8 + 256 / 32 + 4, true},
    {GgmlType::kIQ2_S, "iq2_s", 256, 2 + 256 / 4 + 256 / 16, true},
    {GgmlType::kIQ4_XS, "iq4_xs", 256, 2 + 2 + 256 / 64 + 256 / 2, true},
    {GgmlType::kI8, "i8", 1, 1, false},
    {GgmlType::kI16, "i16", 1, 2, false},
    {GgmlType::kI32, "i32", 1, 4, false},
    {GgmlType::kI64, "i64", 1, 8, false},
    {GgmlType::kF64, "f64", 1, 8, false},
    {GgmlType::kIQ1_M, "iq1_m", 256, 256 / 8 + 256 / 16 + 256 / 32, true},
    {GgmlType::kBF16, "bf16", 1, 2, true},
    {GgmlType::kTQ1_0, "tq1_0", 256, 2 + 4 * 13, false},
    {GgmlType::kTQ2_0, "tq2_0", 256, 2 + 64, false},
};

}  // namespace

std::optional<GgmlTypeTraits> FindGgmlType(uint32_t id) {
  for (const GgmlTypeTraits& t : kTable) {
    if (static_cast<uint32_t>(t.type) == id) return t;
  }
  return std::nullopt;
}

const GgmlTypeTraits& Traits(GgmlType type) {
  for (const GgmlTypeTraits& t : kTable) {
    if (t.type == type) return t;
  }
  MOEFLOW_CHECK(false && "GgmlType missing from kTable");
  return kTable[0];
}

absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const GgmlTypeTraits& t : kTable) {
    if (absl::AsciiStrToLower(t.name) == lower) return t.type;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown ggml type '", name, "'"));
}

absl::StatusOr<int64_t> RowBytes(GgmlType type, int64_t n) {
  const GgmlTypeTraits& t = Traits(type);
  if (n < 0 || n % t.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("row of ", n, " elements is not a multiple of ",
                                                   t.name, "'s block size ", t.block_size));
  }
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n / t.block_size, t.type_size, &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", n, " ", t.name, " elements takes more than 2^63 bytes"));
  }
  return bytes;
}

}  // namespace moeflow
