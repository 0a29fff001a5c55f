// GGUF reader and writer: round trips through our own writer, the llama.cpp
// fixtures (read, and re-written byte for byte), and one test per kind of bad
// file, each checking the status code and that the message names the fault.
#include "model/gguf.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moeflow {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

bool FileExists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

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

TEST(GgufTest, RoundTripsEveryValueTypeV3) { RoundTrip(3, 32); }
TEST(GgufTest, RoundTripsEveryValueTypeV2) { RoundTrip(2, 32); }
TEST(GgufTest, RoundTripsWithCustomAlignment) {
  RoundTrip(3, 64);
  RoundTrip(2, 4096);
  RoundTrip(3, 1);
}

TEST(GgufTest, WritesFileWithoutTensors) {
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

TEST(GgufTest, DebugStringElidesLongArrays) {
  std::vector<GgufValue> elements;
  for (int i = 0; i < 20; ++i) elements.push_back(GgufValue::Int(GgufType::kInt32, i));
  GgufValue array = GgufValue::Array(GgufType::kInt32, elements);
  EXPECT_EQ(array.DebugString(3), "[0, 1, 2, ... 17 more]");
  EXPECT_EQ(GgufValue::String("a\"b").DebugString(), "\"a\\\"b\"");
  EXPECT_EQ(GgufValue::Uint(GgufType::kBool, 1).DebugString(), "true");
}

// ---------------------------------------------------------------------------
// llama.cpp fixtures. Facts from tests/data/llamacpp/*/manifest.json.

constexpr char kV2Q4[] = "tests/data/llamacpp/tiny-v2/tiny-v2.q4_k_m.gguf";
constexpr char kV3Q8[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";
constexpr char kV3Q4[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q4_k_m.gguf";

TEST(GgufTest, OpensEveryLlamaCppFixture) {
  for (const char* model : {"tiny-v2", "tiny-v3"}) {
    for (const char* quant : {"f32", "q8_0", "q4_k_m"}) {
      const std::string path =
          std::string("tests/data/llamacpp/") + model + "/" + model + "." + quant + ".gguf";
      absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
      ASSERT_TRUE(file.ok()) << file.status();
      EXPECT_EQ((*file)->alignment(), 32u) << path;
      EXPECT_EQ(*(*file)->GetString("general.architecture"), "deepseek2") << path;
    }
  }
}

TEST(GgufTest, ReadsTinyV3Q4KMFixture) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(kV3Q4);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.file_size(), 3224128u);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.Find("general.alignment"), nullptr);
  EXPECT_EQ(f.tensors().size(), 70u);
  EXPECT_EQ(*f.GetString("general.name"), "tiny-v3");
  EXPECT_EQ(*f.GetInt("deepseek2.expert_count"), 16);
  EXPECT_EQ(*f.GetInt("deepseek2.expert_used_count"), 4);
  EXPECT_EQ(*f.GetInt("deepseek2.expert_group_count"), 4);
  EXPECT_EQ(*f.GetInt("deepseek2.attention.q_lora_rank"), 128);
  EXPECT_EQ(*f.GetInt("deepseek2.context_length"), 163840);
  EXPECT_TRUE(*f.GetBool("deepseek2.expert_weights_norm"));
  EXPECT_FLOAT_EQ(*f.GetFloat("deepseek2.expert_weights_scale"), 2.5f);
  EXPECT_FLOAT_EQ(*f.GetFloat("deepseek2.attention.layer_norm_rms_epsilon"), 1e-6f);
  EXPECT_FLOAT_EQ(*f.GetFloat("deepseek2.rope.scaling.yarn_log_multiplier"), 0.1f);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), 2048u);
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type")->size(), 2048u);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.merges")->size(), 1790u);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.bos_token_id"), 2046);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.eos_token_id"), 2047);
  EXPECT_FALSE(*f.GetBool("tokenizer.ggml.add_eos_token"));

  struct Expected {
    const char* name;
    std::vector<int64_t> ne;
    GgmlType type;
  };
  for (const Expected& e : std::vector<Expected>{
           {"token_embd.weight", {256, 2048}, GgmlType::kQ4_K},
           {"blk.0.attn_norm.weight", {256}, GgmlType::kF32},
           {"blk.0.attn_q_b.weight", {128, 256}, GgmlType::kQ5_0},
           {"blk.0.attn_k_b.weight", {32, 128, 4}, GgmlType::kQ5_0},
           {"blk.0.attn_v_b.weight", {128, 32, 4}, GgmlType::kQ5_0},
           {"blk.1.ffn_gate_exps.weight", {256, 64, 16}, GgmlType::kQ4_K},
           {"blk.1.ffn_down_exps.weight", {64, 256, 16}, GgmlType::kQ5_0},
           {"blk.2.ffn_down_exps.weight", {64, 256, 16}, GgmlType::kQ8_0},
           {"blk.1.ffn_gate_inp.weight", {256, 16}, GgmlType::kF32},
           {"blk.1.exp_probs_b.bias", {16}, GgmlType::kF32},
           {"output.weight", {256, 2048}, GgmlType::kQ6_K},
       }) {
    const GgufTensorInfo* t = f.FindTensor(e.name);
    ASSERT_NE(t, nullptr) << e.name;
    EXPECT_EQ(t->ne, e.ne) << e.name;
    EXPECT_EQ(t->type, e.type) << e.name;
    EXPECT_EQ(t->offset % 32, 0u) << e.name;
  }
  EXPECT_EQ(f.FindTensor("token_embd.weight")->ShapeString(), "{256, 2048}");
  EXPECT_EQ(f.FindTensor("token_embd.weight")->n_bytes, 2048u * 144);
  EXPECT_EQ(f.FindTensor("blk.0.attn_k_b.weight")->rows(), 512);
  EXPECT_EQ(f.data_offset() % 32, 0u);
}

