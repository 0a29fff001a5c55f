// The batch model over the single-process topology (coordinator/
// dataflow_batch_model.h over local_topology.h): each sequence's logits in a
// mixed batch (prefill chunks + decode tokens of others) against the same
// sequence run alone; prefix reuse; eviction; growth; errors.
#include "coordinator/dataflow_batch_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/local_topology.h"
#include "gtest/gtest.h"
#include "model/model_generator.h"
#include "tests/model/deepseek2/llamacpp_fixture.h"

namespace moeflow {
namespace {

using ::moeflow::fixtures::FixturePath;

// The engine and its batch model, as the scheduler has them.
class Paged {
 public:
  static std::unique_ptr<Paged> Open(const std::string& path, int64_t pool_tokens,
                                     int64_t page_tokens = 16, int n_threads = 2) {
    LocalTopologyOptions options;
    options.n_threads = n_threads;
    options.max_batch_tokens = 64;
    options.max_sequences = 8;
    options.kv_tokens = pool_tokens;
    options.context_tokens = 256;
    options.kv_page_tokens = page_tokens;
    auto t = LocalTopology::Open(path, options);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    auto p = std::make_unique<Paged>();
    p->topology = std::move(*t);
    p->model = std::make_unique<DataflowBatchModel>(p->topology.get(), nullptr);
    return p;
  }
  const Deepseek2Config& config() const { return topology->config(); }
  DataflowBatchModel* operator->() { return model.get(); }

  std::unique_ptr<LocalTopology> topology;
  std::unique_ptr<DataflowBatchModel> model;
};

using Entry = server::BatchModel::Entry;

absl::Status Forward(DataflowBatchModel& m, std::vector<Entry> entries, absl::Span<float> logits) {
  return m.Forward(entries, logits);
}

std::string TinyGeneratedModel() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/batch_tiny.q8_0.gguf");
  ModelGeneratorOptions options;
  options.preset = "tiny";
  options.type = "q8_0";
  options.seed = 3;
  options.out_path = path;
  options.force = true;
  auto model = GenerateModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return path;
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& v : t) v = dist(rng);
  return t;
}

// One sequence's schedule: its tokens fed in chunks of these sizes (prefill
// chunks, then 1-token decode steps), one chunk per step from `first_step`.
struct Plan {
  std::vector<int32_t> tokens;
  std::vector<int64_t> chunks;
  int64_t first_step = 0;
};

// Last-position logits of every chunk of every plan, [plan][chunk][vocab].
using ChunkLogits = std::vector<std::vector<std::vector<float>>>;

// All plans interleaved: each step's batch holds the chunk of every plan
// that has one at that step.
ChunkLogits RunBatched(Paged& paged, const std::vector<Plan>& plans) {
  DataflowBatchModel& engine = *paged.model;
  const int64_t vocab = paged.config().vocab_size;
  ChunkLogits out(plans.size());
  std::vector<int64_t> ids(plans.size()), pos(plans.size(), 0);
  for (size_t p = 0; p < plans.size(); ++p) {
    auto start =
        engine.StartSequence(plans[p].tokens, static_cast<int64_t>(plans[p].tokens.size()));
    EXPECT_TRUE(start.ok()) << start.status();
    if (!start.ok()) return out;
    EXPECT_EQ(start->cached_tokens, 0);
    ids[p] = start->sequence;
  }
  for (int64_t step = 0;; ++step) {
    std::vector<Entry> entries;
    std::vector<size_t> who;
    for (size_t p = 0; p < plans.size(); ++p) {
      const int64_t c = step - plans[p].first_step;
      if (c < 0 || c >= static_cast<int64_t>(plans[p].chunks.size())) continue;
      const int64_t n = plans[p].chunks[static_cast<size_t>(c)];
      entries.push_back({ids[p],
                         absl::MakeConstSpan(plans[p].tokens)
                             .subspan(static_cast<size_t>(pos[p]), static_cast<size_t>(n)),
                         pos[p]});
      who.push_back(p);
      pos[p] += n;
    }
    if (entries.empty()) {
      bool more = false;
      for (size_t p = 0; p < plans.size(); ++p) more |= step < plans[p].first_step;
      if (!more) break;
      continue;
    }
    std::vector<float> logits(entries.size() * static_cast<size_t>(vocab));
    absl::Status s = engine.Forward(entries, absl::MakeSpan(logits));
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return out;
    for (size_t e = 0; e < entries.size(); ++e) {
      out[who[e]].emplace_back(logits.begin() + e * vocab, logits.begin() + (e + 1) * vocab);
    }
  }
  for (int64_t id : ids) engine.EndSequence(id);
  return out;
}

