// The GPU memory plan (model/memory_plan.h PlanGpuMemory) against numbers
// computed by hand for the `tiny` preset's shapes (tests/data/llamacpp's
// tiny-v2): 4 layers (1 dense), hidden 256, 4 heads of qk 32 + 32 and v 32,
// kv_lora 128, dense ff 512, 16 experts of ff 64 with 1 shared, vocab 2048.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "formats/ggml_types.h"
#include "gtest/gtest.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "model/memory_plan.h"
#include "model/model_generator.h"

namespace moeflow {
namespace {

std::vector<GgufTensorInfo> Tensors(const Deepseek2Config& config, LlamaFileType type) {
  std::vector<GgufTensorInfo> out;
  for (const PlannedTensor& p : PlanTensors(config, type)) {
    GgufTensorInfo t;
    t.name = p.name;
    t.ne = p.ne;
    t.type = p.type;
    out.push_back(t);
  }
  return out;
}

uint64_t Part(const GpuDevicePlan& d, TensorPart part) {
  return d.weight_bytes_by_part[static_cast<int>(part)];
}

TEST(GpuMemoryPlanTest, ResidentBytesFollowTheKernelLayouts) {
  // Q4_K: 148 B per 256 (int4 repack); 2 blocks per row, 3 rows.
  EXPECT_EQ(GpuResidentBytes("blk.0.attn_q.weight", GgmlType::kQ4_K, {512, 3}), 3u * 2 * 148);
  // Q8_0 as is: 34 B per 32.
  EXPECT_EQ(GpuResidentBytes("blk.0.attn_q.weight", GgmlType::kQ8_0, {64, 2}), 2u * 2 * 34);
  // Q6_K requantized to int8 blocks.
  EXPECT_EQ(GpuResidentBytes("output.weight", GgmlType::kQ6_K, {256, 2}), 2u * 8 * 34);
  // F32 / F16 matrices become BF16; 1-D tensors and the router stay F32.
  EXPECT_EQ(GpuResidentBytes("blk.0.attn_q.weight", GgmlType::kF32, {64, 2}), 64u * 2 * 2);
  EXPECT_EQ(GpuResidentBytes("blk.0.attn_q.weight", GgmlType::kF16, {64, 2}), 64u * 2 * 2);
  EXPECT_EQ(GpuResidentBytes("blk.0.attn_norm.weight", GgmlType::kF32, {7}), 28u);
  EXPECT_EQ(GpuResidentBytes("blk.1.ffn_gate_inp.weight", GgmlType::kF32, {256, 16}),
            256u * 16 * 4);
}

// F32 file: every matrix is 2 B per value on the GPU, 1-D tensors and the
// router 4 B.
//   token_embd {256, 2048}                    1 048 576
//   per layer attention: attn_norm 1024, attn_q {256, 256} 131 072,
//     kv_a_mqa {256, 160} 81 920, kv_a_norm 512, k_b {32, 128, 4} 32 768,
//     v_b {128, 32, 4} 32 768, attn_output {128, 256} 65 536 = 345 600 (× 4)
//   ffn_norm 1024 (× 4)
//   layer 0 dense: 3 × 256 × 512 × 2            786 432
//   layers 1-3: router {256, 16} F32 16 384, shared experts 3 × 256 × 64 × 2
//     = 98 304
//   output_norm 1024, output {256, 2048}      1 048 576
TEST(GpuMemoryPlanTest, TinyOnOneCardMatchesHandCount) {
  const Deepseek2Config c = *PresetConfig("tiny");
  GpuPlanOptions options;
  options.n_devices = 1;
  options.context_tokens = 100;
  options.max_batch_tokens = 2;
  const GpuMemoryPlan plan = PlanGpuMemory(c, Tensors(c, LlamaFileType::kAllF32), options);
  ASSERT_EQ(plan.devices.size(), 1u);
  const GpuDevicePlan& d = plan.devices[0];
  EXPECT_EQ(Part(d, TensorPart::kEmbeddings), 1048576u);
  EXPECT_EQ(Part(d, TensorPart::kAttention), 4u * 345600);
  EXPECT_EQ(Part(d, TensorPart::kNorms), 4u * 1024 + 1024);
  EXPECT_EQ(Part(d, TensorPart::kDenseFfn), 786432u);
  EXPECT_EQ(Part(d, TensorPart::kRouter), 3u * 16384);
  EXPECT_EQ(Part(d, TensorPart::kSharedExperts), 3u * 98304);
  EXPECT_EQ(Part(d, TensorPart::kOutput), 1048576u);
  EXPECT_EQ(Part(d, TensorPart::kRoutedExperts), 0u);
  EXPECT_EQ(d.weight_bytes, 4615168u);
  // KV: 100 tokens → 2 pages of 64 = 128 positions × 4 layers × 160 × 2 B.
  EXPECT_EQ(plan.kv_cache_positions, 128);
  EXPECT_EQ(plan.kv_bytes_per_token, 1280u);
  EXPECT_EQ(d.kv_cache_bytes, 163840u);
  // Activations, M = 2 tokens, h = 4 heads (floats): 3·2·256 = 1536,
  // 2·4·(64 + 160) = 1792, 2·4·(128 + 32) = 1280, 3·2·512 = 3072,
  // 2·2048 = 4096, 2·4·16·130 = 16640; 28 416 floats.
  EXPECT_EQ(d.activation_bytes, 28416u * 4);
  EXPECT_EQ(d.workspace_bytes, 28416u * 4 + kCublasWorkspaceBytes + kCudaRuntimeReserveBytes);
  EXPECT_EQ(d.total(), d.weight_bytes + d.kv_cache_bytes + d.workspace_bytes);
}

// Two cards: heads 2 each, dense ff 256, shared ff 32, vocab 1024 each.
//   token_embd 524 288; attention per layer 1024 + 65 536 + 81 920 + 512 +
//   16 384 + 16 384 + 32 768 = 214 528 (× 4); norms 5120; dense 3 × 131 072;
//   router 49 152 (replicated); shared 3 × 3 × 16 384; output 524 288.
TEST(GpuMemoryPlanTest, TinyOnTwoCardsSplitsHeadsFfnAndVocab) {
  const Deepseek2Config c = *PresetConfig("tiny");
  GpuPlanOptions options;
  options.n_devices = 2;
  options.context_tokens = 100;
  options.max_batch_tokens = 2;
  const GpuMemoryPlan plan = PlanGpuMemory(c, Tensors(c, LlamaFileType::kAllF32), options);
  ASSERT_EQ(plan.devices.size(), 2u);
  for (const GpuDevicePlan& d : plan.devices) {
    EXPECT_EQ(Part(d, TensorPart::kEmbeddings), 524288u);
    EXPECT_EQ(Part(d, TensorPart::kAttention), 4u * 214528);
    EXPECT_EQ(Part(d, TensorPart::kNorms), 5120u);
    EXPECT_EQ(Part(d, TensorPart::kDenseFfn), 3u * 131072);
    EXPECT_EQ(Part(d, TensorPart::kRouter), 49152u);
    EXPECT_EQ(Part(d, TensorPart::kSharedExperts), 9u * 16384);
    EXPECT_EQ(Part(d, TensorPart::kOutput), 524288u);
    EXPECT_EQ(d.weight_bytes, 2501632u);
    // The compressed cache is shared by all heads: every card holds it all.
    EXPECT_EQ(d.kv_cache_bytes, 163840u);
  }
}

// Q8_0 file: matrices are Q8_0 except output (Q8_0 too for this file type);
// the int8 repack keeps the file's bytes, so the one-card weights are the
// file's non-expert bytes with the router and 1-D tensors at 4 B.
TEST(GpuMemoryPlanTest, Q8_0WeightsKeepTheFileBytes) {
  const Deepseek2Config c = *PresetConfig("tiny");
  std::vector<GgufTensorInfo> tensors = Tensors(c, LlamaFileType::kQ8_0);
  uint64_t want = 0;
  for (GgufTensorInfo& t : tensors) {
    if (PartOf(t.name) == TensorPart::kRoutedExperts) continue;
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    if (t.type == GgmlType::kQ8_0) {
      want += static_cast<uint64_t>(n / 32 * 34);
    } else {
      ASSERT_EQ(t.type, GgmlType::kF32) << t.name;
      want += static_cast<uint64_t>(n) * 4;
    }
  }
  GpuPlanOptions options;
  const GpuMemoryPlan plan = PlanGpuMemory(c, tensors, options);
  EXPECT_EQ(plan.devices[0].weight_bytes, want);
}

TEST(GpuMemoryPlanTest, UnevenSharesGiveTheFirstCardsMore) {
  // 4 heads over 3 cards: 2, 1, 1; vocab 2048: 683, 683, 682; dense ff 512:
  // 171, 171, 170; shared ff 64: 22, 21, 21.
  const Deepseek2Config c = *PresetConfig("tiny");
  GpuPlanOptions options;
  options.n_devices = 3;
  const GpuMemoryPlan plan = PlanGpuMemory(c, Tensors(c, LlamaFileType::kAllF32), options);
  ASSERT_EQ(plan.devices.size(), 3u);
  EXPECT_GT(plan.devices[0].weight_bytes, plan.devices[1].weight_bytes);
  // Cards 1 and 2 differ by one vocabulary row of token_embd and of output
  // and one dense FFN row of gate, up and down (256 values at 2 B each).
  EXPECT_EQ(plan.devices[1].weight_bytes - plan.devices[2].weight_bytes, 5u * 256 * 2);
  EXPECT_EQ(plan.max_device_bytes(), plan.devices[0].total());
}

TEST(GpuMemoryPlanTest, CheckFitsNamesDeviceNeedAndCapacity) {
  const Deepseek2Config c = *PresetConfig("tiny");
  GpuPlanOptions options;
  options.n_devices = 2;
  options.context_tokens = 100;
  const GpuMemoryPlan plan = PlanGpuMemory(c, Tensors(c, LlamaFileType::kAllF32), options);
  EXPECT_TRUE(CheckGpuMemoryFits(plan, 0, "gpu_workers[0]", {3, 5}).ok());
  EXPECT_TRUE(CheckGpuMemoryFits(plan, plan.max_device_bytes(), "gpu_workers[0]", {3, 5}).ok());
  const absl::Status s =
      CheckGpuMemoryFits(plan, plan.max_device_bytes() - 1, "gpu_workers[0]", {3, 5});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("gpu_workers[0] device 3: needs 5"), std::string::npos) << s;
  EXPECT_NE(s.message().find("1/2 tensor-parallel share"), std::string::npos) << s;
  EXPECT_NE(s.message().find("KV cache 160.0 KiB"), std::string::npos) << s;
  EXPECT_NE(s.message().find("for 128 tokens"), std::string::npos) << s;
  EXPECT_NE(s.message().find(" MiB (vram_gib)"), std::string::npos) << s;
}

// DeepSeek-V3 at Q4_K_M: the non-expert weights must fit a 24 GB card with
// room for the cache (the point of the issue), and BF16 must not.
// The older MLA layout is planned with what the gpu worker derives from it
// (model/deepseek2/kv_b_layout.h): tiny-v3-kvb.q8_0 is tiny-v3's first two
// layers with attn_kv_b, and a Q8_0 attn_kv_b gives a Q8_0 attn_k_b and
// attn_v_b, so its plan is, byte for byte, that of tiny-v3.q8_0's first two
// layers in the newer layout (attn_k_b, attn_v_b in the file).
TEST(GpuMemoryPlanTest, KvBFileIsPlannedWithTheDerivedTensors) {
  auto kvb = GgufFile::Open("tests/data/llamacpp/tiny-v3-kvb/tiny-v3-kvb.q8_0.gguf");
  auto newer = GgufFile::Open("tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf");
  ASSERT_TRUE(kvb.ok()) << kvb.status();
  ASSERT_TRUE(newer.ok()) << newer.status();
  auto c = Deepseek2Config::FromGguf(**kvb);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->n_layers, 2);
  std::vector<GgufTensorInfo> first_two;
  bool has_kv_b = false;
  for (const GgufTensorInfo& t : (*kvb)->tensors()) has_kv_b |= absl::StrContains(t.name, "kv_b");
  ASSERT_TRUE(has_kv_b);
  for (const GgufTensorInfo& t : (*newer)->tensors()) {
    if (absl::StartsWith(t.name, "blk.") && !absl::StartsWith(t.name, "blk.0.") &&
        !absl::StartsWith(t.name, "blk.1.")) {
      continue;
    }
    first_two.push_back(t);
  }
  for (int cards : {1, 2, 4}) {
    SCOPED_TRACE(cards);
    GpuPlanOptions options;
    options.n_devices = cards;
    const GpuMemoryPlan from_kvb = PlanGpuMemory(*c, (*kvb)->tensors(), options);
    const GpuMemoryPlan from_newer = PlanGpuMemory(*c, first_two, options);
    ASSERT_EQ(from_kvb.devices.size(), from_newer.devices.size());
    for (size_t d = 0; d < from_kvb.devices.size(); ++d) {
      EXPECT_GT(Part(from_kvb.devices[d], TensorPart::kAttention), 0u);
      for (int part = 0; part < kNumTensorParts; ++part) {
        EXPECT_EQ(from_kvb.devices[d].weight_bytes_by_part[part],
                  from_newer.devices[d].weight_bytes_by_part[part])
            << TensorPartName(static_cast<TensorPart>(part)) << " on card " << d;
      }
      EXPECT_EQ(from_kvb.devices[d].total(), from_newer.devices[d].total());
    }
  }
}

