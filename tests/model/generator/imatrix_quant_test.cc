// mkmodel's quantization as llama-quantize does it: the importance matrices
// llama-imatrix writes (model/imatrix.h), the per-tensor quant mixes
// (model/quant_mix.h) and the importance-weighted quantization of each
// tensor (QuantizeTensorRows), checked against llama.cpp's own files in
// tests/data/llamacpp (tiny-v3-imatrix, tiny-v2-imatrix: llama-quantize
// --imatrix on tiny-v*.f32.gguf; tiny-v*: llama-quantize without one).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "model/gguf.h"
#include "model/imatrix.h"
#include "model/model_generator.h"
#include "model/quant_mix.h"

namespace moeflow {
namespace {

const std::string kData = "tests/data/llamacpp/";

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

std::unique_ptr<GgufFile> Open(const std::string& path) {
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

ImportanceMatrix LoadOrDie(const std::string& path) {
  auto m = ImportanceMatrix::Load(path);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : ImportanceMatrix();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct QuantizedFile {
  std::string path;     // llama-quantize's output
  std::string source;   // the F32 file it was made from
  std::string imatrix;  // empty: made without one
};

std::vector<QuantizedFile> ImatrixFiles() {
  std::vector<QuantizedFile> out;
  for (const char* t :
       {"iq2_xxs", "iq1_s", "iq1_m", "iq2_m", "iq3_xxs", "iq4_xs", "q2_k", "q3_k_m"}) {
    out.push_back({kData + "tiny-v3-imatrix/tiny-v3-imatrix." + t + ".gguf",
                   kData + "tiny-v3/tiny-v3.f32.gguf", kData + "tiny-v3-imatrix/imatrix.gguf"});
  }
  for (const char* t : {"iq2_s", "iq3_xxs", "iq3_s"}) {
    out.push_back({kData + "tiny-v2-imatrix/tiny-v2-imatrix." + t + ".gguf",
                   kData + "tiny-v2/tiny-v2.f32.gguf", kData + "tiny-v2-imatrix/imatrix.gguf"});
  }
  return out;
}

TEST(ImportanceMatrixTest, GgufAndLegacyFilesOfOneRunGiveTheSameImportance) {
  const ImportanceMatrix gguf = LoadOrDie(kData + "tiny-v3-imatrix/imatrix.gguf");
  const ImportanceMatrix dat = LoadOrDie(kData + "tiny-v3-imatrix/imatrix.dat");
  EXPECT_FALSE(gguf.legacy());
  EXPECT_TRUE(dat.legacy());
  ASSERT_GT(gguf.size(), 0);
  EXPECT_EQ(gguf.names(), dat.names());
  // llama-imatrix -c 128 on 132 chunks of calibration.txt.
  EXPECT_EQ(gguf.chunk_size(), 128);
  EXPECT_EQ(gguf.chunk_count(), 132);
  EXPECT_EQ(dat.chunk_count(), 132);
  ASSERT_EQ(gguf.datasets().size(), 1u);
  ASSERT_EQ(dat.datasets().size(), 1u);
  EXPECT_EQ(gguf.datasets()[0], dat.datasets()[0]);
  // A routed-expert entry holds one slice per expert (16 x ne0 64 for
  // ffn_down_exps), attention ones one.
  const std::vector<float>* down = gguf.Find("blk.1.ffn_down_exps.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->size(), 16u * 64u);
  ASSERT_NE(gguf.Find("blk.0.attn_kv_a_mqa.weight"), nullptr);
  EXPECT_EQ(gguf.Find("blk.0.attn_kv_a_mqa.weight")->size(), 256u);
  EXPECT_EQ(gguf.Find("token_embd.weight"), nullptr);
  for (const std::string& name : gguf.names()) {
    const std::vector<float>& a = *gguf.Find(name);
    const std::vector<float>& b = *dat.Find(name);
    ASSERT_EQ(a.size(), b.size()) << name;
    bool nonconstant = false;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_GE(a[i], 0.f) << name << " " << i;
      // The legacy file stores mean * ncall in float: a rounding apart.
      ASSERT_NEAR(a[i], b[i], 1e-5f * std::max(1.f, std::fabs(a[i]))) << name << " " << i;
      nonconstant |= a[i] != a[0];
    }
    EXPECT_TRUE(nonconstant) << name;
  }
}

TEST(ImportanceMatrixTest, ForTensorChecksTheSizeAsLlamaQuantize) {
  const ImportanceMatrix m = LoadOrDie(kData + "tiny-v3-imatrix/imatrix.gguf");
  auto down = m.ForTensor("blk.1.ffn_down_exps.weight", {64, 256, 16});
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, m.Find("blk.1.ffn_down_exps.weight")->data());
  auto missing = m.ForTensor("blk.9.ffn_down_exps.weight", {64, 256, 16});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(*missing, nullptr);
  auto wrong = m.ForTensor("blk.1.ffn_down_exps.weight", {64, 256, 8});
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "blk.1.ffn_down_exps.weight"))
      << wrong.status();
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "1024 values, the tensor needs 512"))
      << wrong.status();
}