// max |a - b| / max |b| over every chunk.
double MaxRelativeDiff(const std::vector<std::vector<float>>& a,
                       const std::vector<std::vector<float>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double max_diff = 0, max_ref = 0;
  for (size_t c = 0; c < std::min(a.size(), b.size()); ++c) {
    EXPECT_EQ(a[c].size(), b[c].size());
    for (size_t i = 0; i < std::min(a[c].size(), b[c].size()); ++i) {
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[c][i]) - b[c][i]));
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[c][i])));
    }
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

std::vector<Plan> MixedPlans(int64_t vocab) {
  std::vector<Plan> plans(4);
  // A: long prompt in three chunks, then decodes while others join.
  plans[0] = {RandomTokens(45, vocab, 1), {20, 20, 1, 1, 1, 1, 1}, 0};
  // B: joins at step 1 (beside A's second prefill chunk).
  plans[1] = {RandomTokens(30, vocab, 2), {9, 13, 1, 1, 1, 1, 1, 1, 1}, 1};
  // C: a one-chunk prefill beside decodes.
  plans[2] = {RandomTokens(21, vocab, 3), {17, 1, 1, 1, 1}, 3};
  // D: short prompt, only decodes afterwards.
  plans[3] = {RandomTokens(9, vocab, 4), {3, 1, 1, 1, 1, 1, 1}, 2};
  return plans;
}

TEST(DataflowBatchModelTest, MixedBatchEqualsEachSequenceAlone) {
  std::vector<std::string> paths = {FixturePath("tiny-v2", "f32.gguf"),
                                    FixturePath("tiny-v3", "f32.gguf"),
                                    FixturePath("tiny-v3", "q8_0.gguf"),
                                    FixturePath("tiny-v3", "q4_k_m.gguf"), TinyGeneratedModel()};
  for (const std::string& path : paths) {
    auto engine = Paged::Open(path, 1024);
    // Alone runs in another engine, so that no block the batch published is reused.
    auto alone_engine = Paged::Open(path, 1024);
    ASSERT_TRUE(engine != nullptr && alone_engine != nullptr) << path;
    const std::vector<Plan> plans = MixedPlans(engine->config().vocab_size);
    const ChunkLogits batched = RunBatched(*engine, plans);
    for (size_t p = 0; p < plans.size(); ++p) {
      Plan alone_plan = plans[p];
      alone_plan.first_step = 0;
      const ChunkLogits alone = RunBatched(*alone_engine, {alone_plan});
      ASSERT_EQ(batched[p].size(), plans[p].chunks.size());
      const double batch_vs_alone = MaxRelativeDiff(batched[p], alone[0]);
      std::printf("%s seq %zu: batch vs alone %.3g\n", path.c_str(), p, batch_vs_alone);
      // Every matmul kernel computes an output row from its own activation
      // row only (per-row activation quantization, the same dot order for
      // any batch size), and attention is per sequence: bit-identical too.
      EXPECT_EQ(batched[p], alone[0])
          << path << " seq " << p << ", max rel diff " << batch_vs_alone;
    }
    EXPECT_EQ((*engine)->kv_pages_used(), 0);
  }
}

