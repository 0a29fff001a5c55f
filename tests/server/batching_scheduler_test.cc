// BatchingScheduler on the real engine (the dataflow over the single-process
// topology, tiny-v3 fixture, paged KV cache): concurrent greedy outputs equal
// the same prompts run one at a time (the same scheduler with one request
// running), prefix reuse is reported (and a forced hash collision is not
// reused), admission errors and waits, pages grow on demand and an exhausted
// pool preempts without changing outputs, cancellation frees the pages,
// sampling with a seed matches too, and a lost worker (a model that fails
// UNAVAILABLE and is not ready()) restarts a prefill or ends a decode.
#include "server/batching_scheduler.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "coordinator/dataflow_batch_model.h"
#include "coordinator/local_topology.h"
#include "engine/kv_pages.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";

// The engine and its batch model, as `moeflow serve` builds them.
struct Engine {
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::unique_ptr<LocalTopology> topology;
  std::unique_ptr<DataflowBatchModel> model;
};

std::unique_ptr<Engine> OpenEngine(int64_t kv_tokens, int64_t context = 256) {
  auto e = std::make_unique<Engine>();
  auto file = GgufFile::Open(kModel);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  auto tokenizer = BpeTokenizer::FromGguf(**file);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return nullptr;
  e->tokenizer = std::move(*tokenizer);
  LocalTopologyOptions options;
  options.n_threads = 2;
  options.max_batch_tokens = 512;
  options.max_sequences = 8;
  options.kv_tokens = kv_tokens;
  options.context_tokens = context;
  auto t = LocalTopology::Open(kModel, options);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return nullptr;
  e->topology = std::move(*t);
  e->model = std::make_unique<DataflowBatchModel>(e->topology.get(), e->tokenizer.get());
  return e;
}

// One request at a time, in arrival order.
BatchingSchedulerOptions Serial() {
  BatchingSchedulerOptions options;
  options.max_running = 1;
  return options;
}

std::vector<int32_t> RandomPrompt(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(100, 2000);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& v : t) v = dist(rng);
  return t;
}

// One request's outcome, filled by the callbacks.
struct Outcome {
  std::vector<int32_t> tokens;
  GenerationSummary summary;
  absl::Notification done;
};

std::shared_ptr<GenerationRequest> MakeRequest(const std::vector<int32_t>& prompt,
                                               int64_t max_tokens, Outcome* out,
                                               float temperature = 0.0f, uint64_t seed = 0) {
  auto r = std::make_shared<GenerationRequest>();
  r->prompt = prompt;
  r->sampler.temperature = temperature;
  r->sampler.seed = seed;
  r->stop.max_tokens = max_tokens;
  r->ignore_eos = true;
  r->on_token = [out](const GeneratedToken& t) { out->tokens.push_back(t.token); };
  r->on_done = [out](const GenerationSummary& s) {
    out->summary = s;
    out->done.Notify();
  };
  return r;
}

bool WaitAll(std::vector<std::unique_ptr<Outcome>>& outs) {
  for (auto& o : outs) {
    if (!o->done.WaitForNotificationWithTimeout(absl::Seconds(60))) return false;
  }
  return true;
}

// Runs the prompts through `backend`, all submitted at once.
std::vector<std::unique_ptr<Outcome>> RunAll(GenerationBackend& backend,
                                             const std::vector<std::vector<int32_t>>& prompts,
                                             int64_t max_tokens, float temperature = 0.0f) {
  std::vector<std::unique_ptr<Outcome>> outs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    outs.push_back(std::make_unique<Outcome>());
    absl::Status s =
        backend.Submit(MakeRequest(prompts[i], max_tokens, outs.back().get(), temperature, i + 1));
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) outs.back()->done.Notify();
  }
  EXPECT_TRUE(WaitAll(outs));
  return outs;
}

