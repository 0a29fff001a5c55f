// The engine on llama-quantize's low-bit files (tests/data/llamacpp/
// tiny-v3-imatrix, tiny-v2-imatrix: IQ1_S … IQ4_XS, Q2_K, Q3_K_M mixes made
// with an imatrix from llama-imatrix) against llama.cpp's logits on the same
// files, by the fixture rule (top-1 where llama.cpp's margin >= 0.2). The
// targets run it on the CPU's best ISA, on AVX2 and on the scalar reference
// (MOEFLOW_ISA), so every kernel of these types meets llama.cpp's output.
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/engine.h"
#include "formats/ggml_types.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "model/gguf.h"
#include "tests/engine/llamacpp_compare.h"
#include "tests/model/deepseek2/llamacpp_fixture.h"

namespace moeflow {
namespace {

using ::moeflow::fixtures::CompareSequence;
using ::moeflow::fixtures::Comparison;
using ::moeflow::fixtures::FixturePath;
using ::moeflow::fixtures::Greedy;
using ::moeflow::fixtures::OpenFixtureEngine;

struct Fixture {
  const char* model;
  const char* quant;
};
constexpr Fixture kFixtures[] = {
    {"tiny-v3-imatrix", "iq2_xxs"}, {"tiny-v3-imatrix", "iq1_s"},   {"tiny-v3-imatrix", "iq1_m"},
    {"tiny-v3-imatrix", "iq2_m"},   {"tiny-v3-imatrix", "iq3_xxs"}, {"tiny-v3-imatrix", "iq4_xs"},
    {"tiny-v3-imatrix", "q2_k"},    {"tiny-v3-imatrix", "q3_k_m"},  {"tiny-v2-imatrix", "iq2_s"},
    {"tiny-v2-imatrix", "iq3_xxs"}, {"tiny-v2-imatrix", "iq3_s"},
};

// The ggml types of a file's matrices, by name ("iq2_xxs: 24 tensors, ...").
std::map<std::string, int> TypeCounts(const std::string& path) {
  std::map<std::string, int> counts;
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return counts;
  for (const GgufTensorInfo& t : (*file)->tensors()) ++counts[std::string(Traits(t.type).name)];
  return counts;
}

TEST(EngineImatrixTest, LowBitFilesAgreeWithLlamaCpp) {
  std::set<std::string> matmul_types;
  for (const Fixture& f : kFixtures) {
    SCOPED_TRACE(absl::StrCat(f.model, ".", f.quant));
    const std::map<std::string, int> types =
        TypeCounts(FixturePath(f.model, absl::StrCat(f.quant, ".gguf")));
    std::printf("%s.%s: %s\n", f.model, f.quant,
                absl::StrJoin(types, ", ", absl::PairFormatter(" x")).c_str());
    for (const auto& [name, n] : types) matmul_types.insert(name);
    auto engine = OpenFixtureEngine(f.model, f.quant);
    ASSERT_NE(engine, nullptr);
    int confident = 0, agree = 0;
    for (const char* seq : {"seq7", "seq64"}) {
      const Comparison cmp = CompareSequence(*engine, f.model, f.quant, seq);
      EXPECT_EQ(cmp.positions, seq == std::string("seq7") ? 7 : 64);
      confident += cmp.confident;
      agree += cmp.confident_top1_equal;
    }
    ASSERT_GT(confident, 40);
    const double share = static_cast<double>(agree) / confident;
    std::printf("%s.%s on %s: top-1 agreement at margin >= 0.2: %.3f (%d/%d)\n", f.model, f.quant,
                CpuIsaName(SelectedIsa()), share, agree, confident);
    // Observed (deterministic per ISA): 1.0 on every file but iq1_m (57/58
    // avx512, 56/58 avx2 and scalar) and iq4_xs on avx2 (56/57); llama.cpp
    // against itself reaches 0.988 on Q4_K_M by this rule (README).
    EXPECT_GE(share, 0.95);
    int equal = 0, low = 0;
    Greedy(*engine, f.model, f.quant, &equal, &low);
    EXPECT_GE(equal, low);
  }
  // What the files put through the engine's kernels (and token_embd's
  // dequantization): every IQ type and the K types without a fast kernel
  // before them.
  for (const char* t : {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s",
                        "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q5_K"}) {
    EXPECT_EQ(matmul_types.count(t), 1u) << t;
  }
}

}  // namespace
}  // namespace moeflow
