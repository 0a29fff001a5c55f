#include "model/model_generator.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "chat/chat_template_text.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "nlohmann/json.hpp"

namespace moeflow {
namespace {

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::ordered_json Manifest(const std::string& fixture) {
  // Ordered: the tensors are listed in file order.
  return nlohmann::ordered_json::parse(
      ReadAll("tests/data/llamacpp/" + fixture + "/manifest.json"));
}

// Writes preset/type with `seed` (cached per name within the test binary).
std::string Generate(const std::string& preset, const std::string& type, uint64_t seed = 1) {
  const std::string path = TmpPath(preset + "." + type + ".s" + std::to_string(seed) + ".gguf");
  ModelGeneratorOptions options;
  options.preset = preset;
  options.type = type;
  options.seed = seed;
  options.out_path = path;
  options.force = true;
  auto model = GenerateModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return path;
}

std::unique_ptr<GgufFile> Open(const std::string& path) {
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

void ExpectSameConfig(const Deepseek2Config& a, const Deepseek2Config& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.context_length, b.context_length);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.dense_ff, b.dense_ff);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_heads_kv, b.n_heads_kv);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.kv_lora_rank, b.kv_lora_rank);
  EXPECT_EQ(a.qk_nope_dim, b.qk_nope_dim);
  EXPECT_EQ(a.qk_rope_dim, b.qk_rope_dim);
  EXPECT_EQ(a.v_head_dim, b.v_head_dim);
  EXPECT_FLOAT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_FLOAT_EQ(a.rope_freq_base, b.rope_freq_base);
  EXPECT_EQ(a.rope_scaling_type, b.rope_scaling_type);
  EXPECT_FLOAT_EQ(a.rope_scaling_factor, b.rope_scaling_factor);
  EXPECT_EQ(a.rope_orig_context, b.rope_orig_context);
  EXPECT_FLOAT_EQ(a.yarn_beta_fast, b.yarn_beta_fast);
  EXPECT_FLOAT_EQ(a.yarn_beta_slow, b.yarn_beta_slow);
  EXPECT_FLOAT_EQ(a.yarn_log_multiplier, b.yarn_log_multiplier);
  EXPECT_EQ(a.n_dense_layers, b.n_dense_layers);
  EXPECT_EQ(a.n_experts, b.n_experts);
  EXPECT_EQ(a.n_experts_used, b.n_experts_used);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.expert_ff, b.expert_ff);
  EXPECT_EQ(a.gating, b.gating);
  EXPECT_EQ(a.expert_weights_norm, b.expert_weights_norm);
  EXPECT_FLOAT_EQ(a.expert_weights_scale, b.expert_weights_scale);
  EXPECT_EQ(a.n_expert_groups, b.n_expert_groups);
  EXPECT_EQ(a.n_expert_groups_used, b.n_expert_groups_used);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
}

TEST(ModelGeneratorTest, ConfigRoundTripsForEveryTinyPreset) {
  for (const std::string preset : {"tiny", "tiny-v3"}) {
    SCOPED_TRACE(preset);
    auto file = Open(Generate(preset, "f32"));
    ASSERT_NE(file, nullptr);
    auto config = Deepseek2Config::FromGguf(*file);
    ASSERT_TRUE(config.ok()) << config.status();
    auto preset_config = PresetConfig(preset);
    ASSERT_TRUE(preset_config.ok());
    ExpectSameConfig(*config, *preset_config);
  }
}

// Tensor names (in order), shapes and per-type choices equal what
// llama.cpp's converter and llama-quantize wrote for the same shapes.
TEST(ModelGeneratorTest, TensorsMatchLlamaCppFixturesForTinyShapes) {
  for (const auto& [preset, fixture] : std::vector<std::pair<std::string, std::string>>{
           {"tiny", "tiny-v2"}, {"tiny-v3", "tiny-v3"}}) {
    const nlohmann::ordered_json manifest = Manifest(fixture);
    for (const std::string type : {"f32", "q8_0", "q4_k_m"}) {
      SCOPED_TRACE(preset + " " + type);
      auto file = Open(Generate(preset, type));
      ASSERT_NE(file, nullptr);
      const nlohmann::ordered_json& expected = manifest["tensors"];
      ASSERT_EQ(file->tensors().size(), expected.size());
      size_t i = 0;
      for (auto it = expected.begin(); it != expected.end(); ++it, ++i) {
        const GgufTensorInfo& t = file->tensors()[i];
        EXPECT_EQ(t.name, it.key());
        EXPECT_EQ(t.ne, it.value()["ne"].get<std::vector<int64_t>>()) << t.name;
        EXPECT_EQ(absl::AsciiStrToUpper(Traits(t.type).name), it.value()[type].get<std::string>())
            << t.name;
      }
      auto file_type = file->GetInt("general.file_type");
      ASSERT_TRUE(file_type.ok());
      EXPECT_EQ(*file_type, type == "f32" ? 0 : type == "q8_0" ? 7 : 15);
    }
  }
}

