// MLA attention over the paged cache (kernels/cuda/mla_attention.h) against
// a scalar reference that follows reference.cc's absorbed AttentionBlock
// step for step (scores as double dot products rounded to float times
// kq_scale, softmax with a double sum, the context in double), over rows
// rounded to bf16 as the cache stores them. Pages are handed out in a
// shuffled order so the page table matters. Device tests skip, printing why,
// without a CUDA device; the argument checks always run.
#include "kernels/cuda/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quants.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

struct Shape {
  int n_heads, kv_lora, rope;
};

// ctx[h] for one query `q` ([n_heads × row_dim]) over rows[0..n_seen).
std::vector<float> ReferenceContext(const std::vector<float>& q, const std::vector<float>& rows,
                                    int64_t n_seen, const Shape& s, float kq_scale) {
  const int64_t row_dim = s.kv_lora + s.rope;
  std::vector<float> ctx(static_cast<size_t>(s.n_heads * s.kv_lora));
  std::vector<float> scores(static_cast<size_t>(n_seen));
  for (int h = 0; h < s.n_heads; ++h) {
    const float* qh = q.data() + h * row_dim;
    for (int64_t j = 0; j < n_seen; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < row_dim; ++c)
        dot += static_cast<double>(qh[c]) * rows[j * row_dim + c];
      scores[j] = static_cast<float>(dot) * kq_scale;
    }
    const float max = *std::max_element(scores.begin(), scores.end());
    double sum = 0;
    for (float& v : scores) {
      v = std::exp(v - max);
      sum += v;
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (float& v : scores) v *= inv;
    for (int64_t c = 0; c < s.kv_lora; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < n_seen; ++j)
        acc += static_cast<double>(scores[j]) * rows[j * row_dim + c];
      ctx[h * s.kv_lora + c] = static_cast<float>(acc);
    }
  }
  return ctx;
}

// A sequence's rows (bf16-rounded floats) placed in shuffled pages of a pool.
struct PagedSequence {
  std::vector<float> rows;     // [len × row_dim], as the reference sees them
  std::vector<int32_t> pages;  // page table row
};

void Place(const PagedSequence& seq, int64_t row_dim, int page_tokens,
           std::vector<uint16_t>* pool) {
  const int64_t len = static_cast<int64_t>(seq.rows.size()) / row_dim;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t slot =
        static_cast<int64_t>(seq.pages[j / page_tokens]) * page_tokens + j % page_tokens;
    for (int64_t c = 0; c < row_dim; ++c) {
      (*pool)[slot * row_dim + c] = Fp32ToBf16(seq.rows[j * row_dim + c]);
    }
  }
}

std::vector<float> Bf16Rounded(std::vector<float> v) {
  for (float& x : v) x = Bf16ToFp32(Fp32ToBf16(x));
  return v;
}

TEST(MlaAttentionTest, ArgumentChecksNameTheProblem) {
  MlaDecodeArguments d;
  d.params = {16, 100, 64, 64, 4, 0.1f};
  d.n_seqs = 1;
  absl::Status s = CanImplementMlaDecode(d);
  EXPECT_NE(s.message().find("kv_lora = 100 must be a multiple of 32 in [32, 512]"),
            std::string::npos)
      << s;
  d.params.kv_lora = 512;
  d.n_splits = 17;
  s = CanImplementMlaDecode(d);
  EXPECT_NE(s.message().find("n_splits = 17 is outside [1, 16]"), std::string::npos) << s;
  MlaPrefillArguments p;
  p.params = {16, 512, 64, 64, 4, 0.1f};
  p.start_pos = 200;
  p.n_tokens = 57;
  s = CanImplementMlaPrefill(p);
  EXPECT_NE(s.message().find("positions up to 257 exceed the page table's 256"), std::string::npos)
      << s;
  EXPECT_EQ(MlaDecodeSplitsFor(1), 1);
  EXPECT_EQ(MlaDecodeSplitsFor(5000), 10);
  EXPECT_EQ(MlaDecodeSplitsFor(1 << 20), 16);
}

class MlaDeviceTest : public ::testing::TestWithParam<Shape> {};

