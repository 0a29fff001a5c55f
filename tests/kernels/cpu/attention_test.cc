// MlaAttention: every variant this CPU runs against a float64 evaluation of
// the same formula, within a bound derived from float32 summation; the
// AVX-512 variant against the scalar reference; and a head's result
// independent of the group it is computed in.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"

namespace moeflow {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon() / 2;  // unit roundoff

struct Case {
  int64_t n_heads, row_dim, v_dim, n_rows;
};

struct Inputs {
  std::vector<float> q, storage;
  std::vector<const float*> rows;
};

// Random queries and rows (never zero); rows live in shuffled places of one
// buffer, as pages of a paged cache do.
Inputs MakeInputs(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  Inputs in;
  in.q.resize(static_cast<size_t>(c.n_heads * c.row_dim));
  for (float& v : in.q) v = dist(rng) * 2.f;
  in.storage.resize(static_cast<size_t>(c.n_rows * c.row_dim));
  for (float& v : in.storage) v = dist(rng);
  std::vector<int64_t> slot(static_cast<size_t>(c.n_rows));
  for (int64_t j = 0; j < c.n_rows; ++j) slot[static_cast<size_t>(j)] = j;
  std::shuffle(slot.begin(), slot.end(), rng);
  for (int64_t j = 0; j < c.n_rows; ++j) {
    in.rows.push_back(in.storage.data() + slot[static_cast<size_t>(j)] * c.row_dim);
  }
  return in;
}

std::vector<float> RunAttention(const Case& c, const Inputs& in, float scale, CpuIsa isa) {
  MlaAttentionShape shape{c.n_heads, c.row_dim, c.v_dim, scale};
  std::vector<float> scores(static_cast<size_t>(c.n_heads * c.n_rows), -7.f);
  std::vector<float> out(static_cast<size_t>(c.n_heads * c.v_dim), -7.f);
  MlaAttention(shape, in.q.data(), c.row_dim, in.rows.data(), c.n_rows, scores.data(), out.data(),
               c.v_dim, isa);
  return out;
}

// Checks `out` against float64 math, with the bound of a float32
// evaluation: each score is off by ≤ γ(row_dim)·Σ|q·k|·scale (any summation
// order), which moves each probability by a relative ≤ 2·max score error
// (+ exp and the normalisation, a few ε); the context sum adds
// γ(n_rows)·Σ p|v|. Doubled for slack; the bound is still far below the
// size of the outputs, so a wrong index or a dropped row fails it.
void ExpectNearFloat64(const Case& c, const Inputs& in, float scale, const std::vector<float>& out,
                       const char* what) {
  for (int64_t h = 0; h < c.n_heads; ++h) {
    const float* qh = in.q.data() + h * c.row_dim;
    std::vector<double> s(static_cast<size_t>(c.n_rows));
    double max_abs_dot = 0, max_s = -1e300;
    for (int64_t j = 0; j < c.n_rows; ++j) {
      double d = 0, a = 0;
      for (int64_t i = 0; i < c.row_dim; ++i) {
        d += static_cast<double>(qh[i]) * in.rows[static_cast<size_t>(j)][i];
        a += std::fabs(static_cast<double>(qh[i]) * in.rows[static_cast<size_t>(j)][i]);
      }
      s[static_cast<size_t>(j)] = d * scale;
      max_abs_dot = std::max(max_abs_dot, a * scale);
      max_s = std::max(max_s, d * scale);
    }
    double sum = 0;
    for (double& v : s) {
      v = std::exp(v - max_s);
      sum += v;
    }
    const double score_err = c.row_dim * kEps * max_abs_dot / (1 - c.row_dim * kEps);
    const double p_rel = 2 * score_err + 8 * kEps;
    for (int64_t col = 0; col < c.v_dim; ++col) {
      double o = 0, abs_o = 0;
      for (int64_t j = 0; j < c.n_rows; ++j) {
        const double p = s[static_cast<size_t>(j)] / sum;
        const double v = in.rows[static_cast<size_t>(j)][col];
        o += p * v;
        abs_o += p * std::fabs(v);
      }
      const double tol = 2 * (p_rel + (c.n_rows + 1) * kEps) * abs_o;
      ASSERT_NEAR(out[static_cast<size_t>(h * c.v_dim + col)], o, tol)
          << what << " head " << h << " col " << col << " rows " << c.n_rows;
    }
  }
}

std::vector<CpuIsa> IsasToTest() {
  std::vector<CpuIsa> isas;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512NoVnni}) {
    if (CpuSupportsIsa(isa)) isas.push_back(isa);
  }
  return isas;
}

