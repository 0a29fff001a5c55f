// GGUF round trips through our own writer (model/gguf.h): every value type,
// v2 and v3, custom alignments, a file without tensors; the typed getters
// and their errors on a written file; DebugString.
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/test_files.h"

namespace moeflow {
namespace {

using model_testing::FileExists;
using model_testing::TempPath;
using ::testing::HasSubstr;

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// ---------------------------------------------------------------------------
// Round trip through GgufWriter.

std::vector<GgufKeyValue> EveryValueType() {
  std::vector<GgufKeyValue> kv;
  kv.push_back({"t.u8", GgufValue::Uint(GgufType::kUint8, 200)});
  kv.push_back({"t.i8", GgufValue::Int(GgufType::kInt8, -100)});
  kv.push_back({"t.u16", GgufValue::Uint(GgufType::kUint16, 60000)});
  kv.push_back({"t.i16", GgufValue::Int(GgufType::kInt16, -30000)});
  kv.push_back({"t.u32", GgufValue::Uint(GgufType::kUint32, 4000000000u)});
  kv.push_back({"t.i32", GgufValue::Int(GgufType::kInt32, -2000000000)});
  kv.push_back({"t.f32", GgufValue::Float(GgufType::kFloat32, 0.15625)});
  kv.push_back({"t.bool", GgufValue::Uint(GgufType::kBool, 1)});
  kv.push_back({"t.string", GgufValue::String(std::string("héllo\0world", 12))});
  kv.push_back({"t.u64", GgufValue::Uint(GgufType::kUint64, 18000000000000000000ull)});
  kv.push_back({"t.i64", GgufValue::Int(GgufType::kInt64, -9000000000000000000ll)});
  kv.push_back({"t.f64", GgufValue::Float(GgufType::kFloat64, 1e-300)});
  kv.push_back({"t.empty_string", GgufValue::String("")});
  kv.push_back(
      {"t.arr_i32", GgufValue::Array(GgufType::kInt32, {GgufValue::Int(GgufType::kInt32, -1),
                                                        GgufValue::Int(GgufType::kInt32, 7)})});
  kv.push_back({"t.arr_f32",
                GgufValue::Array(GgufType::kFloat32, {GgufValue::Float(GgufType::kFloat32, 2.5)})});
  kv.push_back({"t.arr_str",
                GgufValue::Array(GgufType::kString, {GgufValue::String("a"), GgufValue::String(""),
                                                     GgufValue::String("ccc")})});
  kv.push_back(
      {"t.arr_bool", GgufValue::Array(GgufType::kBool, {GgufValue::Uint(GgufType::kBool, 0),
                                                        GgufValue::Uint(GgufType::kBool, 1)})});
  kv.push_back({"t.arr_empty", GgufValue::Array(GgufType::kUint64, {})});
  kv.push_back(
      {"t.arr_nested",
       GgufValue::Array(
           GgufType::kArray,
           {GgufValue::Array(GgufType::kUint16, {GgufValue::Uint(GgufType::kUint16, 1),
                                                 GgufValue::Uint(GgufType::kUint16, 2)}),
            GgufValue::Array(GgufType::kUint16, {}),
            GgufValue::Array(GgufType::kUint16, {GgufValue::Uint(GgufType::kUint16, 3)})})});
  kv.push_back(
      {"t.arr_u8", GgufValue::Array(GgufType::kUint8, {GgufValue::Uint(GgufType::kUint8, 255)})});
  kv.push_back(
      {"t.arr_i8", GgufValue::Array(GgufType::kInt8, {GgufValue::Int(GgufType::kInt8, -128)})});
  kv.push_back(
      {"t.arr_i16", GgufValue::Array(GgufType::kInt16, {GgufValue::Int(GgufType::kInt16, -5)})});
  kv.push_back(
      {"t.arr_u32", GgufValue::Array(GgufType::kUint32, {GgufValue::Uint(GgufType::kUint32, 5)})});
  kv.push_back(
      {"t.arr_i64", GgufValue::Array(GgufType::kInt64, {GgufValue::Int(GgufType::kInt64, -5)})});
  kv.push_back({"t.arr_f64", GgufValue::Array(GgufType::kFloat64,
                                              {GgufValue::Float(GgufType::kFloat64, -0.5)})});
  return kv;
}

void ExpectSameValue(const GgufValue& a, const GgufValue& b, const std::string& key) {
  ASSERT_EQ(a.type(), b.type()) << key;
  switch (a.type()) {
    case GgufType::kString:
      EXPECT_EQ(a.as_string(), b.as_string()) << key;
      break;
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      EXPECT_EQ(a.as_float(), b.as_float()) << key;
      break;
    case GgufType::kInt8:
    case GgufType::kInt16:
    case GgufType::kInt32:
    case GgufType::kInt64:
      EXPECT_EQ(a.as_int(), b.as_int()) << key;
      break;
    case GgufType::kArray:
      ASSERT_EQ(a.element_type(), b.element_type()) << key;
      ASSERT_EQ(a.as_array().size(), b.as_array().size()) << key;
      for (size_t i = 0; i < a.as_array().size(); ++i) {
        ExpectSameValue(a.as_array()[i], b.as_array()[i], key + "[" + std::to_string(i) + "]");
      }
      break;
    default:
      EXPECT_EQ(a.as_uint(), b.as_uint()) << key;
  }
}

struct TensorSpec {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
};

void RoundTrip(uint32_t version, uint64_t alignment) {
  SCOPED_TRACE(testing::Message() << "v" << version << " alignment " << alignment);
  const std::vector<GgufKeyValue> kv = EveryValueType();
  const std::vector<TensorSpec> specs = {
      {"a.f32", GgmlType::kF32, {4, 3}},          {"b.f16", GgmlType::kF16, {8}},
      {"c.q8_0", GgmlType::kQ8_0, {64, 2}},       {"d.q4_k", GgmlType::kQ4_K, {256, 2, 2}},
      {"e.q5_0", GgmlType::kQ5_0, {32, 1, 1, 3}}, {"f.q6_k", GgmlType::kQ6_K, {512, 1}},
  };
  GgufWriter writer(version, alignment);
  for (const GgufKeyValue& e : kv) writer.AddMetadata(e.key, e.value);
  for (const TensorSpec& s : specs) writer.AddTensor(s.name, s.type, s.ne);
  const std::string path = TempPath("roundtrip_v" + std::to_string(version) + "_a" +
                                    std::to_string(alignment) + ".gguf");
  ASSERT_TRUE(writer.Begin(path).ok());
  std::vector<std::vector<uint8_t>> data;
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t row = *RowBytes(specs[i].type, specs[i].ne[0]);
    int64_t rows = 1;
    for (size_t d = 1; d < specs[i].ne.size(); ++d) rows *= specs[i].ne[d];
    data.push_back(RandomBytes(row * rows, i + 1));
    // Two chunks per tensor exercise partial writes.
    const size_t half = data[i].size() / 2;
    ASSERT_TRUE(writer.WriteTensor(specs[i].name, absl::MakeSpan(data[i]).subspan(0, half)).ok());
    ASSERT_TRUE(writer.WriteTensor(specs[i].name, absl::MakeSpan(data[i]).subspan(half)).ok());
  }
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_FALSE(FileExists(path + ".tmp"));

  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), version);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.file_size(), writer.planned_size());
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  const size_t extra = alignment != 32 ? 1 : 0;  // general.alignment
  ASSERT_EQ(f.metadata().size(), kv.size() + extra);
  for (size_t i = 0; i < kv.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].key, kv[i].key);
    ExpectSameValue(f.metadata()[i].value, kv[i].value, kv[i].key);
  }
  if (extra) {
    EXPECT_EQ(f.metadata().back().key, "general.alignment");
    EXPECT_EQ(*f.GetInt("general.alignment"), static_cast<int64_t>(alignment));
  }
  ASSERT_EQ(f.tensors().size(), specs.size());
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, specs[i].name);
    EXPECT_EQ(t.type, specs[i].type);
    EXPECT_EQ(t.ne, specs[i].ne);
    EXPECT_EQ(t.n_bytes, data[i].size());
    EXPECT_EQ(t.offset, expected_offset);
    expected_offset += (t.n_bytes + alignment - 1) / alignment * alignment;
    EXPECT_EQ(f.FindTensor(specs[i].name), &t);
    EXPECT_EQ(std::memcmp(f.TensorData(t), data[i].data(), data[i].size()), 0) << t.name;
  }
  EXPECT_EQ(f.data_offset() + expected_offset, f.file_size());
}