// Where the derived tensors differ from attn_kv_b on the GPU: a Q4_K
// attn_kv_b (int4 on the card) of the V3 shape gives a Q8_0 attn_k_b (int8)
// and a Q4_K attn_v_b. Layer 0 of a V3 Q4_K_M plan with its k_b / v_b
// replaced by such a kv_b {512, 128 · 256} is planned as k_b Q8_0
// {128, 512, 128} + v_b Q4_K {512, 128, 128}, not as the kv_b itself.
TEST(GpuMemoryPlanTest, Q4KKvBIsPlannedAsQ8_0KbAndQ4KVb) {
  const Deepseek2Config v3 = *PresetConfig("v3");
  const std::vector<GgufTensorInfo> newer = Tensors(v3, LlamaFileType::kQ4_K_M);
  std::vector<GgufTensorInfo> older, by_hand, kv_b_as_is;
  GgufTensorInfo kv_b;
  kv_b.name = "blk.0.attn_kv_b.weight";
  kv_b.ne = {512, 128 * 256};
  kv_b.type = GgmlType::kQ4_K;
  for (const GgufTensorInfo& t : newer) {
    if (t.name == "blk.0.attn_k_b.weight") {
      older.push_back(kv_b);
      GgufTensorInfo underived = kv_b;  // a name the plan does not derive from
      underived.name = "blk.0.attn_kv_b_as_stored.weight";
      kv_b_as_is.push_back(underived);
      GgufTensorInfo k_b = t, v_b = t;
      k_b.ne = {128, 512, 128};
      k_b.type = GgmlType::kQ8_0;
      v_b.name = "blk.0.attn_v_b.weight";
      v_b.ne = {512, 128, 128};
      v_b.type = GgmlType::kQ4_K;
      by_hand.push_back(k_b);
      by_hand.push_back(v_b);
      continue;
    }
    if (t.name == "blk.0.attn_v_b.weight") continue;
    older.push_back(t);
    by_hand.push_back(t);
    kv_b_as_is.push_back(t);
  }
  ASSERT_EQ(older.size() + 1, newer.size());
  GpuPlanOptions options;
  const uint64_t planned =
      Part(PlanGpuMemory(v3, older, options).devices[0], TensorPart::kAttention);
  const uint64_t expected =
      Part(PlanGpuMemory(v3, by_hand, options).devices[0], TensorPart::kAttention);
  EXPECT_EQ(planned, expected);
  // kv_b counted as it is stored would be smaller (int4 instead of int8 for k_b's half):
  // 128 · 256 rows of 2 Q4_K blocks (148 B on the card) vs the derived 65536 rows of 4 Q8_0
  // blocks (34 B) + 16384 rows of 2 Q4_K blocks.
  const uint64_t kv_b_bytes = 128u * 256 * 2 * 148;
  const uint64_t derived_bytes = 128u * 512 * 4 * 34 + 128u * 128 * 2 * 148;
  EXPECT_EQ(
      planned - Part(PlanGpuMemory(v3, kv_b_as_is, options).devices[0], TensorPart::kAttention),
      derived_bytes - kv_b_bytes);
}

TEST(GpuMemoryPlanTest, V3Q4KMFitsOne4090AndBf16DoesNot) {
  const Deepseek2Config v3 = *PresetConfig("v3");
  GpuPlanOptions options;
  options.context_tokens = 16384;
  const GpuMemoryPlan q4 = PlanGpuMemory(v3, Tensors(v3, LlamaFileType::kQ4_K_M), options);
  const GpuMemoryPlan bf16 = PlanGpuMemory(v3, Tensors(v3, LlamaFileType::kBF16), options);
  const uint64_t gib = uint64_t{1} << 30;
  EXPECT_LT(q4.max_device_bytes(), 24 * gib);
  EXPECT_GT(bf16.max_device_bytes(), 24 * gib);
  // KV: 16384 × 61 layers × 576 × 2 B.
  EXPECT_EQ(q4.devices[0].kv_cache_bytes, 16384ull * 61 * 576 * 2);
  options.n_devices = 4;
  const GpuMemoryPlan bf16_4 = PlanGpuMemory(v3, Tensors(v3, LlamaFileType::kBF16), options);
  EXPECT_LT(bf16_4.devices[0].weight_bytes, bf16.devices[0].weight_bytes / 3);
}

}  // namespace
}  // namespace moeflow