TEST(DataflowBatchModelTest, SharedPrefixIsReusedAndGivesTheSameLogits) {
  auto engine = Paged::Open(FixturePath("tiny-v3", "q8_0.gguf"), 512, 16);
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> system = RandomTokens(40, vocab, 9);
  std::vector<int32_t> a = system, b = system;
  const std::vector<int32_t> a_tail = RandomTokens(7, vocab, 10);
  const std::vector<int32_t> b_tail = RandomTokens(5, vocab, 11);
  a.insert(a.end(), a_tail.begin(), a_tail.end());
  b.insert(b.end(), b_tail.begin(), b_tail.end());

  auto sa = (*engine)->StartSequence(a, 64);
  ASSERT_TRUE(sa.ok()) << sa.status();
  EXPECT_EQ(sa->cached_tokens, 0);
  std::vector<float> la(static_cast<size_t>(vocab)), lb(static_cast<size_t>(vocab));
  ASSERT_TRUE(Forward(*engine->model, {{sa->sequence, a, 0}}, absl::MakeSpan(la)).ok());
  // Two full blocks of the shared 40 tokens are published; b reuses them.
  auto sb = (*engine)->StartSequence(b, 64);
  ASSERT_TRUE(sb.ok()) << sb.status();
  EXPECT_EQ(sb->cached_tokens, 32);
  EXPECT_EQ((*engine)->sequence_tokens(sb->sequence), 32);
  const int64_t used_with_sharing = (*engine)->kv_pages_used();
  EXPECT_EQ(used_with_sharing, 4 + 4 - 2);
  ASSERT_TRUE(Forward(*engine->model, {{sb->sequence, absl::MakeConstSpan(b).subspan(32), 32}},
                      absl::MakeSpan(lb))
                  .ok());
  // The same split computed without reuse, in an engine of its own.
  auto fresh = Paged::Open(FixturePath("tiny-v3", "q8_0.gguf"), 512, 16);
  ASSERT_NE(fresh, nullptr);
  std::vector<float> ref(static_cast<size_t>(vocab));
  auto sf = (*fresh)->StartSequence(b, 64);
  ASSERT_TRUE(sf.ok()) << sf.status();
  ASSERT_TRUE(Forward(*fresh->model, {{sf->sequence, absl::MakeConstSpan(b).subspan(0, 32), 0}},
                      absl::MakeSpan(ref))
                  .ok());
  ASSERT_TRUE(Forward(*fresh->model, {{sf->sequence, absl::MakeConstSpan(b).subspan(32), 32}},
                      absl::MakeSpan(ref))
                  .ok());
  EXPECT_EQ(lb, ref);

  // A prompt equal to a cached one still recomputes its last block.
  (*engine)->EndSequence(sa->sequence);
  auto again = (*engine)->StartSequence(absl::MakeConstSpan(a).subspan(0, 32), 40);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->cached_tokens, 16);
  (*engine)->EndSequence(again->sequence);
  (*engine)->EndSequence(sb->sequence);
  EXPECT_EQ((*engine)->kv_pages_used(), 0);
  EXPECT_GT((*engine)->kv_pages_cached(), 0);
}