TEST(GgufRoundTripTest, RoundTripsEveryValueTypeV3) { RoundTrip(3, 32); }
TEST(GgufRoundTripTest, RoundTripsEveryValueTypeV2) { RoundTrip(2, 32); }
TEST(GgufRoundTripTest, RoundTripsWithCustomAlignment) {
  RoundTrip(3, 64);
  RoundTrip(2, 4096);
  RoundTrip(3, 1);
}

TEST(GgufRoundTripTest, WritesFileWithoutTensors) {
  GgufWriter writer;
  writer.AddMetadata("general.architecture", GgufValue::String("none"));
  const std::string path = TempPath("no_tensors.gguf");
  ASSERT_TRUE(writer.Begin(path).ok());
  ASSERT_TRUE(writer.Finish().ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "none");
}

// ---------------------------------------------------------------------------
// Typed getters.

class GgufGetterTest : public testing::Test {
 protected:
  void SetUp() override {
    GgufWriter writer;
    for (GgufKeyValue& kv : EveryValueType()) writer.AddMetadata(kv.key, kv.value);
    path_ = TempPath("getters.gguf");
    ASSERT_TRUE(writer.Begin(path_).ok());
    ASSERT_TRUE(writer.Finish().ok());
    auto file = GgufFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  std::string path_;
  std::unique_ptr<GgufFile> file_;
};

TEST_F(GgufGetterTest, ReturnsTypedValues) {
  EXPECT_EQ(*file_->GetInt("t.u32"), 4000000000);
  EXPECT_EQ(*file_->GetInt("t.i8"), -100);
  EXPECT_EQ(*file_->GetFloat("t.f32"), 0.15625);
  EXPECT_EQ(*file_->GetFloat("t.i16"), -30000.0);
  EXPECT_TRUE(*file_->GetBool("t.bool"));
  EXPECT_EQ(*file_->GetString("t.string"), std::string("héllo\0world", 12));
  EXPECT_THAT(*file_->GetStringArray("t.arr_str"), testing::ElementsAre("a", "", "ccc"));
  EXPECT_THAT(*file_->GetIntArray("t.arr_i32"), testing::ElementsAre(-1, 7));
  EXPECT_THAT(*file_->GetFloatArray("t.arr_f32"), testing::ElementsAre(2.5));
  EXPECT_THAT(*file_->GetFloatArray("t.arr_i32"), testing::ElementsAre(-1.0, 7.0));
  EXPECT_EQ(*file_->GetIntOr("absent", 42), 42);
  EXPECT_EQ(*file_->GetFloatOr("absent", 1.5), 1.5);
  EXPECT_FALSE(*file_->GetBoolOr("absent", false));
  EXPECT_EQ(*file_->GetIntOr("t.i64", 0), -9000000000000000000ll);
}

TEST_F(GgufGetterTest, RejectsMissingKeyWithNotFound) {
  absl::StatusOr<int64_t> v = file_->GetInt("no.such.key");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(v.status().message(), HasSubstr("no.such.key"));
}

TEST_F(GgufGetterTest, RejectsWrongTypeNamingKeyAndType) {
  absl::StatusOr<int64_t> v = file_->GetInt("t.string");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("'t.string' is a string"));
  EXPECT_EQ(file_->GetBool("t.u8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file_->GetInt("t.bool").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file_->GetIntOr("t.f32", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file_->GetStringArray("t.arr_i32").status().message(), HasSubstr("array of i32"));
}

TEST_F(GgufGetterTest, RejectsU64ThatDoesNotFitInt64) {
  absl::StatusOr<int64_t> v = file_->GetInt("t.u64");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("int64"));
}

TEST(GgufRoundTripTest, DebugStringElidesLongArrays) {
  std::vector<GgufValue> elements;
  for (int i = 0; i < 20; ++i) elements.push_back(GgufValue::Int(GgufType::kInt32, i));
  GgufValue array = GgufValue::Array(GgufType::kInt32, elements);
  EXPECT_EQ(array.DebugString(3), "[0, 1, 2, ... 17 more]");
  EXPECT_EQ(GgufValue::String("a\"b").DebugString(), "\"a\\\"b\"");
  EXPECT_EQ(GgufValue::Uint(GgufType::kBool, 1).DebugString(), "true");
}

}  // namespace
}  // namespace moeflow
