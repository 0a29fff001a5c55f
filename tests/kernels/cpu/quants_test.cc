// Tests of kernels/cpu/quants against ggml itself: vectors dumped from
// llama.cpp's ggml (tests/data/quants, see its README) and the GGUF files
// llama-quantize wrote (tests/data/llamacpp).
#include "kernels/cpu/quants.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formats/ggml_types.h"
#include "formats/quant_blocks.h"
#include "gtest/gtest.h"
#include "model/gguf.h"

namespace moeflow {
namespace {

constexpr char kQuantsDir[] = "tests/data/quants/";
constexpr char kLlamaCppDir[] = "tests/data/llamacpp/";

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// One "MFQD" file (format in tests/data/quants/README.md).
struct QuantDump {
  GgmlType type = GgmlType::kF32;
  uint32_t kind = 0;  // 0: quantized input, 1: random blocks, 2: conversions
  int64_t rows = 0;
  int64_t per_row = 0;
  uint64_t row_bytes = 0;
  std::vector<float> input;       // kinds 0 and 3
  std::vector<float> importance;  // kind 3: per_row weights (ggml's quant_weights)
  std::vector<uint8_t> quant;
  std::vector<float> dequant;
};

QuantDump LoadDump(const std::string& name) {
  const std::vector<uint8_t> bytes = ReadFile(kQuantsDir + name);
  QuantDump d;
  if (bytes.size() < 32 || std::memcmp(bytes.data(), "MFQD", 4) != 0) {
    ADD_FAILURE() << name << ": not an MFQD file";
    return d;
  }
  uint32_t h[6];
  std::memcpy(h, bytes.data(), sizeof(h));
  EXPECT_EQ(h[1], 1u) << name;
  d.type = static_cast<GgmlType>(h[2]);
  d.kind = h[3];
  d.rows = h[4];
  d.per_row = h[5];
  std::memcpy(&d.row_bytes, bytes.data() + 24, 8);
  const size_t n = static_cast<size_t>(d.rows * d.per_row);
  const size_t nq = static_cast<size_t>(d.rows) * d.row_bytes;
  size_t off = 32;
  const bool has_input = d.kind == 0 || d.kind == 3;
  const size_t want =
      off + (has_input ? 4 * n : 0) + (d.kind == 3 ? 4 * d.per_row : 0) + nq + 4 * n;
  if (d.kind == 2 || d.kind > 3 || bytes.size() != want) {
    ADD_FAILURE() << name << ": kind " << d.kind << ", " << bytes.size() << " bytes, want " << want;
    return d;
  }
  if (has_input) {
    d.input.resize(n);
    std::memcpy(d.input.data(), bytes.data() + off, 4 * n);
    off += 4 * n;
  }
  if (d.kind == 3) {
    d.importance.resize(static_cast<size_t>(d.per_row));
    std::memcpy(d.importance.data(), bytes.data() + off, 4 * d.per_row);
    off += 4 * d.per_row;
  }
  d.quant.assign(bytes.begin() + off, bytes.begin() + off + nq);
  off += nq;
  d.dequant.resize(n);
  std::memcpy(d.dequant.data(), bytes.data() + off, 4 * n);
  return d;
}

double Rmse(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s / double(n));
}

// Counts elements whose bits differ (NaN payloads included).
size_t CountBitDiffs(const std::vector<float>& a, const std::vector<float>& b) {
  size_t diffs = 0;
  for (size_t i = 0; i < a.size(); ++i) diffs += Bits(a[i]) != Bits(b[i]);
  return diffs;
}

// Types whose dumps exist in tests/data/quants.
const std::vector<std::string>& DumpedTypes() {
  static const auto* kTypes = new std::vector<std::string>{
      "f32",    "f16",   "bf16",    "q4_0",  "q4_1",  "q5_0",  "q5_1",   "q8_0",
      "q2_K",   "q3_K",  "q4_K",    "q5_K",  "q6_K",  "q8_K",  "iq4_xs", "iq2_xxs",
      "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "iq4_nl"};
  return *kTypes;
}

// The types whose .bin holds ggml's quantization with importance 1 (kind 3:
// ggml refuses them without an importance matrix).
bool NeedsImportance(const std::string& name) {
  return name == "iq2_xxs" || name == "iq2_xs" || name == "iq1_s";
}

TEST(QuantsTest, DequantizeMatchesGgmlBitForBitOnQuantizedInput) {
  for (const std::string& name : DumpedTypes()) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(name + ".bin");
    ASSERT_EQ(d.kind, NeedsImportance(name) ? 3u : 0u);
    ASSERT_EQ(Traits(d.type).name, name);
    std::vector<float> out(d.dequant.size(), -1.0f);
    ASSERT_TRUE(Dequantize(d.type, d.quant.data(), out.data(), out.size()).ok());
    EXPECT_EQ(CountBitDiffs(out, d.dequant), 0u);
  }
}

TEST(QuantsTest, DequantizeMatchesGgmlBitForBitOnRandomBlocks) {
  for (const std::string& name : DumpedTypes()) {
    if (name == "f32") continue;
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(name + ".random.bin");
    ASSERT_EQ(d.kind, 1u);
    std::vector<float> out(d.dequant.size(), -1.0f);
    ASSERT_TRUE(Dequantize(d.type, d.quant.data(), out.data(), out.size()).ok());
    EXPECT_EQ(CountBitDiffs(out, d.dequant), 0u);
  }
}

TEST(QuantsTest, QuantizeMatchesGgmlBytesOnMixedInput) {
  for (const std::string& name : DumpedTypes()) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(name + ".bin");
    ASSERT_TRUE(CanQuantize(d.type));
    // The input is not trivial: rows of normal, uniform, outliers, tiny values.
    double sum_abs = 0;
    for (float v : d.input) sum_abs += std::fabs(v);
    ASSERT_GT(sum_abs, 100.0);
    std::vector<uint8_t> out(d.quant.size(), 0xAA);
    ASSERT_TRUE(Quantize(d.type, d.input.data(), out.data(), d.input.size()).ok());
    size_t diff_bytes = 0;
    for (size_t i = 0; i < out.size(); ++i) diff_bytes += out[i] != d.quant[i];
    EXPECT_EQ(diff_bytes, 0u) << "of " << out.size() << " bytes";
    // The bound the K-quants must meet even where bytes differ.
    std::vector<float> ours(d.input.size());
    ASSERT_TRUE(Dequantize(d.type, out.data(), ours.data(), ours.size()).ok());
    const size_t n = ours.size();
    EXPECT_LE(Rmse(ours.data(), d.input.data(), n),
              1.01 * Rmse(d.dequant.data(), d.input.data(), n));
  }
}