TEST_P(MlaDeviceTest, DecodeMatchesReferenceOverShuffledPages) {
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  const Shape s = GetParam();
  const int page_tokens = 64, max_pages = 20;
  const int64_t row_dim = s.kv_lora + s.rope;
  const std::vector<int64_t> lens = {1, 63, 64, 700, 1280};
  const int64_t n_seqs = static_cast<int64_t>(lens.size());
  const float kq_scale = 1.0f / std::sqrt(192.0f);
  std::vector<int32_t> free_pages(n_seqs * max_pages);
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), std::mt19937(1));
  std::vector<uint16_t> pool(free_pages.size() * page_tokens * row_dim, 0);
  std::vector<PagedSequence> seqs(n_seqs);
  std::vector<int32_t> table(n_seqs * max_pages), seq_lens(n_seqs);
  for (int64_t i = 0; i < n_seqs; ++i) {
    seqs[i].rows = Bf16Rounded(RandomFloats(lens[i] * row_dim, 100 + i, -2, 2));
    seqs[i].pages.assign(free_pages.begin() + i * max_pages,
                         free_pages.begin() + (i + 1) * max_pages);
    std::copy(seqs[i].pages.begin(), seqs[i].pages.end(), table.begin() + i * max_pages);
    seq_lens[i] = static_cast<int32_t>(lens[i]);
    Place(seqs[i], row_dim, page_tokens, &pool);
  }
  const std::vector<float> q = RandomFloats(n_seqs * s.n_heads * row_dim, 7, -1, 1);
  DeviceBuffer<float> dq(q), dout(n_seqs * s.n_heads * s.kv_lora);
  DeviceBuffer<uint16_t> dpool(pool);
  DeviceBuffer<int32_t> dtable(table), dlens(seq_lens);
  for (int splits : {1, 3, MlaDecodeSplitsFor(1280)}) {
    DeviceBuffer<float> work(MlaDecodeWorkspaceFloats(n_seqs, s.n_heads, splits, s.kv_lora));
    MlaDecodeArguments a;
    a.params = {s.n_heads, s.kv_lora, s.rope, page_tokens, max_pages, kq_scale};
    a.q = dq.get();
    a.cache = dpool.get();
    a.page_table = dtable.get();
    a.seq_lens = dlens.get();
    a.out = dout.get();
    a.n_seqs = n_seqs;
    a.n_splits = splits;
    a.workspace = work.get();
    ASSERT_TRUE(RunMlaDecode(a).ok());
    const std::vector<float> got = dout.Download();
    for (int64_t i = 0; i < n_seqs; ++i) {
      const std::vector<float> qi(q.begin() + i * s.n_heads * row_dim,
                                  q.begin() + (i + 1) * s.n_heads * row_dim);
      const std::vector<float> want = ReferenceContext(qi, seqs[i].rows, lens[i], s, kq_scale);
      for (size_t c = 0; c < want.size(); ++c) {
        // A convex combination of values in [-2, 2]: f32 softmax and sums.
        ASSERT_NEAR(got[i * s.n_heads * s.kv_lora + c], want[c], 2e-5)
            << "splits " << splits << " seq " << i << " (len " << lens[i] << ") value " << c;
      }
    }
  }
}

TEST_P(MlaDeviceTest, PrefillChunkMatchesReferenceCausally) {
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  const Shape s = GetParam();
  const int page_tokens = 64, max_pages = 6;
  const int64_t row_dim = s.kv_lora + s.rope;
  const int64_t start_pos = 37, n_tokens = 90, len = start_pos + n_tokens;
  const float kq_scale = 0.07f;
  PagedSequence seq;
  seq.rows = Bf16Rounded(RandomFloats(len * row_dim, 3, -2, 2));
  seq.pages = {4, 1, 5, 0, 3, 2};
  std::vector<uint16_t> pool(max_pages * page_tokens * row_dim, 0);
  // The chunk's own rows go in through the cache-write kernel, the earlier
  // ones directly.
  PagedSequence prefix = seq;
  prefix.rows.resize(start_pos * row_dim);
  Place(prefix, row_dim, page_tokens, &pool);
  DeviceBuffer<uint16_t> dpool(pool);
  const std::vector<float> chunk_rows(seq.rows.begin() + start_pos * row_dim, seq.rows.end());
  std::vector<int32_t> slots(n_tokens);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t j = start_pos + t;
    slots[t] = seq.pages[j / page_tokens] * page_tokens + static_cast<int32_t>(j % page_tokens);
  }
  DeviceBuffer<float> drows(chunk_rows);
  DeviceBuffer<int32_t> dslots(slots), dtable(seq.pages);
  ASSERT_TRUE(
      RunMlaCacheWrite({drows.get(), dslots.get(), n_tokens, row_dim, dpool.get(), nullptr}).ok());
  Place(seq, row_dim, page_tokens, &pool);
  ASSERT_EQ(dpool.Download(), pool);  // the cache write stores bf16 of each row

  const std::vector<float> q = RandomFloats(n_tokens * s.n_heads * row_dim, 8, -1, 1);
  DeviceBuffer<float> dq(q), dout(n_tokens * s.n_heads * s.kv_lora);
  MlaPrefillArguments a;
  a.params = {s.n_heads, s.kv_lora, s.rope, page_tokens, max_pages, kq_scale};
  a.q = dq.get();
  a.cache = dpool.get();
  a.page_table = dtable.get();
  a.start_pos = start_pos;
  a.n_tokens = n_tokens;
  a.out = dout.get();
  ASSERT_TRUE(RunMlaPrefill(a).ok());
  const std::vector<float> got = dout.Download();
  for (int64_t t = 0; t < n_tokens; ++t) {
    const std::vector<float> qt(q.begin() + t * s.n_heads * row_dim,
                                q.begin() + (t + 1) * s.n_heads * row_dim);
    const std::vector<float> want = ReferenceContext(qt, seq.rows, start_pos + t + 1, s, kq_scale);
    for (size_t c = 0; c < want.size(); ++c) {
      ASSERT_NEAR(got[t * s.n_heads * s.kv_lora + c], want[c], 2e-5)
          << "token " << t << " (position " << start_pos + t << ") value " << c;
    }
  }
}

// The tiny fixtures' shape and DeepSeek-V3's (per card of 8 heads).
INSTANTIATE_TEST_SUITE_P(Shapes, MlaDeviceTest,
                         ::testing::Values(Shape{4, 128, 32}, Shape{8, 512, 64}),
                         [](const auto& info) {
                           return "h" + std::to_string(info.param.n_heads) + "_kv" +
                                  std::to_string(info.param.kv_lora) + "_rope" +
                                  std::to_string(info.param.rope);
                         });

}  // namespace
}  // namespace moeflow::cuda
