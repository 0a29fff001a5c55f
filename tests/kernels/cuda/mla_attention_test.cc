// MLA attention over the paged cache (kernels/cuda/mla_attention.h) against
// a scalar reference that follows reference.cc's absorbed AttentionBlock
// step for step (scores as double dot products rounded to float times
// kq_scale, softmax with a double sum, the context in double), over rows
// rounded to bf16 as the cache stores them. Pages are handed out in a
// shuffled order so the page table matters. Each test builds its inputs and
// the reference first (that part runs everywhere), then skips, printing why,
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

// Sequences of several lengths in shuffled pages of one pool; the query of
// each sequence and the reference context over its whole length.
struct DecodeCase {
  int page_tokens = 64, max_pages = 20;
  std::vector<int64_t> lens;
  std::vector<PagedSequence> seqs;
  std::vector<uint16_t> pool;
  std::vector<int32_t> table, seq_lens;
  std::vector<float> q, want;  // want: [n_seqs × n_heads × kv_lora]
};

DecodeCase MakeDecodeCase(const Shape& s, float kq_scale) {
  DecodeCase d;
  d.lens = {1, 63, 64, 700, 1280};
  const int64_t n_seqs = static_cast<int64_t>(d.lens.size());
  const int64_t row_dim = s.kv_lora + s.rope;
  std::vector<int32_t> free_pages(n_seqs * d.max_pages);
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), std::mt19937(1));
  d.pool.assign(free_pages.size() * d.page_tokens * row_dim, 0);
  d.seqs.resize(n_seqs);
  d.table.resize(n_seqs * d.max_pages);
  d.seq_lens.resize(n_seqs);
  for (int64_t i = 0; i < n_seqs; ++i) {
    d.seqs[i].rows = Bf16Rounded(RandomFloats(d.lens[i] * row_dim, 100 + i, -2, 2));
    d.seqs[i].pages.assign(free_pages.begin() + i * d.max_pages,
                           free_pages.begin() + (i + 1) * d.max_pages);
    std::copy(d.seqs[i].pages.begin(), d.seqs[i].pages.end(), d.table.begin() + i * d.max_pages);
    d.seq_lens[i] = static_cast<int32_t>(d.lens[i]);
    Place(d.seqs[i], row_dim, d.page_tokens, &d.pool);
  }
  d.q = RandomFloats(n_seqs * s.n_heads * row_dim, 7, -1, 1);
  for (int64_t i = 0; i < n_seqs; ++i) {
    const std::vector<float> qi(d.q.begin() + i * s.n_heads * row_dim,
                                d.q.begin() + (i + 1) * s.n_heads * row_dim);
    const std::vector<float> ctx = ReferenceContext(qi, d.seqs[i].rows, d.lens[i], s, kq_scale);
    d.want.insert(d.want.end(), ctx.begin(), ctx.end());
  }
  return d;
}

TEST_P(MlaDeviceTest, DecodeSplitKMatchesReferenceOverShuffledPages) {
  const Shape s = GetParam();
  const float kq_scale = 1.0f / std::sqrt(192.0f);
  const DecodeCase d = MakeDecodeCase(s, kq_scale);
  const int64_t n_seqs = static_cast<int64_t>(d.lens.size());
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<float> dq(d.q), dout(n_seqs * s.n_heads * s.kv_lora);
  DeviceBuffer<uint16_t> dpool(d.pool);
  DeviceBuffer<int32_t> dtable(d.table), dlens(d.seq_lens);
  for (int splits : {1, 3, MlaDecodeSplitsFor(1280)}) {
    DeviceBuffer<float> work(MlaDecodeWorkspaceFloats(n_seqs, s.n_heads, splits, s.kv_lora));
    MlaDecodeArguments a;
    a.params = {s.n_heads, s.kv_lora, s.rope, d.page_tokens, d.max_pages, kq_scale};
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
    for (size_t c = 0; c < d.want.size(); ++c) {
      // A convex combination of values in [-2, 2]: f32 softmax and sums.
      const int64_t seq = static_cast<int64_t>(c) / (s.n_heads * s.kv_lora);
      ASSERT_NEAR(got[c], d.want[c], 2e-5)
          << "splits " << splits << " seq " << seq << " (len " << d.lens[seq] << ") value "
          << c % (s.n_heads * s.kv_lora);
    }
  }
}