const Case kCases[] = {
    {1, 16, 16, 1},   {4, 576, 512, 1}, {4, 576, 512, 7}, {16, 576, 512, 37},
    {5, 64, 48, 130}, {3, 48, 32, 301}, {2, 20, 12, 9},   {4, 576, 512, 260},
};

TEST(MlaAttentionTest, EveryIsaMatchesFloat64WithinFloat32Bound) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    const Inputs in = MakeInputs(c, seed++);
    const float scale = 1.f / std::sqrt(static_cast<float>(c.row_dim) * 0.25f);
    for (CpuIsa isa : IsasToTest()) {
      ExpectNearFloat64(c, in, scale, RunAttention(c, in, scale, isa), CpuIsaName(isa));
    }
  }
}

void ExpectAgreesWithScalarReference(CpuIsa isa) {
  uint32_t seed = 100;
  for (const Case& c : kCases) {
    const Inputs in = MakeInputs(c, seed++);
    const float scale = 0.1f;
    const std::vector<float> ref = RunAttention(c, in, scale, CpuIsa::kScalar);
    const std::vector<float> fast = RunAttention(c, in, scale, isa);
    // Two float32 evaluations, each within the bound above of the exact
    // value; the inputs here keep that well under 1e-4 of the output range.
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_NEAR(fast[i], ref[i], 1e-4f) << CpuIsaName(isa) << " " << i;
    bool any_nonzero = false;
    for (float v : ref) any_nonzero |= v != 0.f;
    EXPECT_TRUE(any_nonzero);
  }
}

TEST(MlaAttentionTest, Avx512AgreesWithScalarReference) {
  if (!CpuSupportsIsa(CpuIsa::kAvx512NoVnni)) GTEST_SKIP() << "no AVX-512 on this CPU";
  ExpectAgreesWithScalarReference(CpuIsa::kAvx512NoVnni);
}