TEST(ImportanceMatrixTest, BadFilesArePreciseErrors) {
  auto none = ImportanceMatrix::Load(TmpPath("no-such.imatrix"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(none.status().message(), "no-such.imatrix"));

  // A legacy file cut in its first entry's values.
  const std::string dat = ReadAll(kData + "tiny-v3-imatrix/imatrix.dat");
  const std::string cut = TmpPath("cut.dat");
  WriteBytes(cut, dat.substr(0, 200));
  auto truncated = ImportanceMatrix::Load(cut);
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(truncated.status().message(), "cut.dat")) << truncated.status();
  EXPECT_TRUE(absl::StrContains(truncated.status().message(), "cut off")) << truncated.status();
  const std::string empty = TmpPath("empty.dat");
  WriteBytes(empty, "");
  EXPECT_EQ(ImportanceMatrix::Load(empty).status().code(), absl::StatusCode::kInvalidArgument);

  // GGUF: sums without counts, a non-F32 entry, missing metadata.
  auto write_gguf = [](const std::string& path, bool metadata, bool counts, GgmlType type) {
    GgufWriter w;
    w.AddMetadata("general.type", GgufValue::String("imatrix"));
    if (metadata) {
      w.AddMetadata("imatrix.datasets",
                    GgufValue::Array(GgufType::kString, {GgufValue::String("x.txt")}));
      w.AddMetadata("imatrix.chunk_count", GgufValue::Uint(GgufType::kUint32, 1));
      w.AddMetadata("imatrix.chunk_size", GgufValue::Uint(GgufType::kUint32, 512));
    }
    w.AddTensor("blk.0.attn_q.weight.in_sum2", type, {32, 1});
    if (counts) w.AddTensor("blk.0.attn_q.weight.counts", GgmlType::kF32, {1, 1});
    ASSERT_TRUE(w.Begin(path).ok());
    std::vector<uint8_t> sums(type == GgmlType::kF32 ? 128 : 64, 0x3c);
    ASSERT_TRUE(w.WriteTensor("blk.0.attn_q.weight.in_sum2", sums).ok());
    const float one = 1.f;
    std::vector<uint8_t> c(4);
    std::memcpy(c.data(), &one, 4);
    if (counts) ASSERT_TRUE(w.WriteTensor("blk.0.attn_q.weight.counts", c).ok());
    ASSERT_TRUE(w.Finish().ok());
  };
  const std::string ok_path = TmpPath("ok.imatrix.gguf");
  write_gguf(ok_path, true, true, GgmlType::kF32);
  auto ok = ImportanceMatrix::Load(ok_path);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 1);
  const std::string no_counts = TmpPath("no_counts.imatrix.gguf");
  write_gguf(no_counts, true, false, GgmlType::kF32);
  auto s = ImportanceMatrix::Load(no_counts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "blk.0.attn_q.weight has .in_sum2 but no .counts"))
      << s;
  const std::string f16 = TmpPath("f16.imatrix.gguf");
  write_gguf(f16, true, true, GgmlType::kF16);
  s = ImportanceMatrix::Load(f16).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "blk.0.attn_q.weight.in_sum2 is f16, not f32")) << s;
  const std::string no_meta = TmpPath("no_meta.imatrix.gguf");
  write_gguf(no_meta, false, true, GgmlType::kF32);
  s = ImportanceMatrix::Load(no_meta).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "missing imatrix metadata")) << s;
}