// The cache write stores bf16 of each row at its slot (page · page_tokens +
// offset) and leaves every other slot as it was.
TEST_P(MlaDeviceTest, CacheWriteStoresBf16RowsAtTheirSlots) {
  const Shape s = GetParam();
  const int page_tokens = 64, n_pages = 4;
  const int64_t row_dim = s.kv_lora + s.rope, n_tokens = 70;
  const std::vector<float> rows = RandomFloats(n_tokens * row_dim, 11, -3, 3);
  std::vector<int32_t> slots(n_tokens);
  std::vector<int32_t> all(n_pages * page_tokens);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), std::mt19937(2));
  std::copy(all.begin(), all.begin() + n_tokens, slots.begin());
  std::vector<uint16_t> pool(n_pages * page_tokens * row_dim);
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<uint16_t>(0x3f80 + i % 7);
  std::vector<uint16_t> want = pool;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t c = 0; c < row_dim; ++c) {
      want[slots[t] * row_dim + c] = Fp32ToBf16(rows[t * row_dim + c]);
    }
  }
  ASSERT_NE(want, pool);
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<uint16_t> dpool(pool);
  DeviceBuffer<float> drows(rows);
  DeviceBuffer<int32_t> dslots(slots);
  ASSERT_TRUE(
      RunMlaCacheWrite({drows.get(), dslots.get(), n_tokens, row_dim, dpool.get(), nullptr}).ok());
  EXPECT_EQ(dpool.Download(), want);
}

// A prompt prefilled in chunks as the gpu_worker does it: each chunk's rows
// go into the paged cache through the cache-write kernel, then the chunk's
// queries attend causally over every position so far (the earlier chunks'
// rows read back from the cache). Chunk sizes cover one token (a decode
// step), a partial tile, several tiles and a page boundary crossed.
TEST_P(MlaDeviceTest, ChunkedPrefillOverThePagedCacheMatchesReferenceCausally) {
  const Shape s = GetParam();
  const int page_tokens = 64, max_pages = 6;
  const int64_t row_dim = s.kv_lora + s.rope;
  const std::vector<int64_t> chunks = {37, 90, 1, 50, 1};
  int64_t len = 0;
  for (int64_t c : chunks) len += c;
  const float kq_scale = 0.07f;
  PagedSequence seq;
  seq.rows = Bf16Rounded(RandomFloats(len * row_dim, 3, -2, 2));
  seq.pages = {4, 1, 5, 0, 3, 2};
  std::vector<int32_t> slots(len);
  for (int64_t j = 0; j < len; ++j) {
    slots[j] = seq.pages[j / page_tokens] * page_tokens + static_cast<int32_t>(j % page_tokens);
  }
  const std::vector<float> q = RandomFloats(len * s.n_heads * row_dim, 8, -1, 1);
  std::vector<float> want;  // [len × n_heads × kv_lora]
  for (int64_t t = 0; t < len; ++t) {
    const std::vector<float> qt(q.begin() + t * s.n_heads * row_dim,
                                q.begin() + (t + 1) * s.n_heads * row_dim);
    const std::vector<float> ctx = ReferenceContext(qt, seq.rows, t + 1, s, kq_scale);
    want.insert(want.end(), ctx.begin(), ctx.end());
  }
  std::vector<uint16_t> full_pool(max_pages * page_tokens * row_dim, 0);
  Place(seq, row_dim, page_tokens, &full_pool);
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer<uint16_t> dpool(std::vector<uint16_t>(full_pool.size(), 0));
  DeviceBuffer<float> drows(std::vector<float>(seq.rows.begin(), seq.rows.end()));
  DeviceBuffer<int32_t> dslots(slots), dtable(seq.pages);
  DeviceBuffer<float> dq(q), dout(len * s.n_heads * s.kv_lora);
  int64_t start = 0;
  for (int64_t n_tokens : chunks) {
    ASSERT_TRUE(RunMlaCacheWrite({drows.get() + start * row_dim, dslots.get() + start, n_tokens,
                                  row_dim, dpool.get(), nullptr})
                    .ok());
    MlaPrefillArguments a;
    a.params = {s.n_heads, s.kv_lora, s.rope, page_tokens, max_pages, kq_scale};
    a.q = dq.get() + start * s.n_heads * row_dim;
    a.cache = dpool.get();
    a.page_table = dtable.get();
    a.start_pos = start;
    a.n_tokens = n_tokens;
    a.out = dout.get() + start * s.n_heads * s.kv_lora;
    ASSERT_TRUE(RunMlaPrefill(a).ok());
    start += n_tokens;
  }
  ASSERT_EQ(dpool.Download(), full_pool);
  const std::vector<float> got = dout.Download();
  for (size_t c = 0; c < want.size(); ++c) {
    const int64_t t = static_cast<int64_t>(c) / (s.n_heads * s.kv_lora);
    ASSERT_NEAR(got[c], want[c], 2e-5)
        << "position " << t << " value " << c % (s.n_heads * s.kv_lora);
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