TEST(ModelGeneratorTest, MetadataKeysAndValuesMatchLlamaCppFixtures) {
  for (const auto& [preset, fixture] : std::vector<std::pair<std::string, std::string>>{
           {"tiny", "tiny-v2"}, {"tiny-v3", "tiny-v3"}}) {
    SCOPED_TRACE(preset);
    const nlohmann::ordered_json expected = Manifest(fixture)["metadata"];
    auto file = Open(Generate(preset, "f32"));
    ASSERT_NE(file, nullptr);
    for (auto it = expected.begin(); it != expected.end(); ++it) {
      const std::string& key = it.key();
      const GgufValue* value = file->Find(key);
      // The fixture's V2 style leaves expert_weights_norm out (= false).
      ASSERT_NE(value, nullptr) << key;
      if (key == "general.name") continue;
      const nlohmann::ordered_json& want = it.value();
      if (value->type() == GgufType::kArray) {
        // The manifest writes arrays as "[N entries]".
        EXPECT_EQ(want.get<std::string>(),
                  "[" + std::to_string(value->as_array().size()) + " entries]")
            << key;
      } else if (want.is_boolean()) {
        EXPECT_EQ(value->as_bool(), want.get<bool>()) << key;
      } else if (want.is_number_float()) {
        EXPECT_NEAR(value->as_float(), want.get<double>(), 1e-6) << key;
      } else if (want.is_number()) {
        auto got = file->GetInt(key);
        ASSERT_TRUE(got.ok()) << key;
        EXPECT_EQ(*got, want.get<int64_t>()) << key;
      } else {
        EXPECT_EQ(value->as_string(), want.get<std::string>()) << key;
      }
    }
    // moeflow adds DeepSeek-V3's chat template (the fixtures have none).
    const GgufValue* chat_template = file->Find("tokenizer.chat_template");
    ASSERT_NE(chat_template, nullptr);
    EXPECT_EQ(chat_template->as_string(), chat::DeepseekV3ChatTemplateText());
    for (const GgufKeyValue& kv : file->metadata()) {
      if (kv.key == "deepseek2.expert_weights_norm" || kv.key == "tokenizer.chat_template") {
        continue;
      }
      EXPECT_TRUE(expected.contains(kv.key)) << "extra key " << kv.key;
    }
  }
}

TEST(ModelGeneratorTest, SameSeedGivesIdenticalFileAndOtherSeedDiffers) {
  const std::string a = Generate("tiny-v3", "q4_k_m", 7);
  const std::string a_bytes = ReadAll(a);
  ModelGeneratorOptions options;
  options.preset = "tiny-v3";
  options.type = "q4_k_m";
  options.seed = 7;
  options.out_path = TmpPath("again.gguf");
  options.force = true;
  options.threads = 1;  // a different thread count must not matter
  ASSERT_TRUE(GenerateModel(options).ok());
  EXPECT_TRUE(ReadAll(options.out_path) == a_bytes);
  const std::string b = Generate("tiny-v3", "q4_k_m", 8);
  const std::string b_bytes = ReadAll(b);
  ASSERT_EQ(a_bytes.size(), b_bytes.size());
  EXPECT_FALSE(a_bytes == b_bytes);
}

struct Moments {
  double mean = 0, std = 0;
  bool finite = true;
};
Moments MomentsOf(const GgufFile& file, const GgufTensorInfo& t) {
  std::vector<float> values(t.n_elements);
  const absl::Status s = Dequantize(t.type, file.TensorData(t), values.data(), t.n_elements);
  EXPECT_TRUE(s.ok()) << s;
  Moments m;
  double sum = 0, sum2 = 0;
  for (float v : values) {
    m.finite &= std::isfinite(v);
    sum += v;
    sum2 += double(v) * v;
  }
  m.mean = sum / values.size();
  m.std = std::sqrt(std::max(0.0, sum2 / values.size() - m.mean * m.mean));
  return m;
}