TEST(MlaAttentionTest, Avx2AgreesWithScalarReference) {
  if (!CpuSupportsIsa(CpuIsa::kAvx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  ExpectAgreesWithScalarReference(CpuIsa::kAvx2);
}

TEST(MlaAttentionTest, HeadResultDoesNotDependOnItsGroup) {
  const Case c{7, 576, 512, 23};
  const Inputs in = MakeInputs(c, 7);
  for (CpuIsa isa : IsasToTest()) {
    const std::vector<float> all = RunAttention(c, in, 0.05f, isa);
    for (int64_t h = 0; h < c.n_heads; ++h) {
      // Head h alone, and head h first in a group of the heads from h on.
      for (int64_t group : {int64_t{1}, c.n_heads - h}) {
        Case one = c;
        one.n_heads = group;
        Inputs sub = in;
        sub.q.assign(in.q.begin() + h * c.row_dim, in.q.begin() + (h + group) * c.row_dim);
        const std::vector<float> out = RunAttention(one, sub, 0.05f, isa);
        for (int64_t col = 0; col < c.v_dim; ++col) {
          ASSERT_EQ(out[static_cast<size_t>(col)], all[static_cast<size_t>(h * c.v_dim + col)])
              << CpuIsaName(isa) << " head " << h << " group " << group << " col " << col;
        }
      }
    }
  }
}

// MlaAttentionTokens (prefill: a block of consecutive tokens, every head,
// rows in blocks) gives each (token, head) the bits MlaAttention gives that
// token alone: whatever the first token's context, across row-block
// boundaries, on every ISA this CPU runs.
TEST(MlaAttentionTest, TokenBlocksEqualTokensAloneBitForBit) {
  std::vector<CpuIsa> isas = {CpuIsa::kScalar};
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (CpuSupportsIsa(isa)) isas.push_back(isa);
  }
  const int64_t H = 5, row_dim = 96, v_dim = 64;
  for (const int64_t first_seen : {1, 7, 30, 33, 70}) {
    for (const int64_t n_tok : {2, 3, 9, 40}) {
      const int64_t n_rows = first_seen + n_tok - 1;
      const Case c{H * n_tok, row_dim, v_dim, n_rows};
      const Inputs in = MakeInputs(c, static_cast<uint32_t>(first_seen * 100 + n_tok));
      for (CpuIsa isa : isas) {
        SCOPED_TRACE(std::string(CpuIsaName(isa)) + " first_seen " + std::to_string(first_seen) +
                     " n_tok " + std::to_string(n_tok));
        MlaTokensArgs a;
        a.shape = MlaAttentionShape{H, row_dim, v_dim, 0.125f};
        a.q = in.q.data();
        a.q_stride = row_dim;
        a.n_tok = n_tok;
        a.rows = in.rows.data();
        a.first_seen = first_seen;
        std::vector<float> scores(static_cast<size_t>(n_tok * H * n_rows), -7.f);
        std::vector<float> out(static_cast<size_t>(n_tok * H * v_dim), -7.f);
        a.scores = scores.data();
        a.out = out.data();
        a.out_stride = v_dim;
        MlaAttentionTokens(a, isa);
        for (int64_t i = 0; i < n_tok; ++i) {
          std::vector<float> s1(static_cast<size_t>(H * n_rows)),
              o1(static_cast<size_t>(H * v_dim));
          MlaAttention(a.shape, in.q.data() + i * H * row_dim, row_dim, in.rows.data(),
                       first_seen + i, s1.data(), o1.data(), v_dim, isa);
          EXPECT_EQ(std::memcmp(o1.data(), out.data() + i * H * v_dim, o1.size() * sizeof(float)),
                    0)
              << "token " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace moeflow

namespace moeflow {
namespace {

// The SIMD softmax (vector exp, float lanes) against SoftmaxInPlace (expf,
// double sum): relative error within a few float roundings per value, every
// tail length, and values far below the maximum going to 0 as expf's do
// (below e^-87) or staying close.
void ExpectSoftmaxNearReference(void (*softmax)(float*, int64_t)) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.f, 4.f);
  for (int64_t n : {1, 2, 7, 8, 15, 16, 17, 33, 100, 4097}) {
    std::vector<float> s(static_cast<size_t>(n));
    for (float& v : s) v = dist(rng);
    if (n > 2) s[1] = s[0] - 90.f;  // e^-90: 0 in both (expf flushes near there too)
    std::vector<float> ref = s;
    SoftmaxInPlace(ref.data(), n);
    softmax(s.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const size_t k = static_cast<size_t>(i);
      EXPECT_NEAR(s[k], ref[k], 1e-6f * ref[k] + 1e-37f) << "n " << n << " i " << i;
    }
  }
}

TEST(MlaSoftmaxTest, Avx512NearReference) {
  if (!CpuSupportsIsa(CpuIsa::kAvx512NoVnni)) GTEST_SKIP() << "no AVX-512 on this CPU";
  ExpectSoftmaxNearReference(internal::MlaSoftmaxAvx512);
}

TEST(MlaSoftmaxTest, Avx2NearReference) {
  if (!CpuSupportsIsa(CpuIsa::kAvx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  ExpectSoftmaxNearReference(internal::MlaSoftmaxAvx2);
}

}  // namespace
}  // namespace moeflow
