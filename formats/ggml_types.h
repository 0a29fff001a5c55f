// ggml tensor types: the ids GGUF files store and each type's block geometry.
//
// Role in the data flow: every component that touches tensor bytes (the GGUF
// reader and writer, the quant kernels in kernels/cpu, the memory planner)
// asks this table how many bytes a row of N elements takes. The numeric ids
// are those of ggml's `enum ggml_type` and are part of the GGUF file format.
// Thread-safe (immutable tables). Unknown ids are reported, never assumed.
#ifndef MOEFLOW_FORMATS_GGML_TYPES_H_
#define MOEFLOW_FORMATS_GGML_TYPES_H_

#include <cstdint>
#include <optional>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace moeflow {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  // 4 and 5 (Q4_2, Q4_3) were removed from ggml long ago.
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
};

// Geometry of one ggml type: `block_size` elements are stored in `type_size`
// bytes. `supported` says whether moeflow can dequantize it.
struct GgmlTypeTraits {
  GgmlType type;
  absl::string_view name;  // as ggml prints it: "f32", "q4_K", ...
  int64_t block_size;
  int64_t type_size;
  bool supported;
};

// Returns the traits of a type id read from a file, or nullopt if the id is
// not a ggml type this build knows (the caller reports where it came from).
std::optional<GgmlTypeTraits> FindGgmlType(uint32_t id);

// Traits of a known type (programmer error if `type` is not in the table).
const GgmlTypeTraits& Traits(GgmlType type);

// Parses a name as ggml spells it, case-insensitively ("q4_k", "Q8_0", "bf16").
absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name);

// Bytes of a row of `n` elements; InvalidArgument if n is not a multiple of
// the block size.
absl::StatusOr<int64_t> RowBytes(GgmlType type, int64_t n);

}  // namespace moeflow

#endif  // MOEFLOW_FORMATS_GGML_TYPES_H_
