// The model presets (model/model_presets.h) and sharded output of the
// generator (ModelGeneratorOptions::split): the real shapes' numbers, and
// shards that hold exactly the tensors of the same model in one file.
#include "model/model_presets.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/gguf_split.h"
#include "model/model_generator.h"

namespace moeflow {
namespace {

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

TEST(ModelPresetsTest, EveryPresetIsValid) {
  for (const std::string& name : ModelPresetNames()) {
    absl::StatusOr<Deepseek2Config> c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_TRUE(c->Validate().ok()) << name << ": " << c->Validate();
  }
  EXPECT_EQ(PresetConfig("kimi").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelPresetsTest, KimiK2HasItsConfigJsonShape) {
  const Deepseek2Config c = *PresetConfig("kimi-k2");
  EXPECT_EQ(c.n_layers, 61);
  EXPECT_EQ(c.hidden, 7168);
  EXPECT_EQ(c.dense_ff, 18432);
  EXPECT_EQ(c.n_heads, 64);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_dim, 128);
  EXPECT_EQ(c.qk_rope_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.n_dense_layers, 1);
  EXPECT_EQ(c.n_experts, 384);
  EXPECT_EQ(c.n_experts_used, 8);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.expert_ff, 2048);
  EXPECT_EQ(c.n_expert_groups, 1);
  EXPECT_EQ(c.n_expert_groups_used, 1);
  EXPECT_EQ(c.gating, ExpertGating::kSigmoid);
  EXPECT_TRUE(c.expert_weights_norm);
  EXPECT_FLOAT_EQ(c.expert_weights_scale, 2.827f);
  EXPECT_FLOAT_EQ(c.rope_freq_base, 50000.f);
  EXPECT_FLOAT_EQ(c.rope_scaling_factor, 32.f);
  EXPECT_FLOAT_EQ(c.yarn_beta_fast, 1.f);
  EXPECT_EQ(c.context_length, 131072);
  EXPECT_EQ(c.vocab_size, 163840);
}

TEST(ModelPresetsTest, V31HasV3sShape) {
  Deepseek2Config v31 = *PresetConfig("v3.1");
  const Deepseek2Config v3 = *PresetConfig("v3");
  EXPECT_EQ(v31.name, "moeflow-random-v3.1");
  v31.name = v3.name;
  // Every tensor of the two shapes is the same.
  const std::vector<PlannedTensor> a = PlanTensors(v31, LlamaFileType::kQ4_K_M);
  const std::vector<PlannedTensor> b = PlanTensors(v3, LlamaFileType::kQ4_K_M);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].ne, b[i].ne);
    EXPECT_EQ(a[i].type, b[i].type);
  }
  EXPECT_EQ(v31.n_expert_groups, 8);
  EXPECT_EQ(v31.n_experts, 256);
}

TEST(ModelPresetsTest, KimiK2TensorsHave384Experts) {
  Deepseek2Config c = *PresetConfig("kimi-k2");
  c.n_layers = 2;
  for (const PlannedTensor& t : PlanTensors(c, LlamaFileType::kQ2_K)) {
    if (t.name == "blk.1.ffn_gate_exps.weight") {
      EXPECT_EQ(t.ne, (std::vector<int64_t>{7168, 2048, 384}));
    }
    if (t.name == "blk.1.attn_k_b.weight") EXPECT_EQ(t.ne, (std::vector<int64_t>{128, 512, 64}));
  }
}

// tiny-k2 / tiny-v3.1: the real shape's structure, the tiny fixtures' widths.
TEST(ModelPresetsTest, TinyVariantsKeepTheRealStructure) {
  const Deepseek2Config tiny = *PresetConfig("tiny-v3");
  for (const auto& [name, real_name] : std::vector<std::pair<std::string, std::string>>{
           {"tiny-k2", "kimi-k2"}, {"tiny-v3.1", "v3.1"}}) {
    SCOPED_TRACE(name);
    const Deepseek2Config c = *PresetConfig(name);
    const Deepseek2Config real = *PresetConfig(real_name);
    EXPECT_EQ(c.name, "moeflow-random-" + name);
    EXPECT_EQ(c.n_layers, real.n_dense_layers + 2);
    EXPECT_EQ(c.n_heads, real.n_heads);
    EXPECT_EQ(c.n_dense_layers, real.n_dense_layers);
    EXPECT_EQ(c.n_experts, real.n_experts);
    EXPECT_EQ(c.n_experts_used, real.n_experts_used);
    EXPECT_EQ(c.n_shared_experts, real.n_shared_experts);
    EXPECT_EQ(c.n_expert_groups, real.n_expert_groups);
    EXPECT_EQ(c.n_expert_groups_used, real.n_expert_groups_used);
    EXPECT_EQ(c.gating, real.gating);
    EXPECT_EQ(c.expert_weights_norm, real.expert_weights_norm);
    EXPECT_FLOAT_EQ(c.expert_weights_scale, real.expert_weights_scale);
    EXPECT_FLOAT_EQ(c.rope_freq_base, real.rope_freq_base);
    EXPECT_FLOAT_EQ(c.rope_scaling_factor, real.rope_scaling_factor);
    EXPECT_FLOAT_EQ(c.yarn_beta_fast, real.yarn_beta_fast);
    EXPECT_FLOAT_EQ(c.yarn_beta_slow, real.yarn_beta_slow);
    EXPECT_FLOAT_EQ(c.yarn_log_multiplier, real.yarn_log_multiplier);
    EXPECT_EQ(c.context_length, real.context_length);
    EXPECT_EQ(c.hidden, tiny.hidden);
    EXPECT_EQ(c.expert_ff, tiny.expert_ff);
    EXPECT_EQ(c.kv_lora_rank, tiny.kv_lora_rank);
    EXPECT_EQ(c.q_lora_rank, tiny.q_lora_rank);
    EXPECT_EQ(c.qk_rope_dim, tiny.qk_rope_dim);
    EXPECT_EQ(c.vocab_size, tiny.vocab_size);
  }
  EXPECT_EQ(PresetConfig("tiny-k2")->n_heads, 64);
  EXPECT_EQ(PresetConfig("tiny-k2")->n_experts, 384);
  EXPECT_EQ(PresetConfig("tiny-v3.1")->n_heads, 128);
  EXPECT_EQ(PresetConfig("tiny-v3.1")->n_expert_groups, 8);
}

