#include "model/memory_plan.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

GgufTensorInfo Tensor(std::string name, GgmlType type, std::vector<int64_t> ne) {
  GgufTensorInfo t;
  t.name = std::move(name);
  t.type = type;
  t.ne = std::move(ne);
  t.n_elements = 1;
  for (int64_t d : t.ne) t.n_elements *= d;
  t.n_bytes = static_cast<uint64_t>(*RowBytes(type, t.ne[0])) * (t.n_elements / t.ne[0]);
  return t;
}

// A synthetic 2-layer model: layer 0 dense, layer 1 with 6 routed experts of
// ff 512 (gate/up Q4_K: 144 B per 256 values; down Q6_K: 210 B per 256).
std::vector<GgufTensorInfo> SyntheticModel() {
  return {
      Tensor("token_embd.weight", GgmlType::kQ4_K, {256, 1000}),
      Tensor("blk.0.attn_norm.weight", GgmlType::kF32, {256}),
      Tensor("blk.0.attn_q.weight", GgmlType::kQ8_0, {256, 512}),
      Tensor("blk.0.ffn_norm.weight", GgmlType::kF32, {256}),
      Tensor("blk.0.ffn_gate.weight", GgmlType::kQ4_K, {256, 768}),
      Tensor("blk.0.ffn_up.weight", GgmlType::kQ4_K, {256, 768}),
      Tensor("blk.0.ffn_down.weight", GgmlType::kQ6_K, {768, 256}),
      Tensor("blk.1.attn_norm.weight", GgmlType::kF32, {256}),
      Tensor("blk.1.attn_q.weight", GgmlType::kQ8_0, {256, 512}),
      Tensor("blk.1.ffn_norm.weight", GgmlType::kF32, {256}),
      Tensor("blk.1.ffn_gate_inp.weight", GgmlType::kF32, {256, 6}),
      Tensor("blk.1.exp_probs_b.bias", GgmlType::kF32, {6}),
      Tensor("blk.1.ffn_gate_exps.weight", GgmlType::kQ4_K, {256, 512, 6}),
      Tensor("blk.1.ffn_up_exps.weight", GgmlType::kQ4_K, {256, 512, 6}),
      Tensor("blk.1.ffn_down_exps.weight", GgmlType::kQ6_K, {512, 256, 6}),
      Tensor("blk.1.ffn_gate_shexp.weight", GgmlType::kQ4_K, {256, 512}),
      Tensor("blk.1.ffn_up_shexp.weight", GgmlType::kQ4_K, {256, 512}),
      Tensor("blk.1.ffn_down_shexp.weight", GgmlType::kQ6_K, {512, 256}),
      Tensor("output_norm.weight", GgmlType::kF32, {256}),
      Tensor("output.weight", GgmlType::kQ6_K, {256, 1000}),
  };
}

// Per expert: gate and up 512 rows × 144 B, down 256 rows × 2 blocks × 210 B.
constexpr uint64_t kGatePerExpert = 512 * 144;
constexpr uint64_t kDownPerExpert = 256 * 2 * 210;
constexpr uint64_t kPerExpert = 2 * kGatePerExpert + kDownPerExpert;

TEST(MemoryPlanTest, ClassifiesTensorsByName) {
  EXPECT_EQ(PartOf("blk.3.ffn_down_exps.weight"), TensorPart::kRoutedExperts);
  EXPECT_EQ(PartOf("blk.3.ffn_up_shexp.weight"), TensorPart::kSharedExperts);
  EXPECT_EQ(PartOf("blk.3.attn_kv_a_norm.weight"), TensorPart::kAttention);
  EXPECT_EQ(PartOf("blk.0.ffn_gate.weight"), TensorPart::kDenseFfn);
  EXPECT_EQ(PartOf("blk.3.ffn_gate_inp.weight"), TensorPart::kRouter);
  EXPECT_EQ(PartOf("blk.3.exp_probs_b.bias"), TensorPart::kRouter);
  EXPECT_EQ(PartOf("blk.3.ffn_norm.weight"), TensorPart::kNorms);
  EXPECT_EQ(PartOf("output_norm.weight"), TensorPart::kNorms);
  EXPECT_EQ(PartOf("token_embd.weight"), TensorPart::kEmbeddings);
  EXPECT_EQ(PartOf("output.weight"), TensorPart::kOutput);
  EXPECT_EQ(PartOf("rope_freqs.weight"), TensorPart::kOther);
}