TEST(GgufTest, ReadsTinyV2Q4KMFixture) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(kV2Q4);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.tensors().size(), 59u);
  EXPECT_EQ(f.metadata().size(), 46u);
  EXPECT_EQ(*f.GetInt("deepseek2.expert_count"), 16);
  EXPECT_EQ(*f.GetIntOr("deepseek2.attention.q_lora_rank", 0), 0);
  EXPECT_FALSE(*f.GetBoolOr("deepseek2.expert_weights_norm", false));
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), 2048u);
  ASSERT_NE(f.FindTensor("blk.0.attn_q.weight"), nullptr);
  EXPECT_EQ(f.FindTensor("blk.0.attn_q_a.weight"), nullptr);
}

// Re-writing a llama.cpp file with GgufWriter (same metadata, tensors and
// bytes) reproduces it byte for byte: our writer uses llama.cpp's layout.
void ExpectRewriteIsByteIdentical(const std::string& path, const std::string& out_name) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  GgufWriter writer(f.version(), f.alignment());
  for (const GgufKeyValue& kv : f.metadata()) writer.AddMetadata(kv.key, kv.value);
  for (const GgufTensorInfo& t : f.tensors()) writer.AddTensor(t.name, t.type, t.ne);
  const std::string out = TempPath(out_name);
  ASSERT_TRUE(writer.Begin(out).ok());
  EXPECT_EQ(writer.planned_size(), f.file_size());
  for (const GgufTensorInfo& t : f.tensors()) {
    ASSERT_TRUE(writer.WriteTensor(t.name, absl::MakeConstSpan(f.TensorData(t), t.n_bytes)).ok());
  }
  ASSERT_TRUE(writer.Finish().ok());
  const std::vector<uint8_t> original = ReadAll(path);
  const std::vector<uint8_t> rewritten = ReadAll(out);
  ASSERT_EQ(rewritten.size(), original.size());
  size_t first_difference = 0;
  while (first_difference < original.size() &&
         original[first_difference] == rewritten[first_difference]) {
    ++first_difference;
  }
  EXPECT_EQ(first_difference, original.size()) << "first difference at byte " << first_difference;
  std::remove(out.c_str());
}

TEST(GgufTest, RewritesTinyV2Q4KMByteIdentically) {
  ExpectRewriteIsByteIdentical(kV2Q4, "rewrite_v2_q4.gguf");
}

TEST(GgufTest, RewritesTinyV3Q8ByteIdentically) {
  ExpectRewriteIsByteIdentical(kV3Q8, "rewrite_v3_q8.gguf");
}