GeneratedModel Generate(const std::string& out, GgufSplitLimits split) {
  ModelGeneratorOptions options;
  options.preset = "tiny-v3";
  options.type = "q4_k_m";
  options.seed = 5;
  options.out_path = out;
  options.force = true;
  options.split = split;
  absl::StatusOr<GeneratedModel> model = GenerateModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : GeneratedModel{};
}

TEST(ModelGeneratorSplitTest, ShardsHoldTheSameTensorsAsOneFile) {
  const GeneratedModel whole = Generate(TmpPath("whole.gguf"), {});
  const GeneratedModel split = Generate(TmpPath("split.gguf"), {0, 20});
  ASSERT_EQ(split.shard_paths.size(), 4u);  // 70 tensors, 20 per shard
  EXPECT_EQ(split.shard_paths[0], TmpPath("split-00001-of-00004.gguf"));
  EXPECT_EQ(split.path, split.shard_paths[0]);
  auto a = GgufFile::Open(whole.path);
  auto b = GgufFile::Open(split.shard_paths[2]);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*b)->shard_count(), 4);
  EXPECT_EQ(split.file_bytes, (*b)->file_size());
  ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
  for (size_t i = 0; i < (*a)->tensors().size(); ++i) {
    const GgufTensorInfo& x = (*a)->tensors()[i];
    const GgufTensorInfo& y = (*b)->tensors()[i];
    ASSERT_EQ(x.name, y.name);
    EXPECT_EQ(y.shard, static_cast<int>(i / 20));
    ASSERT_EQ(x.n_bytes, y.n_bytes);
    EXPECT_EQ(std::memcmp((*a)->TensorData(x), (*b)->TensorData(y), x.n_bytes), 0) << x.name;
  }
  // Every model key is on the first shard, as in the whole file.
  for (const GgufKeyValue& kv : (*a)->metadata()) {
    const GgufValue* v = (*b)->Find(kv.key);
    ASSERT_NE(v, nullptr) << kv.key;
    EXPECT_TRUE(v->SameAs(kv.value)) << kv.key;
  }
}

// --split-max-size as llama-gguf-split cuts by size: `llama-gguf-split
// --split --split-max-size 1M` (llama.cpp v0.5.0, /work/ext/llama.cpp) of
// `mkmodel --preset tiny-v3 --type q4_k_m` wrote 4 shards of 27, 19, 18 and 6
// tensors and these sizes, byte-identical to `mkmodel ... --split-max-size 1M`
// (compared with cmp, 2026-12-07), and llama.cpp's logits from the first of
// mkmodel's shards equal those of the file in one piece. The sizes depend on
// the shapes and types only, not on the seed.
TEST(ModelGeneratorSplitTest, SplitsBySizeAsLlamaGgufSplitDid) {
  const GeneratedModel split = Generate(TmpPath("by_size.gguf"), {1000000, 0});
  ASSERT_EQ(split.shard_paths.size(), 4u);
  const std::vector<size_t> tensors = {27, 19, 18, 6};
  const std::vector<uint64_t> bytes = {981472, 782208, 739136, 745984};
  auto file = GgufFile::Open(split.shard_paths[3]);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->shard_count(), 4);
  std::vector<size_t> per_shard(4, 0);
  for (const GgufTensorInfo& t : (*file)->tensors()) ++per_shard[t.shard];
  EXPECT_EQ(per_shard, tensors);
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*file)->shard(i).file_size(), bytes[i]) << i;
}

TEST(ModelGeneratorSplitTest, RefusesToOverwriteAShard) {
  const GgufSplitLimits by_size{1000000, 0};
  Generate(TmpPath("exists.gguf"), by_size);
  ModelGeneratorOptions options;
  options.preset = "tiny-v3";
  options.out_path = TmpPath("exists.gguf");
  options.split = by_size;
  options.type = "q4_k_m";
  options.seed = 5;
  absl::StatusOr<GeneratedModel> again = GenerateModel(options);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("exists-00001-of-0000"), std::string::npos)
      << again.status();
}

}  // namespace
}  // namespace moeflow
