#include "kernels/cuda/weight_repack.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/quants.h"

namespace moeflow::cuda {
namespace {

constexpr int64_t kQ8_0Bytes = 34;   // f16 d + 32 int8
constexpr int64_t kQ4_KBytes = 144;  // f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes

uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// Scale and min j (0..7) of a Q4_K block's 12 packed bytes (ggml's get_scale_min_k4).
void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

RepackedMatrix RepackQ8_0(const uint8_t* data, int64_t rows, int64_t cols) {
  RepackedMatrix m;
  m.kind = RepackedKind::kInt8;
  m.rows = rows;
  m.cols = cols;
  m.qs.resize(static_cast<size_t>(rows * cols));
  m.scales.resize(static_cast<size_t>(rows * cols / 32));
  const int64_t blocks = rows * cols / 32;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = data + b * kQ8_0Bytes;
    m.scales[b] = LoadU16(block);
    std::memcpy(m.qs.data() + b * 32, block + 2, 32);
  }
  return m;
}

RepackedMatrix RepackQ4_K(const uint8_t* data, int64_t rows, int64_t cols) {
  RepackedMatrix m;
  m.kind = RepackedKind::kInt4;
  m.rows = rows;
  m.cols = cols;
  const int64_t blocks = rows * cols / 256;
  m.qs.resize(static_cast<size_t>(rows * cols / 2));
  m.scales.resize(static_cast<size_t>(blocks * 2));
  m.sub.resize(static_cast<size_t>(blocks * 16));
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = data + b * kQ4_KBytes;
    m.scales[2 * b] = LoadU16(block);
    m.scales[2 * b + 1] = LoadU16(block + 2);
    for (int j = 0; j < 8; ++j)
      ScaleMinK4(j, block + 4, &m.sub[b * 16 + j], &m.sub[b * 16 + 8 + j]);
    const uint8_t* qs = block + 16;
    uint8_t* out = m.qs.data() + b * 128;
    for (int e = 0; e < 256; e += 2) {
      // Values e and e + 1 lie in the same 32-value group of the same chunk.
      const int chunk = e / 64, within = e % 64;
      const bool high = within >= 32;
      const uint8_t b0 = qs[chunk * 32 + within % 32], b1 = qs[chunk * 32 + (within + 1) % 32];
      const uint8_t q0 = high ? (b0 >> 4) : (b0 & 0xF);
      const uint8_t q1 = high ? (b1 >> 4) : (b1 & 0xF);
      out[e / 2] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
  return m;
}

}  // namespace

absl::StatusOr<RepackedMatrix> RepackForGpu(GgmlType type, const void* data, int64_t rows,
                                            int64_t cols) {
  const GgmlTypeTraits& t = Traits(type);
  if (rows < 1 || cols < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("repack: ", rows, " × ", cols, " is not a matrix"));
  }
  if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("repack: ", t.name, " weights are kept as BF16 for cuBLAS, not repacked"));
  }
  if (!CanDequantize(type)) {
    return absl::InvalidArgumentError(absl::StrCat("repack: cannot dequantize ", t.name));
  }
  if (cols % t.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repack: rows of ", cols, " ", t.name, " values are not whole blocks of ", t.block_size));
  }
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  if (type == GgmlType::kQ8_0) return RepackQ8_0(bytes, rows, cols);
  if (type == GgmlType::kQ4_K) return RepackQ4_K(bytes, rows, cols);
  if (cols % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repack: requantizing ", t.name, " to int8 needs rows of a multiple of 32, not ", cols));
  }
  // Requantize row by row through float.
  const int64_t row_bytes = *RowBytes(type, cols);
  std::vector<float> values(static_cast<size_t>(cols));
  std::vector<uint8_t> q8(static_cast<size_t>(rows * (cols / 32) * kQ8_0Bytes));
  for (int64_t r = 0; r < rows; ++r) {
    if (absl::Status s = Dequantize(type, bytes + r * row_bytes, values.data(), cols); !s.ok()) {
      return s;
    }
    if (absl::Status s = Quantize(GgmlType::kQ8_0, values.data(),
                                  q8.data() + r * (cols / 32) * kQ8_0Bytes, cols);
        !s.ok()) {
      return s;
    }
  }
  RepackedMatrix m = RepackQ8_0(q8.data(), rows, cols);
  m.exact = false;
  return m;
}

float RepackedValue(const RepackedMatrix& m, int64_t r, int64_t c) {
  if (m.kind == RepackedKind::kInt8) {
    const float d = Fp16ToFp32(m.scales[r * (m.cols / 32) + c / 32]);
    return static_cast<float>(static_cast<int8_t>(m.qs[r * m.cols + c])) * d;
  }
  const uint8_t byte = m.qs[r * (m.cols / 2) + c / 2];
  const int q = (c & 1) ? (byte >> 4) : (byte & 0xF);
  const int64_t blk = r * (m.cols / 256) + c / 256;
  const int j = static_cast<int>((c % 256) / 32);
  const float d1 = Fp16ToFp32(m.scales[2 * blk]) * m.sub[blk * 16 + j];
  const float m1 = Fp16ToFp32(m.scales[2 * blk + 1]) * m.sub[blk * 16 + 8 + j];
  return d1 * static_cast<float>(q) - m1;
}

void RepackedMatVecReference(const RepackedMatrix& m, const float* x, float* y) {
  for (int64_t r = 0; r < m.rows; ++r) {
    double acc = 0;
    for (int64_t c = 0; c < m.cols; ++c) acc += static_cast<double>(RepackedValue(m, r, c)) * x[c];
    y[r] = static_cast<float>(acc);
  }
}

}  // namespace moeflow::cuda