TEST(BatchingSchedulerTest, ConcurrentOutputsEqualOneAtATime) {
  auto engine = OpenEngine(2048);
  ASSERT_NE(engine, nullptr);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 7; ++i) prompts.push_back(RandomPrompt(5 + 11 * i, 100 + i));
  for (float temperature : {0.0f, 0.8f}) {
    std::vector<std::unique_ptr<Outcome>> batched, serial;
    {
      ServerMetrics metrics;
      DataflowBatchModel& model = *engine->model;
      BatchingSchedulerOptions options;
      options.max_running = 4;  // some wait in the queue
      options.max_batch_tokens = 40;
      options.chunk_tokens = 16;  // prompts prefill in several chunks
      BatchingScheduler scheduler(&model, options, &metrics);
      batched = RunAll(scheduler, prompts, 10, temperature);
      // Everything ended: only cached prefix pages remain.
      EXPECT_EQ(model.kv_pages_used(), 0);
      const std::string text = metrics.RenderPrometheus();
      EXPECT_NE(text.find("moeflow_kv_pages_total 128"), std::string::npos) << text;
    }
    {
      BatchingScheduler scheduler(engine->model.get(), Serial(), nullptr);
      serial = RunAll(scheduler, prompts, 10, temperature);
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(batched[i]->summary.status.ok()) << batched[i]->summary.status;
      EXPECT_EQ(batched[i]->summary.finish_reason, "length");
      EXPECT_EQ(batched[i]->tokens.size(), 10u);
      EXPECT_EQ(batched[i]->tokens, serial[i]->tokens) << "prompt " << i << " T " << temperature;
    }
  }
}

TEST(BatchingSchedulerTest, SharedPrefixIsReportedAsCachedTokens) {
  auto engine = OpenEngine(1024);
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingScheduler scheduler(&model, BatchingSchedulerOptions{}, nullptr);
  const std::vector<int32_t> system = RandomPrompt(50, 7);
  std::vector<int32_t> a = system, b = system;
  a.push_back(1000);
  b.push_back(2000);
  b.push_back(2001);
  auto first = RunAll(scheduler, {a}, 4);
  auto second = RunAll(scheduler, {b}, 4);
  EXPECT_EQ(first[0]->summary.cached_prompt_tokens, 0);
  EXPECT_EQ(second[0]->summary.cached_prompt_tokens, 48);  // 3 blocks of 16
  // And the output is what it is without reuse.
  BatchingScheduler serial(engine->model.get(), Serial(), nullptr);
  auto again = RunAll(serial, {b}, 4);
  EXPECT_EQ(second[0]->tokens, again[0]->tokens);
}

// Every first block hashes to 1, every second block to 2, whatever its tokens.
uint64_t CollidingHash(uint64_t previous, absl::Span<const int32_t>) { return previous + 1; }

TEST(BatchingSchedulerTest, HashCollisionIsNotReused) {
  auto engine = OpenEngine(1024);
  ASSERT_NE(engine, nullptr);
  KvPagePool* pool = &engine->model->mutable_pages_for_testing();
  ASSERT_NE(pool, nullptr);
  pool->set_hash_for_testing(&CollidingHash);
  DataflowBatchModel& model = *engine->model;
  BatchingScheduler scheduler(&model, BatchingSchedulerOptions{}, nullptr);
  const std::vector<int32_t> a = RandomPrompt(40, 41), b = RandomPrompt(40, 42);
  std::vector<int32_t> a2 = a;
  a2.back() = 3;
  auto first = RunAll(scheduler, {a}, 4);
  // b's two blocks have a's hashes but other tokens: a miss, not a's KV.
  auto second = RunAll(scheduler, {b}, 4);
  // The same blocks as a's are still found.
  auto third = RunAll(scheduler, {a2}, 4);
  EXPECT_EQ(first[0]->summary.cached_prompt_tokens, 0);
  EXPECT_EQ(second[0]->summary.cached_prompt_tokens, 0);
  EXPECT_EQ(third[0]->summary.cached_prompt_tokens, 32);
  BatchingScheduler serial(engine->model.get(), Serial(), nullptr);
  auto again = RunAll(serial, {b, a2}, 4);
  EXPECT_EQ(second[0]->tokens, again[0]->tokens);
  EXPECT_EQ(third[0]->tokens, again[1]->tokens);
}

