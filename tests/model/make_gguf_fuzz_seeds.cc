// Writes the small, valid GGUF files under tests/data/gguf_fuzz/seeds with
// GgufWriter. Run once after changing it:
//   bazel run //tests/model:make_gguf_fuzz_seeds -- $PWD/tests/data/gguf_fuzz/seeds
// Each seed is a few hundred bytes, so mutations reach every field quickly.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/check.h"
#include "model/gguf.h"

namespace moeflow {
namespace {

struct Tensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
};

absl::Status WriteSeed(const std::string& path, uint32_t version, uint64_t alignment,
                       const std::vector<GgufKeyValue>& metadata,
                       const std::vector<Tensor>& tensors) {
  GgufWriter writer(version, alignment);
  for (const GgufKeyValue& kv : metadata) writer.AddMetadata(kv.key, kv.value);
  for (const Tensor& t : tensors) writer.AddTensor(t.name, t.type, t.ne);
  MOEFLOW_RETURN_IF_ERROR(writer.Begin(path));
  for (const Tensor& t : tensors) {
    absl::StatusOr<int64_t> row = RowBytes(t.type, t.ne[0]);
    MOEFLOW_RETURN_IF_ERROR(row.status());
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    std::vector<uint8_t> bytes(*row * rows);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
    MOEFLOW_RETURN_IF_ERROR(writer.WriteTensor(t.name, bytes));
  }
  return writer.Finish();
}

GgufValue U32(uint32_t v) { return GgufValue::Uint(GgufType::kUint32, v); }
GgufValue Str(std::string s) { return GgufValue::String(std::move(s)); }

int Main(const std::string& dir) {
  std::vector<absl::Status> results;
  results.push_back(WriteSeed(dir + "/minimal_v3.gguf", 3, 32,
                              {{"general.architecture", Str("deepseek2")}},
                              {{"w", GgmlType::kF32, {4}}}));
  results.push_back(WriteSeed(
      dir + "/every_value_type_v3.gguf", 3, 32,
      {{"u8", GgufValue::Uint(GgufType::kUint8, 7)},
       {"i8", GgufValue::Int(GgufType::kInt8, -7)},
       {"u16", GgufValue::Uint(GgufType::kUint16, 700)},
       {"i16", GgufValue::Int(GgufType::kInt16, -700)},
       {"u32", U32(70000)},
       {"i32", GgufValue::Int(GgufType::kInt32, -70000)},
       {"f32", GgufValue::Float(GgufType::kFloat32, 1.5)},
       {"bool", GgufValue::Uint(GgufType::kBool, 1)},
       {"str", Str("hello")},
       {"u64", GgufValue::Uint(GgufType::kUint64, 1ull << 40)},
       {"i64", GgufValue::Int(GgufType::kInt64, -(1ll << 40))},
       {"f64", GgufValue::Float(GgufType::kFloat64, 0.25)},
       {"arr.str", GgufValue::Array(GgufType::kString, {Str("a"), Str("bc")})},
       {"arr.i32", GgufValue::Array(GgufType::kInt32, {GgufValue::Int(GgufType::kInt32, 1),
                                                       GgufValue::Int(GgufType::kInt32, -2)})},
       {"arr.nested",
        GgufValue::Array(
            GgufType::kArray,
            {GgufValue::Array(GgufType::kFloat32, {GgufValue::Float(GgufType::kFloat32, 3)})})}},
      {{"a.f16", GgmlType::kF16, {8}},
       {"b.q8_0", GgmlType::kQ8_0, {32, 2}},
       {"c.q4_k", GgmlType::kQ4_K, {256}},
       {"d.q5_0", GgmlType::kQ5_0, {32, 1, 2}},
       {"e.f32", GgmlType::kF32, {2, 1, 1, 2}}}));
  results.push_back(WriteSeed(
      dir + "/aligned64_v2.gguf", 2, 64,
      {{"general.name", Str("v2")},
       {"deep",
        GgufValue::Array(
            GgufType::kArray,
            {GgufValue::Array(
                GgufType::kArray,
                {GgufValue::Array(GgufType::kUint8, {GgufValue::Uint(GgufType::kUint8, 1)})})})}},
      {{"x", GgmlType::kF32, {3}}, {"y", GgmlType::kQ6_K, {256}}}));
  results.push_back(WriteSeed(
      dir + "/tokenizer_v3.gguf", 3, 32,
      {{"tokenizer.ggml.model", Str("gpt2")},
       {"tokenizer.ggml.tokens",
        GgufValue::Array(GgufType::kString, {Str("<s>"), Str("</s>"), Str("a"), Str("b")})},
       {"tokenizer.ggml.token_type",
        GgufValue::Array(
            GgufType::kInt32,
            {GgufValue::Int(GgufType::kInt32, 3), GgufValue::Int(GgufType::kInt32, 3),
             GgufValue::Int(GgufType::kInt32, 1), GgufValue::Int(GgufType::kInt32, 1)})},
       {"tokenizer.ggml.merges", GgufValue::Array(GgufType::kString, {Str("a b")})},
       {"tokenizer.ggml.bos_token_id", U32(0)}},
      {{"blk.0.ffn_gate_exps.weight", GgmlType::kQ8_0, {32, 2, 2}},
       {"token_embd.weight", GgmlType::kF32, {4, 4}}}));
  results.push_back(WriteSeed(dir + "/metadata_only_v3.gguf", 3, 32,
                              {{"general.alignment", U32(32)}, {"k", Str("")}}, {}));
  int failures = 0;
  for (const absl::Status& s : results) {
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  return moeflow::Main(argv[1]);
}