TEST(QuantsTest, QuantizesRowByRowAsInOneCall) {
  for (const std::string& name : DumpedTypes()) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(name + ".bin");
    if (!CanQuantize(d.type)) continue;
    std::vector<uint8_t> whole(d.quant.size());
    ASSERT_TRUE(Quantize(d.type, d.input.data(), whole.data(), d.input.size()).ok());
    std::vector<uint8_t> rowwise(d.quant.size());
    for (int64_t r = 0; r < d.rows; ++r) {
      ASSERT_TRUE(Quantize(d.type, d.input.data() + r * d.per_row, rowwise.data() + r * d.row_bytes,
                           d.per_row)
                      .ok());
    }
    EXPECT_EQ(rowwise, whole);
  }
}

TEST(QuantsTest, Fp16ToFp32MatchesGgmlForAll65536Patterns) {
  const QuantDump d = LoadDump("f16.random.bin");
  ASSERT_EQ(d.dequant.size(), 65536u);
  for (uint32_t h = 0; h < 65536; ++h) {
    uint16_t stored;
    std::memcpy(&stored, d.quant.data() + 2 * h, 2);
    ASSERT_EQ(stored, h);
    ASSERT_EQ(Bits(Fp16ToFp32(static_cast<uint16_t>(h))), Bits(d.dequant[h])) << std::hex << h;
  }
}