TEST(GgufTest, ReleasePagesKeepsDataReadable) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(kV3Q8);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensorInfo* t = (*file)->FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  const uint8_t* data = (*file)->TensorData(*t);
  const std::vector<uint8_t> before(data, data + t->n_bytes);
  (*file)->ReleasePages(data, t->n_bytes);
  // A private read-only mapping re-reads released pages from the file.
  EXPECT_EQ(std::memcmp(data, before.data(), before.size()), 0);
  (*file)->ReleasePages((*file)->TensorData((*file)->tensors().back()), UINT64_MAX / 2);
}

TEST(GgufTest, OpenReturnsNotFoundForMissingPath) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open("/nonexistent/dir/x.gguf");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/dir/x.gguf"));
}

TEST(GgufTest, OpenRejectsDirectory) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(TempPath(""));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

TEST(GgufTest, OpenRejectsFifoWithoutBlocking) {
  const std::string path = TempPath("fifo.gguf");
  ::unlink(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
  ::unlink(path.c_str());
}

TEST(GgufTest, OpenRejectsEmptyFileAsTruncated) {
  const std::string path = TempPath("empty.gguf");
  std::ofstream(path).close();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("truncated"));
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

// ---------------------------------------------------------------------------
// Bad files, built byte by byte.

class Image {
 public:
  Image& U8(uint8_t v) { return Put(v); }
  Image& U32(uint32_t v) { return Put(v); }
  Image& U64(uint64_t v) { return Put(v); }
  Image& Str(const std::string& s) {
    U64(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  Image& Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bytes.insert(bytes.end(), {'G', 'G', 'U', 'F'});
    return U32(version).U64(n_tensors).U64(n_kv);
  }
  Image& KeyU32(const std::string& key, uint32_t v) { return Str(key).U32(4).U32(v); }
  Image& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    Str(name).U32(ne.size());
    for (uint64_t n : ne) U64(n);
    return U32(type).U64(offset);
  }
  Image& PadTo(size_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
    return *this;
  }
  Image& Zeros(size_t n) {
    bytes.resize(bytes.size() + n, 0);
    return *this;
  }

  absl::Status Parse() const { return GgufFile::FromBytes(bytes, "bad.gguf").status(); }

  std::vector<uint8_t> bytes;

 private:
  template <typename T>
  Image& Put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return *this;
  }
};

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ8_0 = 8;

void ExpectInvalid(const absl::Status& status, const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("bad.gguf")) << status;
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(part)) << status;
  }
}

TEST(GgufTest, AcceptsMinimalValidImage) {
  Image image;
  image.Header(3, 1, 1).KeyU32("k", 1).Tensor("t", {4}, kF32, 0).PadTo(32).Zeros(16);
  EXPECT_TRUE(image.Parse().ok()) << image.Parse();
}

TEST(GgufTest, RejectsBadMagic) {
  Image image;
  image.Header(3, 0, 0);
  image.bytes[0] = 'X';
  ExpectInvalid(image.Parse(), {"bad magic", "offset 0"});
}

TEST(GgufTest, RejectsTruncatedHeader) {
  Image image;
  image.Header(3, 0, 0);
  image.bytes.resize(12);
  ExpectInvalid(image.Parse(), {"truncated", "tensor count", "offset 8"});
  image.bytes.resize(2);
  ExpectInvalid(image.Parse(), {"truncated", "magic", "offset 0"});
}

TEST(GgufTest, RejectsVersion1) {
  Image image;
  image.Header(1, 0, 0);
  ExpectInvalid(image.Parse(), {"GGUF v1 is not supported", "offset 4"});
}

TEST(GgufTest, RejectsUnknownVersion) {
  Image image;
  image.Header(4, 0, 0);
  ExpectInvalid(image.Parse(), {"unsupported GGUF version 4"});
  Image big_endian;
  big_endian.Header(0x03000000, 0, 0);
  ExpectInvalid(big_endian.Parse(), {"big-endian"});
}

TEST(GgufTest, RejectsKeyLengthPastEndOfFile) {
  Image image;
  image.Header(3, 0, 1).U64(1000).Zeros(20);
  ExpectInvalid(image.Parse(), {"length 1000", "metadata key #0", "past the end", "offset 24"});
}

