// The quantized-matmul engine against llama.cpp's logits on the tiny fixture
// models (tests/data/llamacpp/README.md), against the float32 reference, and
// against itself (incremental decode, thread counts).
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/ggml_types.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/weight_memory.h"
#include "model/deepseek2/config.h"
#include "model/deepseek2/logits_file.h"
#include "model/deepseek2/reference.h"
#include "model/gguf.h"
#include "tests/engine/llamacpp_compare.h"
#include "tests/engine/one_sequence.h"
#include "tests/model/deepseek2/llamacpp_fixture.h"

namespace moeflow {
namespace {

using ::moeflow::fixtures::Argmax;
using ::moeflow::fixtures::CompareSequence;
using ::moeflow::fixtures::Comparison;
using ::moeflow::fixtures::FixturePath;
using ::moeflow::fixtures::Greedy;
using ::moeflow::fixtures::IntArrayAfterKey;
using ::moeflow::fixtures::NumbersAfterKey;
using ::moeflow::fixtures::ReadText;

using ::moeflow::fixtures::Engine;

std::unique_ptr<Engine> OpenEngine(const std::string& model, const std::string& quant,
                                   int n_threads = 2, int64_t active_experts = 0) {
  return ::moeflow::fixtures::OpenFixtureEngine(model, quant, n_threads, active_experts);
}

TEST(EngineTest, MatchesLlamaCppOnF32Files) {
  // tiny-v3-kvb: the older MLA layout (attn_kv_b; model/deepseek2/kv_b_layout.h).
  for (const char* name : {"tiny-v2", "tiny-v3", "tiny-v3-kvb"}) {
    auto engine = OpenEngine(name, "f32");
    ASSERT_NE(engine, nullptr);
    std::printf("ISA: %s\n", CpuIsaName(SelectedIsa()));
    for (const char* seq : {"seq7", "seq64"}) {
      const Comparison cmp = CompareSequence(*engine, name, "f32", seq);
      EXPECT_GT(cmp.positions, 0);
      EXPECT_EQ(cmp.top1_equal, cmp.positions) << name << " " << seq;
      EXPECT_LT(cmp.max_abs, 1e-3) << name << " " << seq;
    }
    int equal = 0, low = 0;
    Greedy(*engine, name, "f32", &equal, &low);
    EXPECT_EQ(equal, 32) << name;
  }
}

// Quantized files: llama.cpp is chaotic against itself there (README), so
// the bar is top-1 where its margin is >= 0.2, and the greedy continuation
// up to the first step whose recorded margin is below that.
TEST(EngineTest, QuantizedFilesAgreeWithLlamaCpp) {
  struct Case {
    const char* quant;
    double min_confident_agreement;
  };
  for (const char* name : {"tiny-v2", "tiny-v3", "tiny-v3-kvb"}) {
    for (const Case& c : {Case{"q8_0", 0.98}, Case{"q4_k_m", 0.95}}) {
      auto engine = OpenEngine(name, c.quant);
      ASSERT_NE(engine, nullptr);
      int confident = 0, agree = 0;
      for (const char* seq : {"seq7", "seq64"}) {
        const Comparison cmp = CompareSequence(*engine, name, c.quant, seq);
        confident += cmp.confident;
        agree += cmp.confident_top1_equal;
      }
      ASSERT_GT(confident, 0);
      const double share = static_cast<double>(agree) / confident;
      std::printf("%s.%s: top-1 agreement at margin >= 0.2: %.3f (%d/%d)\n", name, c.quant, share,
                  agree, confident);
      EXPECT_GE(share, c.min_confident_agreement) << name << " " << c.quant;
      int equal = 0, low = 0;
      Greedy(*engine, name, c.quant, &equal, &low);
      EXPECT_GE(equal, low) << name << " " << c.quant;
    }
  }
}

TEST(EngineTest, MatchesReferenceOnF32Files) {
  for (const char* name : {"tiny-v2", "tiny-v3"}) {
    auto engine = OpenEngine(name, "f32");
    auto reference = Deepseek2Reference::Open(FixturePath(name, "f32.gguf"));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(reference.ok()) << reference.status();
    auto ref = ReadLogitsFile(FixturePath(name, "f32.seq64.logits.bin"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    const std::vector<int32_t> tokens(ref->tokens.begin(), ref->tokens.end());
    auto a = engine->Forward(tokens, 0);
    auto b = (*reference)->Forward(tokens, 0);
    ASSERT_TRUE(a.ok() && b.ok());
    double max_abs = 0;
    for (size_t i = 0; i < a->size(); ++i) {
      max_abs = std::max(max_abs, std::fabs(static_cast<double>((*a)[i]) - (*b)[i]));
    }
    std::printf("%s engine vs reference (F32): max |d| %.3g\n", name, max_abs);
    EXPECT_LT(max_abs, 1e-4) << name;
  }
}

// Prompt in two chunks, then single tokens, against the whole sequence in one
// batch. F32: close. Q4_K_M: activations are quantized per
// row, so only the attention's float sums differ: top-1 equal, close.
TEST(EngineTest, IncrementalDecodeMatchesOneBatch) {
  struct Case {
    const char* name;
    const char* quant;
    double tolerance;
  };
  for (const Case& c : {Case{"tiny-v2", "f32", 1e-4}, Case{"tiny-v3", "f32", 1e-4},
                        Case{"tiny-v3", "q4_k_m", 0.5}}) {
    auto engine = OpenEngine(c.name, c.quant);
    ASSERT_NE(engine, nullptr);
    auto ref = ReadLogitsFile(FixturePath(c.name, "f32.seq64.logits.bin"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    const std::vector<int32_t> tokens(ref->tokens.begin(), ref->tokens.end());
    const int64_t vocab = engine->config().vocab_size;
    auto batch = engine->Forward(tokens, 0);
    ASSERT_TRUE(batch.ok()) << batch.status();
    std::vector<float> incremental;
    auto first = engine->Forward(absl::MakeConstSpan(tokens).subspan(0, 5), 0);
    ASSERT_TRUE(first.ok());
    incremental.insert(incremental.end(), first->begin(), first->end());
    auto second = engine->Forward(absl::MakeConstSpan(tokens).subspan(5, 11), 5);
    ASSERT_TRUE(second.ok());
    incremental.insert(incremental.end(), second->begin(), second->end());
    for (size_t t = 16; t < tokens.size(); ++t) {
      auto step = engine->Forward({tokens[t]}, static_cast<int64_t>(t));
      ASSERT_TRUE(step.ok());
      incremental.insert(incremental.end(), step->begin(), step->end());
    }
    ASSERT_EQ(incremental.size(), batch->size());
    double max_abs = 0;
    int top1_equal = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      top1_equal +=
          Argmax(incremental.data() + t * vocab, vocab) == Argmax(batch->data() + t * vocab, vocab);
      for (int64_t v = 0; v < vocab; ++v) {
        max_abs = std::max(max_abs, std::fabs(static_cast<double>(incremental[t * vocab + v]) -
                                              (*batch)[t * vocab + v]));
      }
    }
    std::printf("%s.%s incremental vs one batch: max |d| %.3g, top-1 %d/%zu\n", c.name, c.quant,
                max_abs, top1_equal, tokens.size());
    EXPECT_LT(max_abs, c.tolerance) << c.name << " " << c.quant;
    EXPECT_EQ(top1_equal, static_cast<int>(tokens.size())) << c.name << " " << c.quant;
    EXPECT_EQ(engine->cached_tokens(), static_cast<int64_t>(tokens.size()));
  }
}

TEST(EngineTest, ThreadCountDoesNotChangeLogits) {
  const std::vector<int32_t> tokens = {2046, 17, 401, 95, 1200, 33, 7};
  std::vector<float> first;
  for (int threads = 1; threads <= 3; ++threads) {
    auto engine = OpenEngine("tiny-v3", "q4_k_m", threads);
    ASSERT_NE(engine, nullptr);
    auto logits = engine->Forward(tokens, 0);
    ASSERT_TRUE(logits.ok());
    if (threads == 1) {
      first = *logits;
    } else {
      EXPECT_EQ(*logits, first) << threads << " threads";
    }
  }
}

TEST(EngineTest, LastOnlyLogitsEqualLastRow) {
  auto engine = OpenEngine("tiny-v2", "q8_0");
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> tokens = {2046, 17, 401, 95, 1200, 33, 7};
  const int64_t vocab = engine->config().vocab_size;
  auto all = engine->Forward(tokens, 0);
  ASSERT_TRUE(all.ok());
  std::vector<float> last(static_cast<size_t>(vocab));
  ASSERT_TRUE(engine->ForwardInto(tokens, 0, true, absl::MakeSpan(last)).ok());
  EXPECT_EQ(last, std::vector<float>(all->end() - vocab, all->end()));
  std::vector<float> wrong(5);
  EXPECT_EQ(engine->ForwardInto(tokens, 0, true, absl::MakeSpan(wrong)).code(),
            absl::StatusCode::kInvalidArgument);
}

// A prompt longer than kPrefillTokenChunk goes through the layers in steps
// (the single-process topology takes at most kPrefillTokenChunk tokens a
// step, even when asked for more); the logits are those of the same tokens
// fed in two other pieces, bit for bit (no step depends on the chunk a token
// is in), for every row and for last_only.
TEST(EngineTest, LongPromptsInChunksEqualOtherSplits) {
  for (const char* quant : {"q4_k_m", "f32"}) {
    SCOPED_TRACE(quant);
    const int64_t n = kPrefillTokenChunk + 90;
    auto e = testing::OneSequence::Open(FixturePath("tiny-v3", std::string(quant) + ".gguf"),
                                        /*n_threads=*/2, /*max_batch=*/4 * kPrefillTokenChunk,
                                        /*max_context=*/n);
    ASSERT_TRUE(e.ok()) << e.status();
    testing::OneSequence& engine = **e;
    EXPECT_EQ(engine.topology().limits().max_tokens, kPrefillTokenChunk);
    const int64_t vocab = engine.config().vocab_size;
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = (i * 7919 + 3) % (vocab - 2);
    auto whole = engine.Forward(tokens, 0);
    ASSERT_TRUE(whole.ok()) << whole.status();
    const int64_t split = 333;
    auto first = engine.Forward(absl::MakeConstSpan(tokens).subspan(0, split), 0);
    ASSERT_TRUE(first.ok());
    auto rest = engine.Forward(absl::MakeConstSpan(tokens).subspan(split), split);
    ASSERT_TRUE(rest.ok());
    EXPECT_EQ(std::vector<float>(whole->begin(), whole->begin() + split * vocab), *first);
    EXPECT_EQ(std::vector<float>(whole->begin() + split * vocab, whole->end()), *rest);
    std::vector<float> last(static_cast<size_t>(vocab));
    ASSERT_TRUE(engine.ForwardInto(tokens, 0, true, absl::MakeSpan(last)).ok());
    EXPECT_EQ(last, std::vector<float>(whole->end() - vocab, whole->end()));
  }
}

TEST(EngineTest, ActiveExpertsOverride) {
  const std::vector<int32_t> tokens = {2046, 17, 401, 95, 1200, 33, 7};
  auto full = OpenEngine("tiny-v3", "q8_0");
  auto explicit_k = OpenEngine("tiny-v3", "q8_0", 2, 4);
  auto reduced = OpenEngine("tiny-v3", "q8_0", 2, 2);
  ASSERT_TRUE(full && explicit_k && reduced);
  auto a = full->Forward(tokens, 0);
  auto b = explicit_k->Forward(tokens, 0);
  auto c = reduced->Forward(tokens, 0);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_EQ(Engine::Open(FixturePath("tiny-v3", "q8_0.gguf"), 1, 64, 256, /*active_experts=*/5)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, RejectsBadInputAndKeepsCache) {
  auto engine = OpenEngine("tiny-v2", "q4_k_m");
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->Forward({2046, 17}, 0).ok());
  auto bad = engine->Forward({5, 2048, 7}, 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("2048"), absl::string_view::npos) << bad.status();
  EXPECT_EQ(engine->cached_tokens(), 2);
  EXPECT_EQ(engine->Forward({-1}, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Forward({}, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Forward({5}, 3).status().code(), absl::StatusCode::kInvalidArgument);
}

// Copies a fixture GGUF, leaving out, reshaping or retyping one tensor (a
// retyped tensor gets zero bytes of the new type's size).
std::string WriteModifiedCopy(const std::string& src, const std::string& drop,
                              const std::string& reshape, const std::string& retype,
                              GgmlType new_type) {
  auto file = GgufFile::Open(src);
  EXPECT_TRUE(file.ok()) << file.status();
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/engine_modified_", drop,
                                        reshape, retype, ".gguf");
  GgufWriter writer((*file)->version(), (*file)->alignment());
  for (const GgufKeyValue& kv : (*file)->metadata()) {
    if (kv.key != "general.alignment") writer.AddMetadata(kv.key, kv.value);
  }
  for (const GgufTensorInfo& t : (*file)->tensors()) {
    if (t.name == drop) continue;
    std::vector<int64_t> ne = t.ne;
    if (t.name == reshape) std::swap(ne[0], ne[1]);
    writer.AddTensor(t.name, t.name == retype ? new_type : t.type, ne);
  }
  EXPECT_TRUE(writer.Begin(path).ok());
  for (const GgufTensorInfo& t : (*file)->tensors()) {
    if (t.name == drop) continue;
    if (t.name == retype) {
      const int64_t bytes = RowBytes(new_type, t.ne[0]).value() * t.rows();
      const std::vector<uint8_t> zeros(static_cast<size_t>(bytes), 0);
      EXPECT_TRUE(writer.WriteTensor(t.name, zeros).ok());
      continue;
    }
    EXPECT_TRUE(writer
                    .WriteTensor(t.name, absl::MakeConstSpan((*file)->TensorData(t),
                                                             static_cast<size_t>(t.n_bytes)))
                    .ok());
  }
  EXPECT_TRUE(writer.Finish().ok());
  return path;
}

// RepackLayerWeights rewrites exactly the non-expert matrices whose type the
// ISA's kernels want in another layout (the tiny Q4_K_M files hold Q5_0
// matrices of 128 columns: kQ5_0Pairs on AVX2), the new bytes unpack back to
// the file's, and the others keep pointing into the file; the output head
// too (its Q6_K / Q8_0 rows become 16-row panels for the AVX-512 VNNI
// kernels), unless it is token_embd.
TEST(EngineTest, RepackLayerWeightsRewritesWhatTheKernelsWant) {
  for (const char* model : {"tiny-v2", "tiny-v3"}) {
    SCOPED_TRACE(model);
    auto file = GgufFile::Open(FixturePath(model, "q4_k_m.gguf"));
    ASSERT_TRUE(file.ok()) << file.status();
    auto config = Deepseek2Config::FromGguf(**file);
    ASSERT_TRUE(config.ok()) << config.status();
    auto mapped = EngineWeights::Map(**file, *config);
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    // Layouts and repacking are plain C++: every ISA's choice is checked on
    // any CPU.
    for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      SCOPED_TRACE(CpuIsaName(isa));
      EngineWeights w = *mapped;
      std::vector<std::unique_ptr<uint8_t[]>> storage;
      // No file: the mapped pages stay resident for the comparison below.
      const int64_t bytes = RepackLayerWeights(isa, /*in_place=*/false, nullptr, w, &storage);
      int64_t expected = 0, repacked_matrices = 0;
      auto check = [&](const MatmulWeight* b, const MatmulWeight* a, bool keep, int64_t unit_rows,
                       const char* what) {
        const WeightLayout want =
            keep ? WeightLayout::kGgml : PreferredLayout(b->type, b->cols, isa, unit_rows);
        EXPECT_EQ(a->layout, want) << what << " " << Traits(b->type).name;
        if (want == WeightLayout::kGgml) {
          EXPECT_EQ(a->data, b->data) << what;
          return;
        }
        ++repacked_matrices;
        const int64_t n = b->rows * b->row_bytes;
        expected += n;
        EXPECT_NE(a->data, b->data);
        std::vector<uint8_t> back(static_cast<size_t>(n));
        UnpackRowsToGgml(*a, a->data, back.data(), a->rows);
        EXPECT_EQ(0, std::memcmp(back.data(), b->data, static_cast<size_t>(n))) << what;
      };
      for (size_t il = 0; il < w.layers.size(); ++il) {
        const EngineLayerWeights& before = mapped->layers[il];
        const EngineLayerWeights& after = w.layers[il];
        const std::pair<const MatmulWeight*, const MatmulWeight*> pairs[] = {
            {&before.attn_q, &after.attn_q},
            {&before.attn_q_a, &after.attn_q_a},
            {&before.attn_q_b, &after.attn_q_b},
            {&before.attn_kv_a_mqa, &after.attn_kv_a_mqa},
            {&before.attn_k_b, &after.attn_k_b},
            {&before.attn_v_b, &after.attn_v_b},
            {&before.attn_output, &after.attn_output},
            {&before.ffn_gate, &after.ffn_gate},
            {&before.ffn_up, &after.ffn_up},
            {&before.ffn_down, &after.ffn_down},
            {&before.ffn_gate_shexp, &after.ffn_gate_shexp},
            {&before.ffn_up_shexp, &after.ffn_up_shexp},
            {&before.ffn_down_shexp, &after.ffn_down_shexp},
            {&before.ffn_down_exps, &after.ffn_down_exps},  // routed: not this function's
        };
        for (const auto& [b, a] : pairs) {
          if (b->data == nullptr) continue;
          // attn_k_b / attn_v_b are repacked head by head; the routed
          // experts are not this function's.
          const bool per_head = b == &before.attn_k_b || b == &before.attn_v_b;
          check(b, a, /*keep=*/b == &before.ffn_down_exps,
                per_head ? b->rows / config->n_heads : b->rows, "layer matrix");
        }
      }
      const bool tied = mapped->output.data == mapped->token_embd.data;
      check(&mapped->output, &w.output, tied, mapped->output.rows, "output");
      EXPECT_EQ(w.token_embd.data, mapped->token_embd.data);
      EXPECT_EQ(w.token_embd.layout, WeightLayout::kGgml);
      EXPECT_EQ(bytes, expected);
      EXPECT_EQ(static_cast<int64_t>(storage.size()), repacked_matrices);
      if (isa == CpuIsa::kScalar) {
        EXPECT_EQ(repacked_matrices, 0);
      }
      if (isa == CpuIsa::kAvx2 &&
          PreferredLayout(GgmlType::kQ5_0, 128, isa) != WeightLayout::kGgml) {
        EXPECT_GT(repacked_matrices, 0);  // the fixtures' Q5_0 attn_output, at least
      }
      if (isa == CpuIsa::kAvx512 && !tied &&
          PreferredLayout(w.output.type, w.output.cols, isa, w.output.rows) !=
              WeightLayout::kGgml) {
        EXPECT_EQ(w.output.layout, WeightLayout::kPanel16);
      }
    }
  }
}

// MoveWeightsToOwnMemory copies every streamed matrix (the routed experts
// only when asked) into one huge-page buffer with the file's bytes, leaves
// token_embd mapped, and copies nothing under MOEFLOW_HUGEPAGES=0 (the
// engine_mapped_test target runs this file so).
TEST(EngineTest, MoveWeightsToOwnMemoryCopiesTheStreamedMatrices) {
  auto file = GgufFile::Open(FixturePath("tiny-v3", "q4_k_m.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = Deepseek2Config::FromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status();
  auto mapped = EngineWeights::Map(**file, *config);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  for (const bool routed : {false, true}) {
    SCOPED_TRACE(routed ? "with routed experts" : "without routed experts");
    EngineWeights w = *mapped;
    std::vector<WeightBuffer> buffers;
    std::string note;
    auto copied = MoveWeightsToOwnMemory(**file, routed, w, &buffers, nullptr, &note);
    ASSERT_TRUE(copied.ok()) << copied.status();
    EXPECT_EQ(w.token_embd.data, mapped->token_embd.data);
    if (!HugePagesEnabled()) {
      EXPECT_EQ(*copied, 0);
      EXPECT_TRUE(buffers.empty());
      EXPECT_NE(note.find("MOEFLOW_HUGEPAGES=0"), std::string::npos) << note;
      EXPECT_EQ(w.output.data, mapped->output.data);
      continue;
    }
    EXPECT_NE(note.find("weights copied into"), std::string::npos) << note;
    int64_t expected = 0;
    auto check = [&](const MatmulWeight& before, const MatmulWeight& after, bool moved,
                     const std::string& what) {
      if (before.data == nullptr) return;
      if (!moved) {
        EXPECT_EQ(after.data, before.data) << what;
        return;
      }
      const int64_t n = before.rows * before.row_bytes;
      expected += n;
      EXPECT_NE(after.data, before.data) << what;
      // Inside the one buffer, at a 4 KiB boundary of it.
      ASSERT_EQ(buffers.size(), 1u) << what;
      EXPECT_GE(after.data, buffers[0].data()) << what;
      EXPECT_LE(after.data + n, buffers[0].data() + buffers[0].size()) << what;
      EXPECT_EQ((after.data - buffers[0].data()) % 4096, 0) << what;
      // The mapping's pages were released; reading them faults them back in.
      EXPECT_EQ(0, std::memcmp(after.data, before.data, static_cast<size_t>(n))) << what;
    };
    check(mapped->output, w.output, true, "output");
    for (size_t il = 0; il < w.layers.size(); ++il) {
      const EngineLayerWeights& b = mapped->layers[il];
      const EngineLayerWeights& a = w.layers[il];
      const std::string layer = absl::StrCat("layer ", il, " ");
      check(b.attn_q, a.attn_q, true, layer + "attn_q");
      check(b.attn_q_a, a.attn_q_a, true, layer + "attn_q_a");
      check(b.attn_q_b, a.attn_q_b, true, layer + "attn_q_b");
      check(b.attn_kv_a_mqa, a.attn_kv_a_mqa, true, layer + "attn_kv_a_mqa");
      check(b.attn_k_b, a.attn_k_b, true, layer + "attn_k_b");
      check(b.attn_v_b, a.attn_v_b, true, layer + "attn_v_b");
      check(b.attn_output, a.attn_output, true, layer + "attn_output");
      check(b.ffn_gate, a.ffn_gate, true, layer + "ffn_gate");
      check(b.ffn_up, a.ffn_up, true, layer + "ffn_up");
      check(b.ffn_down, a.ffn_down, true, layer + "ffn_down");
      check(b.ffn_gate_shexp, a.ffn_gate_shexp, true, layer + "ffn_gate_shexp");
      check(b.ffn_up_shexp, a.ffn_up_shexp, true, layer + "ffn_up_shexp");
      check(b.ffn_down_shexp, a.ffn_down_shexp, true, layer + "ffn_down_shexp");
      check(b.ffn_gate_exps, a.ffn_gate_exps, routed, layer + "ffn_gate_exps");
      check(b.ffn_up_exps, a.ffn_up_exps, routed, layer + "ffn_up_exps");
      check(b.ffn_down_exps, a.ffn_down_exps, routed, layer + "ffn_down_exps");
    }
    EXPECT_EQ(*copied, expected);
    EXPECT_GT(expected, 0);
  }
}

TEST(EngineTest, MissingMisShapedAndUnsupportedTensorsAreNamed) {
  struct Case {
    std::string drop, reshape, retype;
    std::string expect_name;
    std::string expect_text;
  };
  const std::string up = "blk.2.ffn_up_exps.weight";
  const std::string out = "blk.1.attn_output.weight";
  for (const Case& c : {Case{up, "", "", up, "missing"}, Case{"", out, "", out, "shape"},
                        Case{"", "", up, up, "tq2_0"}}) {
    const std::string path = WriteModifiedCopy(FixturePath("tiny-v3", "q8_0.gguf"), c.drop,
                                               c.reshape, c.retype, GgmlType::kTQ2_0);
    auto engine = Engine::Open(path);
    ASSERT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << c.expect_name;
    const std::string msg(engine.status().message());
    EXPECT_NE(msg.find(c.expect_name), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect_text), std::string::npos) << msg;
  }
}

// A split model (tiny-v3-split: llama-gguf-split of tiny-v3.q4_k_m.gguf),
// opened from a shard that is not the first: llama.cpp's logits on it by the
// quantized rule, and bit for bit the logits of the same model in one file.
TEST(EngineTest, SplitModelMatchesLlamaCppAndTheWholeFile) {
  auto split = Engine::Open(FixturePath("tiny-v3-split", "q4_k_m-00003-of-00004.gguf"),
                            /*n_threads=*/2, /*max_batch=*/64, /*max_context=*/256);
  ASSERT_TRUE(split.ok()) << split.status();
  auto whole = OpenEngine("tiny-v3", "q4_k_m");
  ASSERT_NE(whole, nullptr);
  int confident = 0, agree = 0;
  for (const char* seq : {"seq7", "seq64"}) {
    const Comparison cmp = CompareSequence(**split, "tiny-v3-split", "q4_k_m", seq);
    confident += cmp.confident;
    agree += cmp.confident_top1_equal;
    auto ref =
        ReadLogitsFile(FixturePath("tiny-v3-split", absl::StrCat("q4_k_m.", seq, ".logits.bin")));
    ASSERT_TRUE(ref.ok()) << ref.status();
    std::vector<int32_t> tokens(ref->tokens.begin(), ref->tokens.end());
    auto a = (*split)->Forward(tokens, 0);
    auto b = whole->Forward(tokens, 0);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->size(), b->size());
    EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * sizeof(float)), 0) << seq;
  }
  ASSERT_GT(confident, 0);
  EXPECT_GE(static_cast<double>(agree) / confident, 0.95);
}

}  // namespace
}  // namespace moeflow
