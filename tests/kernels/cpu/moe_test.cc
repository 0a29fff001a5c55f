// kernels/cpu/moe: MoeForward against the formula evaluated pair by pair
// (token, slot) with MatmulQuantized — bit-identical for every ISA this CPU
// runs, thread count, batch size (decode and prefill) and mix of weight
// types — and the SIMD operator against the scalar-reference one within the
// formats' tolerance.
#include "kernels/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/thread_pool.h"
#include "formats/ggml_types.h"

namespace moeflow {
namespace {

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    x = dist(rng);
    if (x == 0.f) x = 0.25f * scale;
  }
  return v;
}

struct Matrix {
  std::vector<uint8_t> bytes;
  MatmulWeight w;
};

Matrix RandomMatrix(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  const std::vector<float> v = RandomFloats(rows * cols, seed, 0.05f);
  const int64_t row_bytes = RowBytes(type, cols).value();
  m.bytes.resize(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(Quantize(type, v.data() + r * cols, m.bytes.data() + r * row_bytes, cols).ok());
  }
  m.w = MatmulWeight{type, m.bytes.data(), cols, rows, row_bytes};
  return m;
}

struct Layer {
  Matrix gate, up, down;
  MoeExperts experts;
};

Layer RandomLayer(GgmlType gate_type, GgmlType up_type, GgmlType down_type, int64_t n_experts,
                  int64_t hidden, int64_t ff, uint32_t seed) {
  Layer l;
  l.gate = RandomMatrix(gate_type, n_experts * ff, hidden, seed);
  l.up = RandomMatrix(up_type, n_experts * ff, hidden, seed + 1);
  l.down = RandomMatrix(down_type, n_experts * hidden, ff, seed + 2);
  l.experts = MoeExperts{l.gate.w, l.up.w, l.down.w, n_experts, ff, hidden};
  return l;
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// The formula, one (token, slot) pair at a time, each matmul on one token.
std::vector<float> PairByPair(const MoeExperts& e, const std::vector<float>& x, int64_t n,
                              const std::vector<int32_t>& ids, const std::vector<float>& weights,
                              int64_t k, CpuIsa isa) {
  const int64_t hidden = e.hidden, ff = e.ff;
  std::vector<float> out(static_cast<size_t>(n * hidden), 0.f);
  std::vector<uint8_t> act_gate(static_cast<size_t>(ActivationRowBytes(e.gate.type, hidden)));
  std::vector<uint8_t> act_up(static_cast<size_t>(ActivationRowBytes(e.up.type, hidden)));
  std::vector<uint8_t> act_down(static_cast<size_t>(ActivationRowBytes(e.down.type, ff)));
  std::vector<float> g(static_cast<size_t>(ff)), u(static_cast<size_t>(ff)),
      y(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < n; ++t) {
    QuantizeActivations(e.gate.type, x.data() + t * hidden, 1, hidden, hidden, act_gate.data());
    QuantizeActivations(e.up.type, x.data() + t * hidden, 1, hidden, hidden, act_up.data());
    for (int64_t j = 0; j < k; ++j) {
      const int64_t ex = ids[static_cast<size_t>(t * k + j)];
      MatmulQuantized(e.gate.Slice(ex * ff, ff), act_gate.data(), 1, g.data(), ff, isa, nullptr);
      MatmulQuantized(e.up.Slice(ex * ff, ff), act_up.data(), 1, u.data(), ff, isa, nullptr);
      for (int64_t i = 0; i < ff; ++i) g[i] = Silu(g[i]) * u[i];
      QuantizeActivations(e.down.type, g.data(), 1, ff, ff, act_down.data());
      MatmulQuantized(e.down.Slice(ex * hidden, hidden), act_down.data(), 1, y.data(), hidden, isa,
                      nullptr);
      const float w = weights[static_cast<size_t>(t * k + j)];
      for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] += y[i] * w;
    }
  }
  return out;
}

// Distinct random experts per token (a router's top-k), random weights.
void RandomRoutes(int64_t n, int64_t k, int64_t n_experts, uint32_t seed, std::vector<int32_t>* ids,
                  std::vector<float>* weights) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> wd(0.05f, 1.f);
  ids->clear();
  weights->clear();
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int32_t> pool(static_cast<size_t>(n_experts));
    for (int64_t e = 0; e < n_experts; ++e) pool[e] = static_cast<int32_t>(e);
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t j = 0; j < k; ++j) {
      ids->push_back(pool[static_cast<size_t>(j)]);
      weights->push_back(wd(rng));
    }
  }
}

std::vector<CpuIsa> Isas() {
  std::vector<CpuIsa> out = {CpuIsa::kScalar};
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512NoVnni, CpuIsa::kAvx512}) {
    if (CpuSupportsIsa(isa)) out.push_back(isa);
  }
  return out;
}