QuantMixOptions MixOf(const GgufFile& file, bool has_imatrix) {
  QuantMixOptions o;
  o.file_type = static_cast<LlamaFileType>(*file.GetInt("general.file_type"));
  o.n_layers = *file.GetInt("deepseek2.block_count");
  o.n_experts = *file.GetInt("deepseek2.expert_count");
  o.n_gqa = *file.GetInt("deepseek2.attention.head_count") /
            *file.GetInt("deepseek2.attention.head_count_kv");
  o.has_imatrix = has_imatrix;
  return o;
}

// Every tensor's type is the one llama-quantize chose, in every quantized
// fixture llama.cpp wrote (with and without an imatrix).
TEST(QuantMixTest, ChoosesLlamaQuantizeTypesForEveryFixture) {
  std::vector<QuantizedFile> files = ImatrixFiles();
  for (const char* m : {"tiny-v2", "tiny-v3"}) {
    for (const char* t : {"q8_0", "q4_k_m"}) {
      files.push_back({kData + m + "/" + m + "." + t + ".gguf", "", ""});
    }
  }
  for (const QuantizedFile& f : files) {
    SCOPED_TRACE(f.path);
    std::unique_ptr<GgufFile> file = Open(f.path);
    ASSERT_NE(file, nullptr);
    std::vector<TensorShape> shapes;
    for (const GgufTensorInfo& t : file->tensors()) shapes.push_back({t.name, t.ne});
    const std::vector<GgmlType> types = ChooseTensorTypes(shapes, MixOf(*file, !f.imatrix.empty()));
    ASSERT_EQ(types.size(), file->tensors().size());
    for (size_t i = 0; i < types.size(); ++i) {
      EXPECT_EQ(Traits(types[i]).name, Traits(file->tensors()[i].type).name)
          << file->tensors()[i].name;
    }
  }
}

TEST(QuantMixTest, FileTypeNamesAndImatrixRule) {
  EXPECT_EQ(*ParseLlamaFileType("IQ2_XXS"), LlamaFileType::kIQ2_XXS);
  EXPECT_EQ(static_cast<int>(*ParseLlamaFileType("iq1_m")), 31);
  EXPECT_EQ(DefaultTensorType(LlamaFileType::kIQ2_M), GgmlType::kIQ2_S);
  EXPECT_EQ(DefaultTensorType(LlamaFileType::kIQ3_XS), GgmlType::kIQ3_S);
  EXPECT_EQ(LlamaFileTypeName(LlamaFileType::kIQ4_XS), "IQ4_XS");
  EXPECT_TRUE(TensorRequiresImatrix("blk.1.ffn_up_exps.weight", GgmlType::kIQ2_XXS,
                                    LlamaFileType::kIQ2_XXS));
  EXPECT_FALSE(
      TensorRequiresImatrix("token_embd.weight", GgmlType::kIQ2_XXS, LlamaFileType::kIQ2_XXS));
  EXPECT_FALSE(
      TensorRequiresImatrix("blk.1.ffn_up_exps.weight", GgmlType::kQ2_K, LlamaFileType::kQ2_K));
  EXPECT_TRUE(
      TensorRequiresImatrix("blk.1.ffn_up_exps.weight", GgmlType::kQ2_K, LlamaFileType::kQ2_K_S));
  auto bad = ParseLlamaFileType("iq2_xxxs");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "iq2_xxxs"));
}