TEST(BatchingSchedulerTest, WithoutMaxTokensPagesGrowAsItDecodes) {
  auto engine = OpenEngine(1024);  // 64 pages; context 256
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingSchedulerOptions options;
  options.decode_reserve_tokens = 16;
  BatchingScheduler scheduler(&model, options, nullptr);
  Outcome o;
  std::vector<int64_t> pages_at_token;  // on the scheduler thread
  auto r = MakeRequest(RandomPrompt(20, 50), 0, &o);
  r->on_token = [&](const GeneratedToken& t) {
    o.tokens.push_back(t.token);
    pages_at_token.push_back(model.kv_pages_used());
  };
  ASSERT_TRUE(scheduler.Submit(r).ok());
  ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(o.summary.finish_reason, "length");
  ASSERT_EQ(o.tokens.size(), 236u);  // up to the context
  // 20 + 16 positions at admission (not the context's 16 pages), then one
  // page each time the positions held (20 + tokens fed) pass a page.
  EXPECT_EQ(pages_at_token[0], 3);
  for (size_t k = 0; k < pages_at_token.size(); ++k) {
    const int64_t held = 20 + static_cast<int64_t>(k);
    EXPECT_EQ(pages_at_token[k], std::max<int64_t>(3, (held + 15) / 16)) << k;
  }
  EXPECT_EQ(o.summary.preemptions, 0);
  EXPECT_EQ(model.kv_pages_used(), 0);
}

TEST(BatchingSchedulerTest, ExhaustedPoolPreemptsTheNewestAndOutputsAreUnchanged) {
  auto engine = OpenEngine(128);  // 8 pages; context 256
  ASSERT_NE(engine, nullptr);
  const std::vector<std::vector<int32_t>> prompts = {RandomPrompt(20, 60), RandomPrompt(25, 61),
                                                     RandomPrompt(30, 62)};
  for (float temperature : {0.0f, 0.8f}) {
    std::vector<std::unique_ptr<Outcome>> batched;
    std::string metrics_text;
    {
      ServerMetrics metrics;
      DataflowBatchModel& model = *engine->model;
      BatchingSchedulerOptions options;
      options.decode_reserve_tokens = 8;
      options.chunk_tokens = 16;
      BatchingScheduler scheduler(&model, options, &metrics);
      // No max_tokens: each runs until it holds the whole cache (128).
      batched = RunAll(scheduler, prompts, 0, temperature);
      EXPECT_EQ(model.kv_pages_used(), 0);
      metrics_text = metrics.RenderPrometheus();
    }
    int64_t preemptions = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const GenerationSummary& s = batched[i]->summary;
      EXPECT_TRUE(s.status.ok()) << s.status;
      EXPECT_EQ(s.finish_reason, "length");
      preemptions += s.preemptions;
      // Alone, with max_tokens set to the same limit: the same tokens.
      BatchingScheduler serial(engine->model.get(), Serial(), nullptr);
      std::vector<std::unique_ptr<Outcome>> outs;
      outs.push_back(std::make_unique<Outcome>());
      ASSERT_TRUE(serial
                      .Submit(MakeRequest(prompts[i], 128 - static_cast<int64_t>(prompts[i].size()),
                                          outs.back().get(), temperature, i + 1))
                      .ok());
      ASSERT_TRUE(WaitAll(outs));
      EXPECT_EQ(batched[i]->tokens.size(), 128 - prompts[i].size());
      EXPECT_EQ(batched[i]->tokens, outs[0]->tokens) << "prompt " << i << " T " << temperature;
    }
    EXPECT_GT(preemptions, 0);
    EXPECT_NE(metrics_text.find(absl::StrCat("moeflow_preemptions_total ", preemptions)),
              std::string::npos)
        << metrics_text;
  }
}

TEST(BatchingSchedulerTest, ConcurrentRequestsWithANewSharedPrefixComputeItOnce) {
  auto engine = OpenEngine(2048);
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingSchedulerOptions options;
  options.chunk_tokens = 16;  // the shared prefix takes several steps
  BatchingScheduler scheduler(&model, options, nullptr);
  const std::vector<int32_t> system = RandomPrompt(70, 8);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(system);
    prompts.back().push_back(500 + i);
  }
  auto outs = RunAll(scheduler, prompts, 3);
  EXPECT_EQ(outs[0]->summary.cached_prompt_tokens, 0);
  for (int i = 1; i < 4; ++i) EXPECT_EQ(outs[i]->summary.cached_prompt_tokens, 64) << i;
}