struct Config {
  GgmlType gate, up, down;
  int64_t n_experts, hidden, ff, k;
};

// Q4_K_M's expert types (Q4_K gate/up, Q5_0 down), an all-Q8_0 layer, and
// gate/up of different activation types (Q8_K and Q8_0); ff = 320 is not a
// multiple of the operator's work units (32 / 64 rows).
const Config kConfigs[] = {
    {GgmlType::kQ4_K, GgmlType::kQ4_K, GgmlType::kQ5_0, 8, 512, 320, 3},
    {GgmlType::kQ8_0, GgmlType::kQ8_0, GgmlType::kQ8_0, 6, 256, 192, 2},
    {GgmlType::kQ4_K, GgmlType::kQ8_0, GgmlType::kQ6_K, 5, 256, 256, 2},
};

TEST(MoeTest, MatchesPairByPairBitForBit) {
  uint32_t seed = 1;
  for (const Config& c : kConfigs) {
    SCOPED_TRACE(Traits(c.gate).name);
    const Layer l = RandomLayer(c.gate, c.up, c.down, c.n_experts, c.hidden, c.ff, seed);
    for (int64_t n : {1, 2, 5, 37}) {
      const std::vector<float> x = RandomFloats(n * c.hidden, seed + 10, 1.f);
      std::vector<int32_t> ids;
      std::vector<float> weights;
      RandomRoutes(n, c.k, c.n_experts, seed + 20, &ids, &weights);
      ++seed;
      for (CpuIsa isa : Isas()) {
        const std::vector<float> ref = PairByPair(l.experts, x, n, ids, weights, c.k, isa);
        for (int threads : {1, 2, 3}) {
          ThreadPool pool(threads);
          MoeScratch scratch;
          std::vector<float> out(ref.size(), -7.f);
          MoeForward(l.experts, x.data(), n, ids.data(), weights.data(), c.k, out.data(), scratch,
                     isa, threads == 1 ? nullptr : &pool);
          EXPECT_EQ(out, ref) << CpuIsaName(isa) << " tokens " << n << " threads " << threads;
        }
      }
    }
  }
}

// The selected (SIMD) ISA against the scalar reference: the matmuls differ
// only in float summation order, which can flip the rounding of a quantized
// activation; the outputs agree to a small fraction of their norm.
TEST(MoeTest, SimdMatchesScalarReference) {
  const Config& c = kConfigs[0];
  const Layer l = RandomLayer(c.gate, c.up, c.down, c.n_experts, c.hidden, c.ff, 50);
  const int64_t n = 19;
  const std::vector<float> x = RandomFloats(n * c.hidden, 51, 1.f);
  std::vector<int32_t> ids;
  std::vector<float> weights;
  RandomRoutes(n, c.k, c.n_experts, 52, &ids, &weights);
  MoeScratch scratch;
  std::vector<float> ref(static_cast<size_t>(n * c.hidden)), out(ref.size());
  MoeForward(l.experts, x.data(), n, ids.data(), weights.data(), c.k, ref.data(), scratch,
             CpuIsa::kScalar, nullptr);
  ThreadPool pool(2);
  MoeForward(l.experts, x.data(), n, ids.data(), weights.data(), c.k, out.data(), scratch,
             SelectedIsa(), &pool);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += (out[i] - ref[i]) * static_cast<double>(out[i] - ref[i]);
    norm += ref[i] * static_cast<double>(ref[i]);
  }
  ASSERT_GT(norm, 0.0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-3) << CpuIsaName(SelectedIsa());
}

// Once reserved for the largest batch, calls allocate nothing more.
TEST(MoeTest, ScratchGrowsOnlyForLargerBatches) {
  const Config& c = kConfigs[1];
  const Layer l = RandomLayer(c.gate, c.up, c.down, c.n_experts, c.hidden, c.ff, 60);
  MoeScratch scratch;
  scratch.Reserve(l.experts, 16, c.k, 2);
  const int64_t reserved = scratch.bytes();
  ASSERT_GT(reserved, 0);
  ThreadPool pool(2);
  for (int64_t n : {16, 1, 9}) {
    const std::vector<float> x = RandomFloats(n * c.hidden, 61, 1.f);
    std::vector<int32_t> ids;
    std::vector<float> weights;
    RandomRoutes(n, c.k, c.n_experts, 62, &ids, &weights);
    std::vector<float> out(static_cast<size_t>(n * c.hidden));
    MoeForward(l.experts, x.data(), n, ids.data(), weights.data(), c.k, out.data(), scratch,
               SelectedIsa(), &pool);
    EXPECT_EQ(scratch.bytes(), reserved) << n;
  }
  scratch.Reserve(l.experts, 17, c.k, 2);
  EXPECT_GT(scratch.bytes(), reserved);
}

}  // namespace
}  // namespace moeflow
