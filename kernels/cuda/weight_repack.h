// GGUF weight blocks -> the layouts of the GPU weight-only GEMMs
// (weight_only_gemm.h), done on the host at load time.
//
//   int8 (from Q8_0, and from every other quant type by requantization):
//     qs     int8 [rows][cols]          the block's 32 values, in order
//     scales f16  [rows][cols / 32]     the block's d
//     value (r, c) = qs · d                         — Q8_0: exact
//   int4 (from Q4_K):
//     qs     u8 [rows][cols / 2]        value c in byte c / 2, low nibble when even
//     scales f16 [rows][cols / 256][2]  the super-block's d and dmin
//     sub    u8 [rows][cols / 256][16]  the 8 six-bit sub-block scales, then the 8 mins
//     value (r, c) = (d · sc[j]) · q − dmin · m[j], j = (c % 256) / 32   — exact
// Q4_K's 12 packed scale bytes and its low/high nibble interleave (values
// 0-31 in the low nibbles of bytes 0-31, 32-63 in their high nibbles) are
// what the GPU would otherwise unpack per value; here each 32-value group is
// 16 consecutive bytes and its scale and min are plain bytes (148 B per 256
// values instead of 144: model/memory_plan.h counts the same).
//
// Requantization (Q6_K, Q5_K, Q5_0, ... -> int8) dequantizes with
// kernels/cpu Dequantize and quantizes to Q8_0 with ggml's rounding: not
// exact (the error is at most half an int8 step of each 32-value block).
//
// Thread-safety: pure functions. Failure: InvalidArgument naming the type or
// the shape (cols not a multiple of the block; types kept as BF16).
#ifndef MOEFLOW_KERNELS_CUDA_WEIGHT_REPACK_H_
#define MOEFLOW_KERNELS_CUDA_WEIGHT_REPACK_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/ggml_types.h"

namespace moeflow::cuda {

enum class RepackedKind : int { kInt8 = 0, kInt4 = 1 };

struct RepackedMatrix {
  RepackedKind kind = RepackedKind::kInt8;
  int64_t rows = 0;
  int64_t cols = 0;
  bool exact = true;  // false: requantized from another type
  std::vector<uint8_t> qs;
  std::vector<uint16_t> scales;
  std::vector<uint8_t> sub;  // int4 only
  uint64_t bytes() const { return qs.size() + 2 * scales.size() + sub.size(); }
};

// `data`: rows × RowBytes(type, cols) bytes of ggml blocks.
absl::StatusOr<RepackedMatrix> RepackForGpu(GgmlType type, const void* data, int64_t rows,
                                            int64_t cols);

// Value (r, c) of a repacked matrix, computed as the GPU kernels compute it
// (the scalar reference of the layout).
float RepackedValue(const RepackedMatrix& m, int64_t r, int64_t c);

// y[n] = Σ_c value(n, c) · x[c], accumulated in double: the CPU reference of
// the weight-only GEMV/GEMM for one token.
void RepackedMatVecReference(const RepackedMatrix& m, const float* x, float* y);

}  // namespace moeflow::cuda

#endif  // MOEFLOW_KERNELS_CUDA_WEIGHT_REPACK_H_
