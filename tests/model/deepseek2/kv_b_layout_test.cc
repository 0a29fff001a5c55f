// The older MLA layout (model/deepseek2/kv_b_layout.h) on the fixture
// tests/data/llamacpp/tiny-v3-kvb, which make_kv_b_model.py wrote from
// tiny-v3.f32's first two layers: the derivation gives back tiny-v3's
// attn_k_b / attn_v_b bit for bit (F32), copies kv_b's own blocks into v_b
// and requantizes k_b to Q8_0 (quantized files), and the GPU memory plan
// counts the derived tensors instead of attn_kv_b.
#include "model/deepseek2/kv_b_layout.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/weights.h"
#include "model/gguf.h"
#include "model/memory_plan.h"

namespace moeflow {
namespace {

using ::testing::HasSubstr;

constexpr char kDir[] = "tests/data/llamacpp/";

std::unique_ptr<GgufFile> Open(const std::string& path) {
  auto file = GgufFile::Open(kDir + path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

std::vector<float> ToFloat(const DerivedMlaMatrix& m) {
  std::vector<float> out(static_cast<size_t>(m.cols * m.rows));
  EXPECT_TRUE(Dequantize(m.type, m.bytes.data(), out.data(), m.cols * m.rows).ok());
  return out;
}

TEST(KvBLayoutTest, ReadsTheOlderLayoutsConfig) {
  auto kvb = Open("tiny-v3-kvb/tiny-v3-kvb.f32.gguf");
  ASSERT_NE(kvb, nullptr);
  auto c = Deepseek2Config::FromGguf(*kvb);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->qk_nope_dim, 32);
  EXPECT_EQ(c->v_head_dim, 32);
  EXPECT_EQ(c->n_heads_kv, 4);  // older files: head_count_kv = n_heads
  EXPECT_TRUE(StoresKvB(*kvb, 0));
  EXPECT_TRUE(StoresKvB(*kvb, 1));
  auto absorbed = Open("tiny-v3/tiny-v3.f32.gguf");
  ASSERT_NE(absorbed, nullptr);
  EXPECT_FALSE(StoresKvB(*absorbed, 0));
}

TEST(KvBLayoutTest, F32DerivationGivesBackTheAbsorbedTensorsBitForBit) {
  auto kvb = Open("tiny-v3-kvb/tiny-v3-kvb.f32.gguf");
  auto absorbed = Open("tiny-v3/tiny-v3.f32.gguf");
  ASSERT_TRUE(kvb && absorbed);
  const Deepseek2Config c = *Deepseek2Config::FromGguf(*kvb);
  for (int64_t il = 0; il < 2; ++il) {
    SCOPED_TRACE(il);
    absl::StatusOr<DerivedMla> d = DeriveMlaFromKvB(*kvb, c, il);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->k_b.type, GgmlType::kF32);
    EXPECT_EQ(d->v_b.type, GgmlType::kF32);
    for (auto [m, suffix] : {std::pair<const DerivedMlaMatrix*, const char*>{&d->k_b, "attn_k_b"},
                             {&d->v_b, "attn_v_b"}}) {
      const GgufTensorInfo* t =
          absorbed->FindTensor(LayerTensorName(il, (std::string(suffix) + ".weight").c_str()));
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(m->cols, t->ne[0]);
      EXPECT_EQ(m->rows, t->rows());
      ASSERT_EQ(m->bytes.size(), t->n_bytes);
      EXPECT_EQ(std::memcmp(m->bytes.data(), absorbed->TensorData(*t), t->n_bytes), 0) << suffix;
    }
    // The reference's float split gives the same values.
    std::vector<float> kv_b(static_cast<size_t>(c.kv_lora_rank * c.n_heads * 64)), k_b, v_b;
    const GgufTensorInfo* kv = kvb->FindTensor(LayerTensorName(il, "attn_kv_b.weight"));
    ASSERT_NE(kv, nullptr);
    std::memcpy(kv_b.data(), kvb->TensorData(*kv), kv->n_bytes);
    ASSERT_TRUE(SplitKvBFloat(kv_b, c, &k_b, &v_b).ok());
    EXPECT_EQ(std::memcmp(k_b.data(), d->k_b.bytes.data(), d->k_b.bytes.size()), 0);
    EXPECT_EQ(std::memcmp(v_b.data(), d->v_b.bytes.data(), d->v_b.bytes.size()), 0);
  }
}

// Q8_0 (both layers) and Q4_K_M (layer 0 Q5_0, layer 1 Q8_0): v_b is kv_b's
// own blocks, k_b is Q8_0 of the exact transposed values, within Q8_0's
// rounding of them: half a step of each block's scale, plus the rounding of
// the scale itself to f16 (2^-11 relative, times up to 127 steps).
TEST(KvBLayoutTest, QuantizedDerivationCopiesVbAndRequantizesKb) {
  for (const char* quant : {"q8_0", "q4_k_m"}) {
    SCOPED_TRACE(quant);
    auto kvb = Open(std::string("tiny-v3-kvb/tiny-v3-kvb.") + quant + ".gguf");
    ASSERT_NE(kvb, nullptr);
    const Deepseek2Config c = *Deepseek2Config::FromGguf(*kvb);
    for (int64_t il = 0; il < 2; ++il) {
      const GgufTensorInfo* kv = kvb->FindTensor(LayerTensorName(il, "attn_kv_b.weight"));
      ASSERT_NE(kv, nullptr);
      absl::StatusOr<DerivedMla> d = DeriveMlaFromKvB(*kvb, c, il);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(d->v_b.type, kv->type);
      EXPECT_EQ(d->k_b.type, GgmlType::kQ8_0);
      const int64_t row = *RowBytes(kv->type, c.kv_lora_rank);
      for (int64_t h = 0; h < c.n_heads; ++h) {
        for (int64_t j = 0; j < c.v_head_dim; ++j) {
          EXPECT_EQ(std::memcmp(d->v_b.bytes.data() + (h * c.v_head_dim + j) * row,
                                kvb->TensorData(*kv) + (h * 64 + c.qk_nope_dim + j) * row, row),
                    0);
        }
      }
      std::vector<float> kv_b(static_cast<size_t>(kv->n_elements)), k_b, v_b;
      ASSERT_TRUE(Dequantize(kv->type, kvb->TensorData(*kv), kv_b.data(), kv->n_elements).ok());
      ASSERT_TRUE(SplitKvBFloat(kv_b, c, &k_b, &v_b).ok());
      EXPECT_EQ(ToFloat(d->v_b), v_b);
      const std::vector<float> got = ToFloat(d->k_b);
      ASSERT_EQ(got.size(), k_b.size());
      for (size_t r = 0; r < k_b.size() / 32; ++r) {
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(k_b[r * 32 + i]));
        for (int i = 0; i < 32; ++i) {
          ASSERT_LE(std::fabs(got[r * 32 + i] - k_b[r * 32 + i]),
                    amax / 127 * 0.5f + amax / 2048 + 1e-7f)
              << "block " << r;
        }
      }
    }
  }
}

TEST(KvBLayoutTest, MemoryPlanCountsTheDerivedTensors) {
  auto kvb = Open("tiny-v3-kvb/tiny-v3-kvb.q4_k_m.gguf");
  ASSERT_NE(kvb, nullptr);
  const Deepseek2Config c = *Deepseek2Config::FromGguf(*kvb);
  const std::vector<GgufTensorInfo> derived = WithDerivedMlaTensors(kvb->tensors(), c);
  EXPECT_EQ(derived.size(), kvb->tensors().size() + 2);  // one kv_b -> two, per layer
  uint64_t attention = 0;
  for (const GgufTensorInfo& t : derived) {
    EXPECT_EQ(t.name.find("attn_kv_b"), std::string::npos) << t.name;
    if (PartOf(t.name) == TensorPart::kAttention) {
      attention += GpuResidentBytes(t.name, t.type, t.ne);
    }
  }
  const GgufTensorInfo* k_b0 = nullptr;
  for (const GgufTensorInfo& t : derived) {
    if (t.name == "blk.0.attn_k_b.weight") k_b0 = &t;
  }
  ASSERT_NE(k_b0, nullptr);
  EXPECT_EQ(k_b0->type, GgmlType::kQ8_0);
  EXPECT_EQ(k_b0->ne, (std::vector<int64_t>{32, 128, 4}));
  EXPECT_EQ(k_b0->n_bytes, 4u * 128 * 34);
  GpuPlanOptions options;
  const GpuMemoryPlan plan = PlanGpuMemory(c, kvb->tensors(), options);
  EXPECT_EQ(plan.devices[0].weight_bytes_by_part[static_cast<int>(TensorPart::kAttention)],
            attention);
}

TEST(KvBLayoutTest, MisShapedKvBIsNamed) {
  auto kvb = Open("tiny-v3-kvb/tiny-v3-kvb.q8_0.gguf");
  ASSERT_NE(kvb, nullptr);
  Deepseek2Config c = *Deepseek2Config::FromGguf(*kvb);
  c.v_head_dim = 16;  // as if the file's keys disagreed with its tensors
  absl::StatusOr<DerivedMla> d = DeriveMlaFromKvB(*kvb, c, 1);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("blk.1.attn_kv_b.weight has shape {128, 256}"));
  EXPECT_THAT(d.status().message(), HasSubstr("tiny-v3-kvb.q8_0.gguf"));
}

}  // namespace
}  // namespace moeflow
