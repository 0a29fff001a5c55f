// GGUF reader and writer on the llama.cpp fixtures (tests/data/llamacpp): every
// fixture opens, the tiny-v2 / tiny-v3 metadata and tensors read as llama.cpp
// wrote them, re-writing them with GgufWriter reproduces them byte for byte,
// and released pages stay readable.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/test_files.h"

namespace moeflow {
namespace {

using model_testing::ReadAll;
using model_testing::TempPath;

// ---------------------------------------------------------------------------
// llama.cpp fixtures. Facts from tests/data/llamacpp/*/manifest.json.

constexpr char kV2Q4[] = "tests/data/llamacpp/tiny-v2/tiny-v2.q4_k_m.gguf";
constexpr char kV3Q8[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";
constexpr char kV3Q4[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q4_k_m.gguf";

TEST(GgufFixtureTest, OpensEveryLlamaCppFixture) {
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

TEST(GgufFixtureTest, ReadsTinyV3Q4KMFixture) {
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

TEST(GgufFixtureTest, ReadsTinyV2Q4KMFixture) {
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

TEST(GgufFixtureTest, RewritesTinyV2Q4KMByteIdentically) {
  ExpectRewriteIsByteIdentical(kV2Q4, "rewrite_v2_q4.gguf");
}

TEST(GgufFixtureTest, RewritesTinyV3Q8ByteIdentically) {
  ExpectRewriteIsByteIdentical(kV3Q8, "rewrite_v3_q8.gguf");
}

TEST(GgufFixtureTest, ReleasePagesKeepsDataReadable) {
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

}  // namespace
}  // namespace moeflow