TEST(BatchingSchedulerTest, AdmissionErrorsAndWaitingForPages) {
  auto engine = OpenEngine(128);  // 8 pages of 16
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  {
    BatchingSchedulerOptions options;
    options.max_queue = 0;
    BatchingScheduler full(&model, options, nullptr);
    Outcome o;
    EXPECT_EQ(full.Submit(MakeRequest(RandomPrompt(8, 1), 4, &o)).code(),
              absl::StatusCode::kResourceExhausted);
  }
  BatchingScheduler scheduler(&model, BatchingSchedulerOptions{}, nullptr);
  Outcome never;
  // 100 + 40 positions = 9 pages > 8: never fits, 400 with the numbers.
  absl::Status too_big = scheduler.Submit(MakeRequest(RandomPrompt(100, 2), 40, &never));
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.message().find("9 pages of 16 tokens"), std::string::npos) << too_big;
  EXPECT_NE(too_big.message().find("has 8 pages (128 tokens)"), std::string::npos) << too_big;
  // Without max_tokens the prompt and one generated token must fit: 130 + 1
  // positions = 9 pages, never.
  absl::Status no_room = scheduler.Submit(MakeRequest(RandomPrompt(130, 2), 0, &never));
  EXPECT_EQ(no_room.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_room.message().find("prompt 130 + 1 to generate) = 9 pages"), std::string::npos)
      << no_room;
  Outcome empty;
  EXPECT_EQ(scheduler.Submit(MakeRequest({}, 4, &empty)).code(),
            absl::StatusCode::kInvalidArgument);
  // Two requests of 5 pages each: the second waits for the first's pages.
  Outcome first, second;
  std::atomic<int64_t> second_tokens_when_first_ended{-1};
  auto r1 = MakeRequest(RandomPrompt(60, 3), 20, &first);
  r1->on_done = [&](const GenerationSummary& s) {
    second_tokens_when_first_ended = static_cast<int64_t>(second.tokens.size());
    first.summary = s;
    first.done.Notify();
  };
  ASSERT_TRUE(scheduler.Submit(r1).ok());
  ASSERT_TRUE(scheduler.Submit(MakeRequest(RandomPrompt(60, 4), 20, &second)).ok());
  ASSERT_TRUE(first.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(second.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  for (Outcome* o : {&first, &second}) {
    EXPECT_TRUE(o->summary.status.ok());
    EXPECT_EQ(o->tokens.size(), 20u);
  }
  EXPECT_EQ(second_tokens_when_first_ended.load(), 0);
  EXPECT_EQ(model.kv_pages_used(), 0);
}

TEST(BatchingSchedulerTest, CancellationEndsTheRequestAndFreesItsPages) {
  auto engine = OpenEngine(512);
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingScheduler scheduler(&model, BatchingSchedulerOptions{}, nullptr);
  Outcome cancelled, other;
  auto request = MakeRequest(RandomPrompt(20, 5), 200, &cancelled);
  std::shared_ptr<std::atomic<bool>> flag = request->cancelled;
  // The client goes away after the third token.
  request->on_token = [&cancelled, flag](const GeneratedToken& t) {
    cancelled.tokens.push_back(t.token);
    if (cancelled.tokens.size() == 3) flag->store(true);
  };
  ASSERT_TRUE(scheduler.Submit(request).ok());
  ASSERT_TRUE(scheduler.Submit(MakeRequest(RandomPrompt(20, 6), 30, &other)).ok());
  ASSERT_TRUE(cancelled.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(other.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(cancelled.summary.finish_reason, "cancelled");
  EXPECT_EQ(cancelled.tokens.size(), 3u);
  EXPECT_EQ(other.summary.finish_reason, "length");
  EXPECT_EQ(other.tokens.size(), 30u);
  EXPECT_EQ(model.kv_pages_used(), 0);
}

TEST(BatchingSchedulerTest, QueuedRequestWhoseClientLeftEndsBeforeItsTurn) {
  auto engine = OpenEngine(512);
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingSchedulerOptions options;
  options.max_running = 1;
  BatchingScheduler scheduler(&model, options, nullptr);
  Outcome running, queued;
  std::atomic<bool> running_done_first{false};
  auto r1 = MakeRequest(RandomPrompt(10, 30), 200, &running);
  auto r2 = MakeRequest(RandomPrompt(10, 31), 10, &queued);
  std::shared_ptr<std::atomic<bool>> r2_cancelled = r2->cancelled;
  r1->on_token = [&, r2_cancelled](const GeneratedToken& t) {
    running.tokens.push_back(t.token);
    if (running.tokens.size() == 2) r2_cancelled->store(true);
  };
  r2->on_done = [&](const GenerationSummary& s) {
    running_done_first = running.done.HasBeenNotified();
    queued.summary = s;
    queued.done.Notify();
  };
  ASSERT_TRUE(scheduler.Submit(r1).ok());
  ASSERT_TRUE(scheduler.Submit(r2).ok());
  ASSERT_TRUE(queued.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(running.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(queued.summary.finish_reason, "cancelled");
  EXPECT_FALSE(running_done_first.load());
  EXPECT_EQ(running.tokens.size(), 200u);
}

TEST(BatchingSchedulerTest, ShutdownCancelsQueuedAndRunning) {
  auto engine = OpenEngine(512);
  ASSERT_NE(engine, nullptr);
  DataflowBatchModel& model = *engine->model;
  BatchingSchedulerOptions options;
  options.max_running = 1;
  auto scheduler = std::make_unique<BatchingScheduler>(&model, options, nullptr);
  std::vector<std::unique_ptr<Outcome>> outs;
  for (int i = 0; i < 3; ++i) {
    outs.push_back(std::make_unique<Outcome>());
    ASSERT_TRUE(
        scheduler->Submit(MakeRequest(RandomPrompt(10, 10 + i), 0, outs.back().get())).ok());
  }
  scheduler->Shutdown();
  EXPECT_TRUE(WaitAll(outs));
  for (auto& o : outs) EXPECT_EQ(o->summary.finish_reason, "cancelled");
  Outcome late;
  EXPECT_EQ(scheduler->Submit(MakeRequest(RandomPrompt(10, 20), 4, &late)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(model.kv_pages_used(), 0);
}

// The engine with a worker that can be lost: Forward call `fail_call`
// (1-based) fails UNAVAILABLE, as the dataflow does when a worker dies, and
// the model is not ready() until restored() (a restarted worker).
class LosingModel final : public BatchModel {
 public:
  explicit LosingModel(BatchModel* inner) : inner_(inner) {}
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t context_tokens() const override { return inner_->context_tokens(); }
  int32_t eos_id() const override { return inner_->eos_id(); }
  absl::string_view TokenBytes(int32_t t) const override { return inner_->TokenBytes(t); }
  int64_t kv_page_tokens() const override { return inner_->kv_page_tokens(); }
  int64_t kv_pages_total() const override { return inner_->kv_pages_total(); }
  int64_t kv_pages_used() const override { return inner_->kv_pages_used(); }
  int64_t kv_pages_cached() const override { return inner_->kv_pages_cached(); }
  absl::StatusOr<Started> StartSequence(absl::Span<const int32_t> prompt,
                                        int64_t reserve) override {
    return inner_->StartSequence(prompt, reserve);
  }
  absl::Status GrowSequence(int64_t s, int64_t reserve) override {
    return inner_->GrowSequence(s, reserve);
  }
  void EndSequence(int64_t s) override { inner_->EndSequence(s); }
  absl::Status Forward(absl::Span<const Entry> entries, absl::Span<float> logits) override {
    if (++calls_ == fail_call_.load()) {
      ready_.store(false);
      return absl::UnavailableError("cpu_expert_worker-0: process killed by signal 9");
    }
    if (!ready_.load()) return absl::UnavailableError("cpu_expert_worker-0: down");
    return inner_->Forward(entries, logits);
  }
  bool ready() const override { return ready_.load(); }

  void FailCall(int64_t call) { fail_call_.store(call); }
  void Restore() { ready_.store(true); }
  void SetReady(bool ready) { ready_.store(ready); }

 private:
  BatchModel* const inner_;
  int64_t calls_ = 0;  // scheduler thread
  std::atomic<int64_t> fail_call_{-1};
  std::atomic<bool> ready_{true};
};

TEST(BatchingSchedulerTest, AWorkerLostBeforeTheFirstTokenStartsOverAfterItEnds) {
  auto engine = OpenEngine(1024);
  ASSERT_NE(engine, nullptr);
  BatchingSchedulerOptions options;
  options.chunk_tokens = 16;  // a 40-token prompt prefills in three chunks
  // Each case's prompt is new to the cache (so that it prefills in full);
  // the same prompt alone afterwards (outputs do not depend on the cache).
  auto alone = [&](const std::vector<int32_t>& prompt) {
    BatchingScheduler scheduler(engine->model.get(), options, nullptr);
    return RunAll(scheduler, {prompt}, 6)[0]->tokens;
  };
  // Lost during the second prefill chunk, back 200 ms later: the request
  // waits, starts over and gives the same tokens.
  {
    const std::vector<int32_t> prompt = RandomPrompt(40, 7);
    LosingModel model(engine->model.get());
    model.FailCall(2);
    Outcome out;
    {
      BatchingScheduler scheduler(&model, options, nullptr);
      ASSERT_TRUE(scheduler.Submit(MakeRequest(prompt, 6, &out)).ok());
      absl::SleepFor(absl::Milliseconds(200));
      model.Restore();
      ASSERT_TRUE(out.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    }
    EXPECT_TRUE(out.summary.status.ok()) << out.summary.status;
    EXPECT_EQ(out.tokens, alone(prompt));
    EXPECT_EQ(out.tokens.size(), 6u);
  }
  // Lost after two tokens were sent: the request ends with the error.
  {
    const std::vector<int32_t> prompt = RandomPrompt(40, 8);
    LosingModel model(engine->model.get());
    model.FailCall(5);  // 3 prefill chunks (token 1), a decode (token 2), then this
    Outcome out;
    {
      BatchingScheduler scheduler(&model, options, nullptr);
      ASSERT_TRUE(scheduler.Submit(MakeRequest(prompt, 6, &out)).ok());
      ASSERT_TRUE(out.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    }
    EXPECT_EQ(out.summary.status.code(), absl::StatusCode::kUnavailable) << out.summary.status;
    EXPECT_EQ(out.summary.finish_reason, "error");
    const std::vector<int32_t> expected = alone(prompt);
    ASSERT_EQ(expected.size(), 6u);
    EXPECT_EQ(out.tokens, std::vector<int32_t>(expected.begin(), expected.begin() + 2));
    EXPECT_EQ(engine->model->kv_pages_used(), 0);
  }
  // Lost and never back: the prefilling request waits ready_wait_ms, then
  // ends UNAVAILABLE; so does one that arrives meanwhile.
  {
    const std::vector<int32_t> prompt = RandomPrompt(40, 9);
    LosingModel model(engine->model.get());
    model.FailCall(1);
    BatchingSchedulerOptions waiting = options;
    waiting.ready_wait_ms = 100;
    BatchingScheduler scheduler(&model, waiting, nullptr);
    Outcome first, second;
    ASSERT_TRUE(scheduler.Submit(MakeRequest(prompt, 6, &first)).ok());
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(scheduler.Submit(MakeRequest(prompt, 6, &second)).ok());
    for (Outcome* o : {&first, &second}) {
      ASSERT_TRUE(o->done.WaitForNotificationWithTimeout(absl::Seconds(60)));
      EXPECT_EQ(o->summary.status.code(), absl::StatusCode::kUnavailable) << o->summary.status;
      EXPECT_TRUE(o->tokens.empty());
    }
    EXPECT_EQ(engine->model->kv_pages_used(), 0);
  }
}

}  // namespace
}  // namespace moeflow::server