// What mkmodel writes for a tensor (QuantizeTensorRows with the imatrix
// entry ForTensor gives) is byte for byte what llama-quantize --imatrix wrote
// from the same F32 values: every tensor of every imatrix fixture.
TEST(QuantizeTensorRowsTest, ReproducesLlamaQuantizeImatrixFilesByteForByte) {
  for (const QuantizedFile& f : ImatrixFiles()) {
    SCOPED_TRACE(f.path);
    std::unique_ptr<GgufFile> quant = Open(f.path);
    std::unique_ptr<GgufFile> source = Open(f.source);
    ASSERT_NE(quant, nullptr);
    ASSERT_NE(source, nullptr);
    const ImportanceMatrix imatrix = LoadOrDie(f.imatrix);
    int weighted = 0;
    for (const GgufTensorInfo& q : quant->tensors()) {
      const GgufTensorInfo* s = source->FindTensor(q.name);
      ASSERT_NE(s, nullptr) << q.name;
      ASSERT_EQ(s->type, GgmlType::kF32);
      PlannedTensor t;
      t.name = q.name;
      t.ne = q.ne;
      t.type = q.type;
      auto importance = imatrix.ForTensor(t.name, t.ne);
      ASSERT_TRUE(importance.ok()) << importance.status();
      if (*importance != nullptr && QuantizeUsesImportance(t.type)) ++weighted;
      std::vector<uint8_t> out(q.n_bytes);
      const float* values = reinterpret_cast<const float*>(source->TensorData(*s));
      ASSERT_TRUE(QuantizeTensorRows(t, values, 0, q.rows(), *importance, out.data()).ok());
      const uint8_t* want = quant->TensorData(q);
      EXPECT_EQ(std::memcmp(out.data(), want, out.size()), 0)
          << q.name << " " << Traits(q.type).name << (*importance ? " (imatrix)" : "");
    }
    EXPECT_GT(weighted, 10);
  }
}

// mkmodel --imatrix: the mix llama-quantize picks with an imatrix, each
// tensor quantized with its entry (so not as with uniform importance); a
// matrix without an entry for a very low-bit tensor, or one that does not
// fit, fails before anything is written, naming the tensor.
TEST(ModelGeneratorImatrixTest, GeneratesWithAnImatrixAndRefusesOneThatDoesNotFit) {
  ModelGeneratorOptions options;
  options.preset = "tiny-v3";
  options.type = "iq2_xxs";
  options.force = true;
  options.out_path = TmpPath("uniform.iq2_xxs.gguf");
  auto uniform = GenerateModel(options);
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  options.imatrix_path = kData + "tiny-v3-imatrix/imatrix.gguf";
  options.out_path = TmpPath("imatrix.iq2_xxs.gguf");
  auto weighted = GenerateModel(options);
  ASSERT_TRUE(weighted.ok()) << weighted.status();
  options.imatrix_path = kData + "tiny-v3-imatrix/imatrix.dat";
  options.out_path = TmpPath("imatrix-dat.iq2_xxs.gguf");
  ASSERT_TRUE(GenerateModel(options).ok());

  std::unique_ptr<GgufFile> u = Open(TmpPath("uniform.iq2_xxs.gguf"));
  std::unique_ptr<GgufFile> w = Open(TmpPath("imatrix.iq2_xxs.gguf"));
  std::unique_ptr<GgufFile> d = Open(TmpPath("imatrix-dat.iq2_xxs.gguf"));
  ASSERT_TRUE(u && w && d);
  EXPECT_EQ(*w->GetInt("general.file_type"), 19);
  const GgufTensorInfo* up = w->FindTensor("blk.1.ffn_up_exps.weight");
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->type, GgmlType::kIQ2_XXS);
  EXPECT_NE(std::memcmp(w->TensorData(*up), u->TensorData(*u->FindTensor(up->name)), up->n_bytes),
            0);
  // The legacy file of the same run gives (nearly always) the same blocks.
  int same = 0, total = 0;
  for (const GgufTensorInfo& t : w->tensors()) {
    ++total;
    same += std::memcmp(w->TensorData(t), d->TensorData(*d->FindTensor(t.name)), t.n_bytes) == 0;
  }
  EXPECT_GE(same, total - 2);
  // The file dequantizes to the generated weights' scale.
  std::vector<float> row(up->ne[0]);
  ASSERT_TRUE(Dequantize(up->type, w->TensorData(*up), row.data(), up->ne[0]).ok());
  double sq = 0;
  for (float v : row) sq += double(v) * v;
  EXPECT_GT(sq, 0);

  // tiny-v2's matrix has no attn_q_a (tiny-v2 has a plain attn_q).
  options.imatrix_path = kData + "tiny-v2-imatrix/imatrix.gguf";
  options.out_path = TmpPath("wrong.iq2_xxs.gguf");
  auto wrong = GenerateModel(options);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(wrong.status().message(),
                                "no imatrix entry for tensor blk.0.attn_q_a.weight"))
      << wrong.status();
  EXPECT_FALSE(std::ifstream(options.out_path).good());
}

}  // namespace
}  // namespace moeflow