TEST(GgufTest, RejectsStringValueLengthPastEndOfFile) {
  Image image;
  image.Header(3, 0, 1).Str("name").U32(8).U64(UINT64_MAX).Zeros(8);
  ExpectInvalid(image.Parse(), {"string value of key 'name'", "past the end", "offset 40"});
}

TEST(GgufTest, RejectsArrayLengthPastEndOfFile) {
  Image image;
  // 5 u32 elements claimed, 16 bytes present.
  image.Header(3, 0, 1).Str("arr").U32(9).U32(4).U64(5).Zeros(16);
  ExpectInvalid(image.Parse(), {"key 'arr'", "array length 5", "past the end", "offset 43"});
}

TEST(GgufTest, RejectsHugeArrayLengthWithoutAllocating) {
  Image image;
  image.Header(3, 0, 1).Str("arr").U32(9).U32(9).U64(uint64_t{1} << 60).Zeros(64);
  ExpectInvalid(image.Parse(), {"key 'arr'", "array length", "past the end"});
}

TEST(GgufTest, RejectsUnknownValueType) {
  Image image;
  image.Header(3, 0, 1).Str("k").U32(13).U32(0);
  ExpectInvalid(image.Parse(), {"key 'k'", "unknown value type 13", "offset 33"});
}

TEST(GgufTest, RejectsUnknownArrayElementType) {
  Image image;
  image.Header(3, 0, 1).Str("k").U32(9).U32(77).U64(0);
  ExpectInvalid(image.Parse(), {"key 'k'", "unknown array element type 77"});
}

TEST(GgufTest, RejectsDeeplyNestedArrays) {
  Image image;
  image.Header(3, 0, 1).Str("deep").U32(9);
  for (int i = 0; i < 100; ++i) image.U32(9).U64(1);
  image.U32(0).U64(0);
  ExpectInvalid(image.Parse(), {"key 'deep'", "nest deeper than 16"});
}

TEST(GgufTest, AcceptsNestingUpToTheLimit) {
  Image image;
  image.Header(3, 0, 1).Str("deep").U32(9);
  for (int i = 0; i < 15; ++i) image.U32(9).U64(1);
  image.U32(0).U64(1).U8(7);
  EXPECT_TRUE(image.Parse().ok()) << image.Parse();
}

TEST(GgufTest, RejectsDuplicateKeys) {
  Image image;
  image.Header(3, 0, 2).KeyU32("dup", 1).KeyU32("dup", 2);
  ExpectInvalid(image.Parse(), {"duplicate metadata key 'dup'", "offset 43"});
}

TEST(GgufTest, RejectsHugeKeyValueCount) {
  Image image;
  image.Header(3, 0, uint64_t{1} << 62).KeyU32("k", 1);
  ExpectInvalid(image.Parse(), {"key/value count", "cannot fit", "offset 16"});
}

TEST(GgufTest, RejectsHugeTensorCount) {
  Image image;
  image.Header(3, 1000, 0).Tensor("t", {4}, kF32, 0).PadTo(32).Zeros(16);
  ExpectInvalid(image.Parse(), {"tensor count 1000", "cannot fit", "offset 8"});
}

TEST(GgufTest, RejectsBadAlignment) {
  for (uint32_t alignment : {0u, 3u, 48u}) {
    Image image;
    image.Header(3, 0, 1).KeyU32("general.alignment", alignment);
    ExpectInvalid(image.Parse(), {"general.alignment", "power of two"});
  }
  Image wrong_type;
  wrong_type.Header(3, 0, 1).Str("general.alignment").U32(10).U64(64);
  ExpectInvalid(wrong_type.Parse(), {"general.alignment", "u64", "expected u32"});
}

TEST(GgufTest, HonoursCustomAlignment) {
  Image image;
  image.Header(3, 1, 1).KeyU32("general.alignment", 64).Tensor("t", {4}, kF32, 0).PadTo(64);
  const size_t header = image.bytes.size();
  image.Zeros(16);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(image.bytes, "ok.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->alignment(), 64u);
  EXPECT_EQ((*file)->data_offset(), header);
}

TEST(GgufTest, RejectsUnknownGgmlType) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, 4, 0).PadTo(32).Zeros(16);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "unknown ggml type 4 (q4_2 / q4_3, removed from ggml)", "offset 45"});
}