TEST(MemoryPlanTest, CountsBytesByPartExactly) {
  const std::vector<GgufTensorInfo> model = SyntheticModel();
  const ModelBytes bytes = CountModelBytes(model);
  EXPECT_EQ(bytes.n_experts, 6);
  EXPECT_EQ(bytes.n_moe_layers, 1);
  EXPECT_EQ(bytes.bytes_per_expert, kPerExpert);
  EXPECT_EQ(bytes.routed_experts(), 6 * kPerExpert);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kSharedExperts)], kPerExpert);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kAttention)],
            2 * (256 * 4 + 512 * 8 * 34));  // norms + attn_q (Q8_0: 34 B per 32)
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kDenseFfn)], 2 * 768 * 144 + 256 * 3 * 210);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kRouter)], 256 * 6 * 4 + 6 * 4);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kNorms)], 3 * 256 * 4);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kEmbeddings)], 1000 * 144);
  EXPECT_EQ(bytes.by_part[static_cast<int>(TensorPart::kOutput)], 1000 * 210);
  uint64_t total = 0;
  for (const GgufTensorInfo& t : model) total += t.n_bytes;
  EXPECT_EQ(bytes.total(), total);
  EXPECT_EQ(bytes.non_expert(), total - 6 * kPerExpert);
}

TEST(MemoryPlanTest, ReplicateHoldsEveryExpertOnEveryNode) {
  const PlacementPlan plan = PlanExpertPlacement(SyntheticModel(), ExpertPlacement::kReplicate, 2);
  ASSERT_EQ(plan.nodes.size(), 2u);
  for (const NodeExperts& n : plan.nodes) {
    EXPECT_EQ(n.experts, 6);
    EXPECT_EQ(n.expert_bytes, 6 * kPerExpert);
  }
  EXPECT_EQ(plan.total_expert_bytes(), 12 * kPerExpert);
}

TEST(MemoryPlanTest, ShardSplitsWholeExpertsCeilPerNode) {
  PlacementPlan plan = PlanExpertPlacement(SyntheticModel(), ExpertPlacement::kShard, 2);
  ASSERT_EQ(plan.nodes.size(), 2u);
  EXPECT_EQ(plan.nodes[0].experts, 3);
  EXPECT_EQ(plan.nodes[1].experts, 3);
  EXPECT_EQ(plan.nodes[0].expert_bytes, 3 * kPerExpert);
  EXPECT_EQ(plan.nodes[1].expert_bytes, 3 * kPerExpert);
  // 6 experts over 4 nodes: ceil = 2 → 2, 2, 2, 0.
  plan = PlanExpertPlacement(SyntheticModel(), ExpertPlacement::kShard, 4);
  ASSERT_EQ(plan.nodes.size(), 4u);
  EXPECT_EQ(plan.nodes[0].experts, 2);
  EXPECT_EQ(plan.nodes[2].experts, 2);
  EXPECT_EQ(plan.nodes[3].experts, 0);
  EXPECT_EQ(plan.nodes[3].expert_bytes, 0u);
  EXPECT_EQ(plan.total_expert_bytes(), 6 * kPerExpert);
  EXPECT_EQ(plan.max_node_bytes(), 2 * kPerExpert);
}

TEST(MemoryPlanTest, SliceCutsEachExpertAtTheDownBlock) {
  PlacementPlan plan = PlanExpertPlacement(SyntheticModel(), ExpertPlacement::kSlice, 2);
  ASSERT_EQ(plan.nodes.size(), 2u);
  // ff 512 = 2 Q6_K blocks of the down rows: one block (256 ff rows) each.
  for (const NodeExperts& n : plan.nodes) {
    EXPECT_EQ(n.experts, 6);
    EXPECT_EQ(n.expert_bytes, 6 * kPerExpert / 2);
  }
  // 3 nodes: 2 blocks → 1, 1, 0 (a node gets nothing rather than half a block).
  plan = PlanExpertPlacement(SyntheticModel(), ExpertPlacement::kSlice, 3);
  EXPECT_EQ(plan.nodes[0].expert_bytes, 6 * kPerExpert / 2);
  EXPECT_EQ(plan.nodes[1].expert_bytes, 6 * kPerExpert / 2);
  EXPECT_EQ(plan.nodes[2].expert_bytes, 0u);
  EXPECT_EQ(plan.total_expert_bytes(), 6 * kPerExpert);
}

TEST(MemoryPlanTest, OneNodeHoldsEverythingInEveryMode) {
  for (ExpertPlacement p :
       {ExpertPlacement::kReplicate, ExpertPlacement::kSlice, ExpertPlacement::kShard}) {
    const PlacementPlan plan = PlanExpertPlacement(SyntheticModel(), p, 1);
    ASSERT_EQ(plan.nodes.size(), 1u);
    EXPECT_EQ(plan.nodes[0].experts, 6) << ExpertPlacementName(p);
    EXPECT_EQ(plan.nodes[0].expert_bytes, 6 * kPerExpert) << ExpertPlacementName(p);
  }
}

}  // namespace
}  // namespace moeflow