TEST(ModelGeneratorTest, WeightsAreFiniteWithTheIntendedStd) {
  for (const std::string type : {"f32", "q8_0", "q4_k_m"}) {
    SCOPED_TRACE(type);
    auto file = Open(Generate("tiny-v3", type));
    ASSERT_NE(file, nullptr);
    // The fixtures' scale at hidden 256 (model_generator.h).
    const std::vector<std::tuple<std::string, double, double>> expected = {
        {"token_embd.weight", 0.0, 0.04},
        {"output.weight", 0.0, 0.2},
        {"blk.1.ffn_gate_exps.weight", 0.0, 0.03},
        {"blk.1.attn_kv_a_mqa.weight", 0.0, 0.04},
        {"blk.2.ffn_gate_inp.weight", 0.0, 0.1},
        {"blk.2.exp_probs_b.bias", 0.0, 0.1},
        {"blk.0.attn_norm.weight", 1.0, 0.1},
        {"blk.3.attn_k_b.weight", 0.0, 0.64 / std::sqrt(32.0)},
    };
    for (const auto& [name, mean, std] : expected) {
      const GgufTensorInfo* t = file->FindTensor(name);
      ASSERT_NE(t, nullptr) << name;
      const Moments m = MomentsOf(*file, *t);
      EXPECT_TRUE(m.finite) << name;
      // 4-bit quantization noise adds ~10 % to the spread.
      const double tolerance = type == "q4_k_m" ? 0.15 : 0.06;
      EXPECT_NEAR(m.std, std, tolerance * std) << name;
      EXPECT_NEAR(m.mean, mean, 0.15 * std + (t->n_elements < 1000 ? 0.02 : 0.0)) << name;
    }
    for (const GgufTensorInfo& t : file->tensors()) {
      EXPECT_TRUE(MomentsOf(*file, t).finite) << t.name;
    }
  }
}

TEST(ModelGeneratorTest, RandomNormalHasUnitVariance) {
  const uint64_t key = TensorKey(3, "x");
  double sum = 0, sum2 = 0;
  constexpr int kN = 1 << 20;
  for (int i = 0; i < kN; ++i) {
    const double v = RandomNormal(key, i);
    sum += v;
    sum2 += v * v;
  }
  EXPECT_NEAR(sum / kN, 0.0, 0.005);
  EXPECT_NEAR(sum2 / kN, 1.0, 0.01);
  EXPECT_NE(TensorKey(3, "x"), TensorKey(3, "y"));
  EXPECT_NE(TensorKey(3, "x"), TensorKey(4, "x"));
}

TEST(ModelGeneratorTest, RefusesToOverwriteWithoutForce) {
  ModelGeneratorOptions options;
  options.preset = "tiny";
  options.out_path = TmpPath("exists.gguf");
  options.force = true;
  ASSERT_TRUE(GenerateModel(options).ok());
  options.force = false;
  auto again = GenerateModel(options);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("--force"), absl::string_view::npos);
  options.force = true;
  EXPECT_TRUE(GenerateModel(options).ok());
}

TEST(ModelGeneratorTest, BadPresetOrTypeIsInvalidArgumentNamingIt) {
  ModelGeneratorOptions options;
  options.out_path = TmpPath("never.gguf");
  options.preset = "v4-huge";
  auto model = GenerateModel(options);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("v4-huge"), absl::string_view::npos);
  options.preset = "tiny";
  options.type = "q4_k_xl";
  model = GenerateModel(options);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("q4_k_xl"), absl::string_view::npos);
  EXPECT_FALSE(std::ifstream(options.out_path).good());
}

TEST(ModelGeneratorTest, LayersOverrideCapsDenseLayers) {
  ModelGeneratorOptions options;
  options.preset = "tiny-v3";
  options.layers = 1;
  options.out_path = TmpPath("one_layer.gguf");
  options.force = true;
  auto model = GenerateModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->config.n_layers, 1);
  EXPECT_EQ(model->config.n_dense_layers, 1);
  auto file = Open(options.out_path);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->FindTensor("blk.1.attn_norm.weight"), nullptr);
  EXPECT_NE(file->FindTensor("blk.0.ffn_down.weight"), nullptr);
}