TEST(GgufTest, RejectsZeroDims) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "n_dims 0", "offset 33"});
}

TEST(GgufTest, RejectsMoreThanFourDims) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {1, 1, 1, 1, 1}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "n_dims 5"});
}

TEST(GgufTest, RejectsZeroDimension) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4, 0}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "ne[1] = 0", "not positive", "offset 45"});
}

TEST(GgufTest, RejectsNegativeDimension) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {static_cast<uint64_t>(-4)}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "ne[0] = -4", "not positive"});
}

TEST(GgufTest, RejectsDimsWhoseProductOverflows) {
  Image image;
  image.Header(3, 1, 0)
      .Tensor("w", {uint64_t{1} << 32, uint64_t{1} << 32}, kF32, 0)
      .PadTo(32)
      .Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "overflows int64"});
}

TEST(GgufTest, RejectsByteSizeThatOverflows) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {uint64_t{1} << 62}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "byte size", "overflows"});
}

TEST(GgufTest, RejectsRowNotMultipleOfBlockSize) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {48, 2}, kQ8_0, 0).PadTo(32).Zeros(128);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "row of 48", "block size 32"});
}

TEST(GgufTest, RejectsUnalignedTensorOffset) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, kF32, 8).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "data offset 8", "alignment 32", "offset 49"});
}

TEST(GgufTest, RejectsTensorPastEndOfFile) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {16}, kF32, 32).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "past the end of the file", "data offset 32"});
  Image huge_offset;
  huge_offset.Header(3, 1, 0).Tensor("w", {16}, kF32, UINT64_MAX - 31).PadTo(32).Zeros(64);
  ExpectInvalid(huge_offset.Parse(), {"tensor 'w'", "past the end of the file"});
}

TEST(GgufTest, RejectsTruncatedDataSection) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, kF32, 0);
  ExpectInvalid(image.Parse(), {"truncated", "data section"});
}

TEST(GgufTest, RejectsOverlappingTensors) {
  Image image;
  image.Header(3, 2, 0).Tensor("a", {16}, kF32, 32).Tensor("b", {16}, kF32, 0).PadTo(32).Zeros(96);
  ExpectInvalid(image.Parse(), {"tensor 'b'", "overlaps tensor 'a'"});
}

TEST(GgufTest, RejectsDuplicateTensorNames) {
  Image image;
  image.Header(3, 2, 0).Tensor("w", {8}, kF32, 0).Tensor("w", {8}, kF32, 32).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"duplicate tensor 'w'", "offset 57"});
}

TEST(GgufTest, RejectsTruncatedTensorInfo) {
  Image image;
  image.Header(3, 1, 0).Str("w").U32(4).U64(4).U64(4).U64(4);
  image.Zeros(3);
  ExpectInvalid(image.Parse(), {"truncated", "dimension 3 of tensor 'w'", "offset 61"});
}

// ---------------------------------------------------------------------------
// Writer errors.

TEST(GgufWriterTest, RejectsDuplicateKey) {
  GgufWriter writer;
  writer.AddMetadata("k", GgufValue::String("a"));
  writer.AddMetadata("k", GgufValue::String("b"));
  const std::string path = TempPath("dup_key.gguf");
  absl::Status status = writer.Begin(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("duplicate metadata key 'k'"));
  EXPECT_FALSE(FileExists(path + ".tmp"));
}