TEST(QuantsTest, Fp32ToFp16AndBf16MatchGgmlOnSpecialsAndRandomBits) {
  const std::vector<uint8_t> bytes = ReadFile(std::string(kQuantsDir) + "conv.bin");
  ASSERT_GE(bytes.size(), 32u);
  uint32_t h[6];
  std::memcpy(h, bytes.data(), sizeof(h));
  ASSERT_EQ(h[3], 2u);
  const size_t n = h[5];
  ASSERT_EQ(bytes.size(), 32 + 8 * n);
  const uint8_t* f32 = bytes.data() + 32;
  const uint8_t* f16 = f32 + 4 * n;
  const uint8_t* bf16 = f16 + 2 * n;
  for (size_t i = 0; i < n; ++i) {
    uint32_t x;
    uint16_t want_h, want_b;
    std::memcpy(&x, f32 + 4 * i, 4);
    std::memcpy(&want_h, f16 + 2 * i, 2);
    std::memcpy(&want_b, bf16 + 2 * i, 2);
    ASSERT_EQ(Fp32ToFp16(FromBits(x)), want_h) << std::hex << "f32 bits " << x;
    ASSERT_EQ(Fp32ToBf16(FromBits(x)), want_b) << std::hex << "f32 bits " << x;
  }
}

TEST(QuantsTest, Fp16RoundTripsAll65536PatternsAndNanStaysNan) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t half = static_cast<uint16_t>(h);
    const float f = Fp16ToFp32(half);
    const bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0;
    ASSERT_EQ(std::isnan(f), is_nan) << std::hex << h;
    if (is_nan) {
      ASSERT_EQ(Fp32ToFp16(f), (h & 0x8000) | 0x7e00) << std::hex << h;  // ggml's canonical NaN
    } else {
      ASSERT_EQ(Fp32ToFp16(f), half) << std::hex << h;
    }
  }
}

TEST(QuantsTest, Bf16RoundTripsAll65536PatternsAndNanStaysNan) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const float f = Bf16ToFp32(b);
    ASSERT_EQ(Bits(f), h << 16);
    const bool is_nan = (h & 0x7f80) == 0x7f80 && (h & 0x007f) != 0;
    ASSERT_EQ(std::isnan(f), is_nan);
    // A NaN comes back quiet (bit 6 set), everything else unchanged.
    ASSERT_EQ(Fp32ToBf16(f), is_nan ? (b | 0x40) : b) << std::hex << h;
  }
}