TEST(ModelGeneratorTest, FileTypeNamesFollowLlamaQuantize) {
  EXPECT_EQ(*ParseLlamaFileType("Q4_K_M"), LlamaFileType::kQ4_K_M);
  EXPECT_EQ(*ParseLlamaFileType("q4_k"), LlamaFileType::kQ4_K_M);
  EXPECT_EQ(*ParseLlamaFileType("q5_k"), LlamaFileType::kQ5_K_M);
  EXPECT_EQ(*ParseLlamaFileType("bf16"), LlamaFileType::kBF16);
  EXPECT_EQ(LlamaFileTypeName(LlamaFileType::kQ4_K_M), "Q4_K_M");
  EXPECT_EQ(static_cast<int>(LlamaFileType::kQ8_0), 7);
  EXPECT_EQ(static_cast<int>(LlamaFileType::kQ4_K_M), 15);
  EXPECT_FALSE(ParseLlamaFileType("q4_k_xl").ok());
}

// The llama-quantize rules on DeepSeek-V2-Lite's real shapes (27 layers,
// expert ff 1408, which is not a multiple of 256).
TEST(ModelGeneratorTest, ChoosesLlamaQuantizeTypesForV2LiteShapes) {
  auto c = PresetConfig("v2-lite");
  ASSERT_TRUE(c.ok());
  const auto q4km = LlamaFileType::kQ4_K_M;
  auto type_of = [&](const std::vector<PlannedTensor>& plan, const std::string& name) {
    for (const PlannedTensor& t : plan) {
      if (t.name == name) return t.type;
    }
    ADD_FAILURE() << name;
    return GgmlType::kF32;
  };
  const std::vector<PlannedTensor> plan = PlanTensors(*c, q4km);
  EXPECT_EQ(type_of(plan, "token_embd.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(plan, "output.weight"), GgmlType::kQ6_K);
  // i < n/8: Q6_K, but 10944 columns are not a multiple of 256.
  EXPECT_EQ(type_of(plan, "blk.0.ffn_down.weight"), GgmlType::kQ8_0);
  EXPECT_EQ(type_of(plan, "blk.4.ffn_down_exps.weight"), GgmlType::kQ5_0);    // Q4_K, 1408 cols
  EXPECT_EQ(type_of(plan, "blk.5.ffn_down_exps.weight"), GgmlType::kQ8_0);    // (5-3)%3==2: Q6_K
  EXPECT_EQ(type_of(plan, "blk.26.ffn_down_shexp.weight"), GgmlType::kQ6_K);  // 2816 cols
  EXPECT_EQ(type_of(plan, "blk.3.ffn_gate_exps.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(plan, "blk.3.attn_output.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(plan, "blk.3.attn_k_b.weight"), GgmlType::kQ5_0);  // 128 cols
  EXPECT_EQ(type_of(plan, "blk.3.ffn_gate_inp.weight"), GgmlType::kF32);
  EXPECT_EQ(type_of(plan, "blk.3.attn_kv_a_norm.weight"), GgmlType::kF32);
  // --pure: no mix, only the shape fallback.
  const std::vector<PlannedTensor> pure = PlanTensors(*c, q4km, /*pure=*/true);
  EXPECT_EQ(type_of(pure, "output.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(pure, "blk.0.ffn_down.weight"), GgmlType::kQ5_0);
  EXPECT_EQ(type_of(pure, "blk.26.ffn_down_shexp.weight"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(pure, "blk.5.ffn_down_exps.weight"), GgmlType::kQ5_0);
  // Q8_0 keeps output at Q8_0; F16 leaves 1-D tensors F32.
  const std::vector<PlannedTensor> q8 = PlanTensors(*c, LlamaFileType::kQ8_0);
  EXPECT_EQ(type_of(q8, "output.weight"), GgmlType::kQ8_0);
  const std::vector<PlannedTensor> f16 = PlanTensors(*c, LlamaFileType::kF16);
  EXPECT_EQ(type_of(f16, "blk.5.ffn_down_exps.weight"), GgmlType::kF16);
  EXPECT_EQ(type_of(f16, "output_norm.weight"), GgmlType::kF32);
}

TEST(ModelGeneratorTest, V2LitePresetHasTheRealParameterCount) {
  auto c = PresetConfig("v2-lite");
  ASSERT_TRUE(c.ok());
  int64_t params = 0;
  for (const PlannedTensor& t : PlanTensors(*c, LlamaFileType::kAllF32)) {
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    params += n;
  }
  // DeepSeek-V2-Lite: 15.7 B parameters.
  EXPECT_NEAR(params / 1e9, 15.7, 0.1);
}

}  // namespace
}  // namespace moeflow