TEST(DataflowBatchModelTest, AdmissionEvictionAndErrors) {
  // 8 pages of 16 tokens.
  auto engine = Paged::Open(FixturePath("tiny-v3", "q8_0.gguf"), 128, 16);
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> p = RandomTokens(40, vocab, 5);
  std::vector<float> logits(static_cast<size_t>(vocab));

  // More than the whole cache: InvalidArgument with the numbers.
  auto too_big = (*engine)->StartSequence(p, 129);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find("129"), std::string::npos) << too_big.status();
  EXPECT_EQ((*engine)->StartSequence({}, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->StartSequence(p, 39).status().code(), absl::StatusCode::kInvalidArgument);

  auto s1 = (*engine)->StartSequence(p, 80);  // 5 pages
  ASSERT_TRUE(s1.ok());
  // 4 more pages are not there now: ResourceExhausted, nothing taken.
  auto wait = (*engine)->StartSequence(RandomTokens(20, vocab, 6), 64);
  EXPECT_EQ(wait.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*engine)->kv_pages_used(), 5);

  // Bad batches change nothing.
  EXPECT_EQ(Forward(*engine->model, {{s1->sequence, p, 3}}, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Forward(*engine->model, {{s1->sequence + 100, p, 0}}, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> two(2 * static_cast<size_t>(vocab));
  EXPECT_EQ(
      Forward(*engine->model, {{s1->sequence, p, 0}, {s1->sequence, p, 0}}, absl::MakeSpan(two))
          .code(),
      absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(vocab)};
  EXPECT_EQ(Forward(*engine->model, {{s1->sequence, bad, 0}}, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->sequence_tokens(s1->sequence), 0);
  const std::vector<int32_t> long_prompt = RandomTokens(81, vocab, 7);
  EXPECT_EQ(
      Forward(*engine->model, {{s1->sequence, long_prompt, 0}}, absl::MakeSpan(logits)).code(),
      absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(Forward(*engine->model, {{s1->sequence, p, 0}}, absl::MakeSpan(logits)).ok());
  (*engine)->EndSequence(s1->sequence);
  // Two published blocks stay cached; the rest is free.
  EXPECT_EQ((*engine)->kv_pages_cached(), 2);
  EXPECT_EQ(
      ((*engine)->kv_pages_total() - (*engine)->kv_pages_used() - (*engine)->kv_pages_cached()), 6);

  // A sequence that needs every page evicts the cached blocks...
  auto all = (*engine)->StartSequence(RandomTokens(20, vocab, 8), 128);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ((*engine)->kv_pages_cached(), 0);
  (*engine)->EndSequence(all->sequence);
  // ...so the old prefix is not found any more.
  auto after = (*engine)->StartSequence(p, 48);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->cached_tokens, 0);
}

TEST(DataflowBatchModelTest, ReserveSequenceGrowsThePageTableOnDemand) {
  // 8 pages of 16 tokens.
  auto engine = Paged::Open(FixturePath("tiny-v3", "q8_0.gguf"), 128, 16);
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> p = RandomTokens(48, vocab, 9);
  const std::vector<int32_t> next = RandomTokens(4, vocab, 10);
  std::vector<float> grown_logits(static_cast<size_t>(vocab)), whole_logits(grown_logits.size());

  auto s = (*engine)->StartSequence(p, 48);  // 3 pages, exactly the prompt
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Forward(*engine->model, {{s->sequence, p, 0}}, absl::MakeSpan(grown_logits)).ok());
  // Position 48 is past the pages: refused until the table grows.
  EXPECT_EQ(Forward(*engine->model, {{s->sequence, next, 48}}, absl::MakeSpan(grown_logits)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*engine)->GrowSequence(s->sequence, 20).ok());  // already covered: no-op
  EXPECT_EQ((*engine)->kv_pages_used(), 3);
  ASSERT_TRUE((*engine)->GrowSequence(s->sequence, 52).ok());
  EXPECT_EQ((*engine)->kv_pages_used(), 4);
  ASSERT_TRUE(
      Forward(*engine->model, {{s->sequence, next, 48}}, absl::MakeSpan(grown_logits)).ok());

  // Errors change nothing.
  EXPECT_EQ((*engine)->GrowSequence(s->sequence + 100, 64).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*engine)->GrowSequence(s->sequence, 129).code(), absl::StatusCode::kInvalidArgument);
  auto other = (*engine)->StartSequence(RandomTokens(20, vocab, 11), 64);  // the other 4 pages
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ((*engine)->GrowSequence(s->sequence, 65).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*engine)->kv_pages_used(), 8);
  (*engine)->EndSequence(other->sequence);
  (*engine)->EndSequence(s->sequence);

  // The grown sequence's logits equal those of one reserved whole at start
  // (no prefix reuse: a fresh engine).
  auto fresh = Paged::Open(FixturePath("tiny-v3", "q8_0.gguf"), 128, 16);
  ASSERT_NE(fresh, nullptr);
  auto w = (*fresh)->StartSequence(p, 52);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(Forward(*fresh->model, {{w->sequence, p, 0}}, absl::MakeSpan(whole_logits)).ok());
  ASSERT_TRUE(Forward(*fresh->model, {{w->sequence, next, 48}}, absl::MakeSpan(whole_logits)).ok());
  EXPECT_EQ(grown_logits, whole_logits);
}

}  // namespace
}  // namespace moeflow