TEST(GgufWriterTest, RejectsDuplicateTensor) {
  GgufWriter writer;
  writer.AddTensor("w", GgmlType::kF32, {4});
  writer.AddTensor("w", GgmlType::kF32, {4});
  absl::Status status = writer.Begin(TempPath("dup_tensor.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("duplicate tensor 'w'"));
}

TEST(GgufWriterTest, RejectsShapeErrorsNamingTensor) {
  struct Case {
    GgmlType type;
    std::vector<int64_t> ne;
    const char* expected;
  };
  for (const Case& c : std::vector<Case>{{GgmlType::kQ4_K, {128, 2}, "block size 256"},
                                         {GgmlType::kF32, {}, "0 dimensions"},
                                         {GgmlType::kF32, {1, 1, 1, 1, 1}, "5 dimensions"},
                                         {GgmlType::kF32, {4, 0}, "ne[1] = 0"},
                                         {GgmlType::kF32, {4, -1}, "ne[1] = -1"}}) {
    GgufWriter writer;
    writer.AddTensor("bad.weight", c.type, c.ne);
    absl::Status status = writer.Begin(TempPath("bad_shape.gguf"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("tensor 'bad.weight'"));
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
}

TEST(GgufWriterTest, RejectsMismatchedArrayElement) {
  GgufWriter writer;
  writer.AddMetadata("arr", GgufValue::Array(GgufType::kInt32, {GgufValue::String("x")}));
  absl::Status status = writer.Begin(TempPath("bad_array.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'arr': element 0 is a string"));
}

TEST(GgufWriterTest, RejectsValueOutOfRange) {
  GgufWriter writer;
  writer.AddMetadata("small", GgufValue::Uint(GgufType::kUint8, 300));
  absl::Status status = writer.Begin(TempPath("out_of_range.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'small': value 300 does not fit in u8"));
}

TEST(GgufWriterTest, RejectsConflictingAlignmentKey) {
  GgufWriter writer(3, 64);
  writer.AddMetadata("general.alignment", GgufValue::Uint(GgufType::kUint32, 32));
  absl::Status status = writer.Begin(TempPath("conflict.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("general.alignment"));
}

TEST(GgufWriterTest, WriteTensorChecksOrderAndSize) {
  GgufWriter writer;
  writer.AddTensor("first", GgmlType::kF32, {4});
  writer.AddTensor("second", GgmlType::kF32, {4});
  const std::string path = TempPath("order.gguf");
  ASSERT_TRUE(writer.Begin(path).ok());
  const std::vector<uint8_t> bytes(16, 1);
  absl::Status status = writer.WriteTensor("second", bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("expected tensor 'first'"));
  const std::vector<uint8_t> too_many(17, 1);
  status = writer.WriteTensor("first", too_many);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor 'first'"));
  EXPECT_THAT(status.message(), HasSubstr("takes 16 bytes"));
  ASSERT_TRUE(writer.WriteTensor("first", bytes).ok());
  status = writer.Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("tensor 'second'"));
  ASSERT_TRUE(writer.WriteTensor("second", bytes).ok());
  status = writer.WriteTensor("third", bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_TRUE(FileExists(path));
}

TEST(GgufWriterTest, WriteTensorBeforeBeginFails) {
  GgufWriter writer;
  writer.AddTensor("w", GgmlType::kF32, {4});
  const std::vector<uint8_t> bytes(16, 1);
  EXPECT_EQ(writer.WriteTensor("w", bytes).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.Finish().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(GgufWriterTest, DestructorRemovesUnfinishedTmpFile) {
  const std::string path = TempPath("unfinished.gguf");
  {
    GgufWriter writer;
    writer.AddTensor("w", GgmlType::kF32, {4});
    ASSERT_TRUE(writer.Begin(path).ok());
    EXPECT_TRUE(FileExists(path + ".tmp"));
  }
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_FALSE(FileExists(path));
}

TEST(GgufWriterTest, BeginReportsMissingDirectoryNamingPath) {
  GgufWriter writer;
  absl::Status status = writer.Begin("/nonexistent/dir/out.gguf");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/dir/out.gguf.tmp"));
}

TEST(GgufWriterTest, ReportsWriteErrorNamingPath) {
  // A file size limit makes write() fail with EFBIG, as a full disk would
  // with ENOSPC.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction old_action;
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  const std::string path = TempPath("too_big.gguf");
  absl::Status status;
  {
    GgufWriter writer;
    writer.AddTensor("big", GgmlType::kF32, {1 << 20});
    ASSERT_TRUE(writer.Begin(path).ok());
    struct rlimit small = old_limit;
    small.rlim_cur = 1 << 20;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const std::vector<uint8_t> bytes(4 << 20, 1);
    status = writer.WriteTensor("big", bytes);
    if (status.ok()) status = writer.Finish();
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    // Later calls fail cleanly rather than writing a corrupt file.
    EXPECT_EQ(writer.Finish().code(), absl::StatusCode::kFailedPrecondition);
  }
  sigaction(SIGXFSZ, &old_action, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr(path + ".tmp"));
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_FALSE(FileExists(path));
}

}  // namespace
}  // namespace moeflow