TEST(QuantsTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(Fp32ToBf16(FromBits(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(Fp32ToBf16(FromBits(0x3f818000)), 0x3f82);  // tie, odd below: up
  EXPECT_EQ(Fp32ToBf16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(Fp32ToBf16(FromBits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to Inf
}

TEST(QuantsTest, Fp16RoundsToNearestEvenAndOverflowsToInf) {
  EXPECT_EQ(Fp32ToFp16(1.0f + 0x1p-11f), 0x3c00);      // tie, even below
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie, odd below: up
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7bff);
  EXPECT_EQ(Fp32ToFp16(65519.996f), 0x7bff);
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7c00);
  EXPECT_EQ(Fp32ToFp16(-1e10f), 0xfc00);
  EXPECT_EQ(Fp32ToFp16(0x1p-24f), 0x0001);    // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(0x1p-25f), 0x0000);    // tie to even (zero)
  EXPECT_EQ(Fp32ToFp16(0x1.8p-24f), 0x0002);  // tie, odd below: up
  EXPECT_EQ(Fp32ToFp16(-0.0f), 0x8000);
}

TEST(QuantsTest, RejectsCountsNotAMultipleOfTheBlockSize) {
  std::vector<float> f(1024, 0.5f);
  std::vector<uint8_t> q(8192);
  for (const std::string& name : DumpedTypes()) {
    const GgmlType type = *ParseGgmlType(name);
    const int64_t block = Traits(type).block_size;
    if (block == 1) continue;
    SCOPED_TRACE(name);
    const absl::Status de = Dequantize(type, q.data(), f.data(), block + 1);
    EXPECT_EQ(de.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(de.message().find(name), absl::string_view::npos) << de;
    if (CanQuantize(type)) {
      const std::vector<uint8_t> before = q;
      const absl::Status qs = Quantize(type, f.data(), q.data(), block - 1);
      EXPECT_EQ(qs.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(q, before);  // nothing written
    }
  }
  EXPECT_EQ(Quantize(GgmlType::kF16, f.data(), q.data(), -2).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QuantsTest, RejectsUnsupportedTypesNamingThem) {
  std::vector<float> f(256, 1.0f);
  std::vector<uint8_t> q(4096);
  for (GgmlType type :
       {GgmlType::kQ8_1, GgmlType::kTQ1_0, GgmlType::kTQ2_0, GgmlType::kI32, GgmlType::kF64}) {
    const std::string name(Traits(type).name);
    SCOPED_TRACE(name);
    EXPECT_FALSE(CanDequantize(type));
    EXPECT_FALSE(CanQuantize(type));
    const absl::Status de = Dequantize(type, q.data(), f.data(), 256);
    EXPECT_EQ(de.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(de.message().find(name), absl::string_view::npos) << de;
    const absl::Status qs = Quantize(type, f.data(), q.data(), 256);
    EXPECT_EQ(qs.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(qs.message().find(name), absl::string_view::npos) << qs;
  }
}

TEST(QuantsTest, BlockSizesMatchTheTypeTable) {
  EXPECT_EQ(Traits(GgmlType::kQ4_0).type_size, int64_t{sizeof(BlockQ4_0)});
  EXPECT_EQ(Traits(GgmlType::kQ4_1).type_size, int64_t{sizeof(BlockQ4_1)});
  EXPECT_EQ(Traits(GgmlType::kQ5_0).type_size, int64_t{sizeof(BlockQ5_0)});
  EXPECT_EQ(Traits(GgmlType::kQ5_1).type_size, int64_t{sizeof(BlockQ5_1)});
  EXPECT_EQ(Traits(GgmlType::kQ8_0).type_size, int64_t{sizeof(BlockQ8_0)});
  EXPECT_EQ(Traits(GgmlType::kQ2_K).type_size, int64_t{sizeof(BlockQ2_K)});
  EXPECT_EQ(Traits(GgmlType::kQ3_K).type_size, int64_t{sizeof(BlockQ3_K)});
  EXPECT_EQ(Traits(GgmlType::kQ4_K).type_size, int64_t{sizeof(BlockQ4_K)});
  EXPECT_EQ(Traits(GgmlType::kQ5_K).type_size, int64_t{sizeof(BlockQ5_K)});
  EXPECT_EQ(Traits(GgmlType::kQ6_K).type_size, int64_t{sizeof(BlockQ6_K)});
  EXPECT_EQ(Traits(GgmlType::kQ8_K).type_size, int64_t{sizeof(BlockQ8_K)});
  EXPECT_EQ(Traits(GgmlType::kIQ4_XS).type_size, int64_t{sizeof(BlockIQ4_XS)});
  EXPECT_EQ(Traits(GgmlType::kIQ2_XXS).type_size, int64_t{sizeof(BlockIQ2_XXS)});
  EXPECT_EQ(Traits(GgmlType::kIQ2_XS).type_size, int64_t{sizeof(BlockIQ2_XS)});
  EXPECT_EQ(Traits(GgmlType::kIQ2_S).type_size, int64_t{sizeof(BlockIQ2_S)});
  EXPECT_EQ(Traits(GgmlType::kIQ3_XXS).type_size, int64_t{sizeof(BlockIQ3_XXS)});
  EXPECT_EQ(Traits(GgmlType::kIQ3_S).type_size, int64_t{sizeof(BlockIQ3_S)});
  EXPECT_EQ(Traits(GgmlType::kIQ1_S).type_size, int64_t{sizeof(BlockIQ1_S)});
  EXPECT_EQ(Traits(GgmlType::kIQ1_M).type_size, int64_t{sizeof(BlockIQ1_M)});
  EXPECT_EQ(Traits(GgmlType::kIQ4_NL).type_size, int64_t{sizeof(BlockIQ4_NL)});
}

// Blocks that index every entry of each IQ grid once (the ones the grids were
// read back from): every table entry dequantizes to ggml's bits.
TEST(QuantsTest, DequantizeMatchesGgmlOnEveryGridEntry) {
  for (const std::string& name : {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s"}) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(name + std::string(".grid.bin"));
    ASSERT_EQ(d.kind, 1u);
    ASSERT_GE(d.dequant.size(), 256u * 4);  // the smallest grid: 256 entries of 4
    std::vector<float> out(d.dequant.size(), -1.0f);
    ASSERT_TRUE(Dequantize(d.type, d.quant.data(), out.data(), out.size()).ok());
    EXPECT_EQ(CountBitDiffs(out, d.dequant), 0u);
  }
}

// ggml's quantizers with an importance vector (llama-quantize --imatrix):
// the same bytes for every type whose quantizer reads one.
TEST(QuantsTest, QuantizeRowsWithImportanceMatchesGgmlBytes) {
  for (const std::string& name :
       {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "iq4_nl", "iq4_xs",
        "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q4_0", "q4_1", "q5_0", "q5_1"}) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(std::string(name) + ".imatrix.bin");
    ASSERT_EQ(d.kind, 3u);
    ASSERT_TRUE(QuantizeUsesImportance(d.type));
    std::vector<uint8_t> out(d.quant.size(), 0xAA);
    ASSERT_TRUE(
        QuantizeRows(d.type, d.input.data(), out.data(), d.rows, d.per_row, d.importance.data())
            .ok());
    size_t diff_bytes = 0;
    for (size_t i = 0; i < out.size(); ++i) diff_bytes += out[i] != d.quant[i];
    EXPECT_EQ(diff_bytes, 0u) << "of " << out.size() << " bytes";
    // Without importance the bytes differ (the importance matters).
    std::vector<uint8_t> plain(d.quant.size());
    ASSERT_TRUE(
        QuantizeRows(d.type, d.input.data(), plain.data(), d.rows, d.per_row, nullptr).ok());
    EXPECT_NE(plain, out);
  }
}

TEST(QuantsTest, DequantizeMatchesGgmlBitForBitOnImportanceWeightedBlocks) {
  for (const std::string& name :
       {"iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "iq4_nl", "iq4_xs",
        "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q4_0", "q4_1", "q5_0", "q5_1"}) {
    SCOPED_TRACE(name);
    const QuantDump d = LoadDump(std::string(name) + ".imatrix.bin");
    ASSERT_EQ(d.kind, 3u);
    std::vector<float> out(d.dequant.size(), -1.0f);
    ASSERT_TRUE(Dequantize(d.type, d.quant.data(), out.data(), out.size()).ok());
    EXPECT_EQ(CountBitDiffs(out, d.dequant), 0u);
  }
}

// --- llama-quantize fixtures -------------------------------------------------

struct FixtureStats {
  int64_t tensors = 0;
  int64_t identical = 0;
  double sum_sq_err = 0;  // dequantized file bytes vs the f32 source
  double sum_sq = 0;
  int64_t n = 0;
};

// For every quantized tensor of `quant_file`: Quantize(the f32 tensor) must
// give the file's bytes, and Dequantize(the file's bytes) must be close to
// the f32 source. Returns per-type statistics.
std::map<GgmlType, FixtureStats> CheckAgainstLlamaQuantize(const std::string& f32_file,
                                                           const std::string& quant_file) {
  std::map<GgmlType, FixtureStats> stats;
  auto src = GgufFile::Open(kLlamaCppDir + f32_file);
  auto dst = GgufFile::Open(kLlamaCppDir + quant_file);
  if (!src.ok() || !dst.ok()) {
    ADD_FAILURE() << src.status() << " " << dst.status();
    return stats;
  }
  EXPECT_EQ((*src)->tensors().size(), (*dst)->tensors().size());
  for (const GgufTensorInfo& t : (*dst)->tensors()) {
    if (t.type == GgmlType::kF32) continue;
    SCOPED_TRACE(absl::StrCat(quant_file, ": ", t.name, " (", Traits(t.type).name, ")"));
    const GgufTensorInfo* s = (*src)->FindTensor(t.name);
    if (s == nullptr) {
      ADD_FAILURE() << "not in " << f32_file;
      continue;
    }
    EXPECT_EQ(s->type, GgmlType::kF32);
    EXPECT_EQ(s->ne, t.ne);
    const int64_t per_row = t.ne[0];
    const int64_t rows = t.rows();
    const int64_t row_bytes = *RowBytes(t.type, per_row);
    if (uint64_t(row_bytes * rows) != t.n_bytes) {
      ADD_FAILURE() << t.n_bytes << " bytes, want " << row_bytes * rows;
      continue;
    }
    const float* x = reinterpret_cast<const float*>((*src)->TensorData(*s));
    const uint8_t* want = (*dst)->TensorData(t);
    std::vector<uint8_t> ours(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_TRUE(Quantize(t.type, x + r * per_row, ours.data() + r * row_bytes, per_row).ok());
    }
    FixtureStats& st = stats[t.type];
    ++st.tensors;
    const bool identical = std::memcmp(ours.data(), want, ours.size()) == 0;
    st.identical += identical;
    EXPECT_TRUE(identical);
    std::vector<float> deq(per_row * rows);
    EXPECT_TRUE(Dequantize(t.type, want, deq.data(), deq.size()).ok());
    for (size_t i = 0; i < deq.size(); ++i) {
      st.sum_sq_err += (double(deq[i]) - x[i]) * (double(deq[i]) - x[i]);
      st.sum_sq += double(x[i]) * x[i];
    }
    st.n += deq.size();
  }
  return stats;
}

// Relative RMSE (RMSE / RMS of the source) of llama-quantize's output on the
// fixtures' Gaussian weights, as measured (both models agree to 0.01 %):
// Q8_0 0.536 %, Q6_K 1.776 %, Q5_0 4.27 %, Q4_K 7.13 %. The window is +-10 %:
// a dequantizer that reads the bytes wrongly lands far outside it.
struct RmseWindow {
  double lo, hi;
};
RmseWindow ExpectedRelativeRmse(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return {0.00536 * 0.9, 0.00536 * 1.1};
    case GgmlType::kQ6_K:
      return {0.01776 * 0.9, 0.01776 * 1.1};
    case GgmlType::kQ5_0:
      return {0.0427 * 0.9, 0.0427 * 1.1};
    case GgmlType::kQ4_K:
      return {0.0713 * 0.9, 0.0713 * 1.1};
    default:
      return {0.0, 0.0};  // no other type in these files
  }
}

void CheckModel(const std::string& model) {
  for (const char* quant : {"q8_0", "q4_k_m"}) {
    SCOPED_TRACE(absl::StrCat(model, ".", quant));
    const auto stats =
        CheckAgainstLlamaQuantize(absl::StrCat(model, "/", model, ".f32.gguf"),
                                  absl::StrCat(model, "/", model, ".", quant, ".gguf"));
    EXPECT_FALSE(stats.empty());
    for (const auto& [type, s] : stats) {
      const double rel = std::sqrt(s.sum_sq_err / s.sum_sq);
      std::printf("%s.%s %-5s tensors %3lld identical %3lld relative RMSE %.4f%%\n", model.c_str(),
                  quant, std::string(Traits(type).name).c_str(), (long long)s.tensors,
                  (long long)s.identical, 100 * rel);
      EXPECT_EQ(s.identical, s.tensors) << Traits(type).name;
      const RmseWindow window = ExpectedRelativeRmse(type);
      EXPECT_GT(rel, window.lo) << Traits(type).name;
      EXPECT_LT(rel, window.hi) << Traits(type).name;
    }
  }
}

TEST(QuantsTest, QuantizeReproducesLlamaQuantizeOnTinyV2) { CheckModel("tiny-v2"); }
TEST(QuantsTest, QuantizeReproducesLlamaQuantizeOnTinyV3) { CheckModel("tiny-v3"); }

// llama_quantize_tiny_v2.txt: for 11 more llama-quantize presets of
// tiny-v2.f32.gguf (README), the FNV-1a 64 hash of every quantized tensor.
// Quantize must hash the same: byte identity for Q2_K, Q3_K, Q4_0, Q4_1, Q5_0,
// Q5_1, Q4_K, Q5_K, Q6_K, Q8_0, F16 and BF16 on a whole model.
uint64_t Fnv1a64(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

TEST(QuantsTest, QuantizeMatchesLlamaQuantizeHashesForElevenPresets) {
  auto src = GgufFile::Open(std::string(kLlamaCppDir) + "tiny-v2/tiny-v2.f32.gguf");
  ASSERT_TRUE(src.ok()) << src.status();
  std::ifstream in(std::string(kQuantsDir) + "llama_quantize_tiny_v2.txt");
  ASSERT_TRUE(in.good());
  std::string preset, name, type_name, hash_hex;
  uint64_t n_bytes = 0;
  std::map<std::string, int> identical_per_type, tensors_per_type;
  int lines = 0;
  while (in >> preset >> name >> type_name >> n_bytes >> hash_hex) {
    ++lines;
    SCOPED_TRACE(absl::StrCat(preset, " ", name, " ", type_name));
    const auto type = ParseGgmlType(type_name);
    ASSERT_TRUE(type.ok());
    const GgufTensorInfo* t = (*src)->FindTensor(name);
    ASSERT_NE(t, nullptr);
    const int64_t row_bytes = *RowBytes(*type, t->ne[0]);
    ASSERT_EQ(uint64_t(row_bytes * t->rows()), n_bytes);
    const float* x = reinterpret_cast<const float*>((*src)->TensorData(*t));
    std::vector<uint8_t> ours(n_bytes);
    for (int64_t r = 0; r < t->rows(); ++r) {
      ASSERT_TRUE(Quantize(*type, x + r * t->ne[0], ours.data() + r * row_bytes, t->ne[0]).ok());
    }
    const uint64_t want = std::stoull(hash_hex, nullptr, 16);
    EXPECT_EQ(Fnv1a64(ours.data(), ours.size()), want);
    ++tensors_per_type[type_name];
    identical_per_type[type_name] += Fnv1a64(ours.data(), ours.size()) == want;
  }
  EXPECT_EQ(lines, 473);
  for (const auto& [type_name, n] : tensors_per_type) {
    std::printf("llama-quantize presets: %-5s %3d / %3d tensors identical\n", type_name.c_str(),
                identical_per_type[type_name], n);
  }
  EXPECT_EQ(tensors_per_type.size(), 12u);  // the 12 types above
}

}  // namespace
}  // namespace moeflow
