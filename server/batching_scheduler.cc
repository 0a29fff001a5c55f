#include "server/batching_scheduler.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::server {
namespace {

double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct BatchingScheduler::Running {
  std::shared_ptr<GenerationRequest> request;
  int64_t sequence = -1;
  int64_t pos = 0;  // positions the model holds
  int64_t n_prompt = 0;
  // The prompt, then every generated token fed to the model: what a
  // preempted request recomputes. Prefilling while pos < tokens.size().
  std::vector<int32_t> tokens;
  int64_t reserved = 0;                     // positions the sequence's pages cover
  int64_t limit = 0;                        // most positions it may hold (prompt + max_tokens)
  int32_t pending = -1;                     // sampled, not yet fed (decoding when >= 0)
  std::optional<sampling::TokenStep> step;  // the one sample-and-stop step
  GenerationSummary summary;
  double enqueued_s = 0, prefill_start_s = 0, decode_start_s = 0, last_token_s = 0;
  bool done = false;
  bool preempted = false;  // pages released; waits in preempted_
  // Times a worker was lost during its prefill (it starts over, twice at most).
  int restarts = 0;
  // When it first waited, in preempted_, for a model that was not ready (0: not waiting).
  double not_ready_since_s = 0;
};

BatchingScheduler::BatchingScheduler(BatchModel* model, BatchingSchedulerOptions options,
                                     ServerMetrics* metrics)
    : model_(model), options_(options), metrics_(metrics) {
  MOEFLOW_CHECK(options_.max_running >= 1 && options_.max_batch_tokens >= 1 &&
                options_.chunk_tokens >= 1);
  if (metrics_ != nullptr) metrics_->SetKvPages(0, 0, model_->kv_pages_total());
  thread_ = std::thread([this] { Loop(); });
}

BatchingScheduler::~BatchingScheduler() { Shutdown(); }

int64_t BatchingScheduler::MaxPositions() const {
  return std::min(model_->context_tokens(), model_->kv_pages_total() * model_->kv_page_tokens());
}

absl::Status BatchingScheduler::Submit(std::shared_ptr<GenerationRequest> request) {
  const int64_t n_prompt = static_cast<int64_t>(request->prompt.size());
  const int64_t context = model_->context_tokens();
  if (n_prompt == 0) return absl::InvalidArgumentError("the prompt has no tokens");
  if (n_prompt >= context) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", n_prompt, " tokens but the context holds ", context,
                     " (at least one position must be left to generate)"));
  }
  // A bad id would fail the whole batch it lands in, so it is refused here.
  const int64_t vocab = model_->vocab_size();
  for (size_t i = 0; i < request->prompt.size(); ++i) {
    if (request->prompt[i] < 0 || request->prompt[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token ", request->prompt[i], " at index ", i, " is outside [0, ", vocab, ")"));
    }
  }
  if (request->stop.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be >= 0, got ", request->stop.max_tokens));
  }
  if (n_prompt + request->stop.max_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", n_prompt, " tokens and max_tokens is ", request->stop.max_tokens, ": ",
        n_prompt + request->stop.max_tokens, " exceeds the context of ", context, " tokens"));
  }
  // Without max_tokens a request needs one position to generate; it ends
  // with "length" when the whole cache (or the context) is full.
  const bool has_max = request->stop.max_tokens > 0;
  const int64_t need = n_prompt + (has_max ? request->stop.max_tokens : 1);
  const int64_t page = model_->kv_page_tokens();
  const int64_t pages = (need + page - 1) / page;
  if (pages > model_->kv_pages_total()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the request needs ", need, " KV positions (prompt ", n_prompt,
        has_max ? " + max_tokens " : " + ", need - n_prompt, has_max ? "" : " to generate",
        ") = ", pages, " pages of ", page, " tokens, but the server's KV cache has ",
        model_->kv_pages_total(), " pages (", model_->kv_pages_total() * page, " tokens); ",
        has_max ? "lower max_tokens" : "shorten the prompt"));
  }
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the server is shutting down");
  if (draining_) return absl::UnavailableError(drain_reason_);
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the queue is full (", queue_.size(), " requests waiting); retry later"));
  }
  cancel_.Add(request->cancelled);
  queue_.push_back({std::move(request), NowS()});
  UpdateGauges();
  return absl::OkStatus();
}

void BatchingScheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void BatchingScheduler::StopAccepting(std::string reason) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  drain_reason_ = std::move(reason);
}

void BatchingScheduler::StartAccepting() {
  absl::MutexLock lock(&mu_);
  draining_ = false;
}

int64_t BatchingScheduler::pending() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size()) + n_running_ + n_preempted_;
}

void BatchingScheduler::UpdateGauges() {
  if (metrics_ == nullptr) return;
  metrics_->SetQueueDepth(static_cast<int64_t>(queue_.size()));
  metrics_->SetRunning(n_running_);
}

void BatchingScheduler::Finish(Running& r, absl::Status status, std::string reason) {
  r.summary.status = std::move(status);
  r.summary.finish_reason = std::move(reason);
  const double now = NowS();
  if (r.pending >= 0 || r.summary.completion_tokens > 0) {
    r.summary.decode_s = now - r.decode_start_s;
  } else if (r.prefill_start_s > 0) {
    r.summary.prefill_s = now - r.prefill_start_s;
  }
  if (r.sequence >= 0) {
    model_->EndSequence(r.sequence);
    r.sequence = -1;
  }
  if (metrics_ != nullptr && r.summary.status.ok()) {
    metrics_->RecordGeneration(r.summary.prompt_tokens, r.summary.cached_prompt_tokens,
                               r.summary.completion_tokens, r.summary.prefill_s,
                               r.summary.decode_s);
  }
  r.done = true;
  if (r.request->on_done) r.request->on_done(r.summary);
}

bool BatchingScheduler::AwaitsSharedPrefix(absl::Span<const int32_t> prompt) const {
  const int64_t page = model_->kv_page_tokens();
  const int64_t n = static_cast<int64_t>(prompt.size());
  for (const auto& r : running_) {
    const std::vector<int32_t>& other = r->tokens;
    if (r->done || r->pos >= static_cast<int64_t>(other.size())) continue;  // not prefilling
    const int64_t limit = std::min<int64_t>(n - 1, static_cast<int64_t>(other.size()));
    int64_t common = 0;
    while (common < limit && prompt[common] == other[common]) ++common;
    // Whole blocks the head could reuse once `r` has computed them.
    const int64_t shared = common / page * page;
    if (shared > 0 && r->pos < shared) return true;
  }
  return false;
}

absl::StatusOr<bool> BatchingScheduler::StartRunning(Running& r) {
  const int64_t n = static_cast<int64_t>(r.tokens.size());
  const int64_t reserve = std::min(r.limit, n + options_.decode_reserve_tokens);
  absl::StatusOr<BatchModel::Started> started = model_->StartSequence(r.tokens, reserve);
  if (absl::IsResourceExhausted(started.status())) return false;
  if (!started.ok()) return started.status();
  const int64_t page = model_->kv_page_tokens();
  r.sequence = started->sequence;
  r.pos = started->cached_tokens;
  r.reserved = (reserve + page - 1) / page * page;
  r.preempted = false;
  return true;
}

void BatchingScheduler::Preempt(Running& r) {
  model_->EndSequence(r.sequence);
  r.sequence = -1;
  r.pos = 0;
  r.reserved = 0;
  r.preempted = true;
  r.summary.preemptions++;
  if (metrics_ != nullptr) metrics_->RecordPreemption();
}

void BatchingScheduler::GrowOrPreempt() {
  const int64_t page = model_->kv_page_tokens();
  const int64_t context = model_->context_tokens();
  bool any_preempted = false;
  for (auto& rp : running_) {
    Running& r = *rp;
    // Decoding requests whose next position is past their pages.
    if (r.done || r.preempted || r.pending < 0 || r.pos < static_cast<int64_t>(r.tokens.size()) ||
        r.pos < r.reserved) {
      continue;
    }
    while (true) {
      const absl::Status grown =
          model_->GrowSequence(r.sequence, std::min(context, r.reserved + page));
      if (grown.ok()) {
        r.reserved += page;
        break;
      }
      if (!absl::IsResourceExhausted(grown)) {
        Finish(r, grown, "error");
        break;
      }
      // The pool is exhausted: the newest running request gives its pages
      // back (possibly `r` itself).
      Running* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        if (!(*it)->done && !(*it)->preempted) {
          victim = it->get();
          break;
        }
      }
      MOEFLOW_CHECK(victim != nullptr);
      const auto active = std::count_if(
          running_.begin(), running_.end(),
          [](const std::unique_ptr<Running>& x) { return !x->done && !x->preempted; });
      if (victim == &r && active == 1) {
        // A lone request's limit fits the whole cache, so this cannot happen.
        Finish(r, absl::InternalError("the KV cache has no page for a lone request"), "error");
        break;
      }
      Preempt(*victim);
      any_preempted = true;
      if (victim == &r) break;
    }
  }
  if (any_preempted) MovePreempted();
}

absl::Status BatchingScheduler::NotReadyError() const {
  return absl::UnavailableError(absl::StrCat("the model did not serve within ",
                                             options_.ready_wait_ms, " ms (a worker is down)"));
}

void BatchingScheduler::FailStep(absl::Span<Running* const> who, const absl::Status& status) {
  bool any_restarted = false;
  for (Running* r : who) {
    if (r->done) continue;
    // A worker lost while this request prefilled: nothing reached its
    // client yet, so it waits for the restart and starts over (twice at
    // most). One that has sent tokens ends with the error.
    if (absl::IsUnavailable(status) && r->summary.completion_tokens == 0 && r->pending < 0 &&
        r->restarts < 2) {
      ++r->restarts;
      model_->EndSequence(r->sequence);
      r->sequence = -1;
      r->pos = 0;
      r->reserved = 0;
      r->preempted = true;
      r->summary.cached_prompt_tokens = 0;
      any_restarted = true;
      continue;
    }
    Finish(*r, status, "error");
  }
  if (any_restarted) MovePreempted();
}

void BatchingScheduler::MovePreempted() {
  for (auto& rp : running_) {
    if (rp->preempted) preempted_.push_back(std::move(rp));
  }
  running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
  // Back in arrival order: the oldest request is re-admitted first.
  std::stable_sort(preempted_.begin(), preempted_.end(),
                   [](const std::unique_ptr<Running>& a, const std::unique_ptr<Running>& b) {
                     return a->enqueued_s < b->enqueued_s;
                   });
}

bool BatchingScheduler::Admit() {
  const bool more = AdmitFromQueue();
  absl::MutexLock lock(&mu_);
  n_running_ = static_cast<int64_t>(running_.size());
  n_preempted_ = static_cast<int64_t>(preempted_.size());
  UpdateGauges();
  return more;
}

bool BatchingScheduler::AdmitFromQueue() {
  // Requests whose client left while they waited end now, wherever they are
  // in the queue (they would otherwise hold a queue slot until their turn).
  std::vector<Queued> gone;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->request->cancelled->load()) {
        gone.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    if (!gone.empty()) UpdateGauges();
  }
  for (Queued& q : gone) {
    GenerationSummary summary;
    summary.finish_reason = "cancelled";
    summary.prompt_tokens = static_cast<int64_t>(q.request->prompt.size());
    summary.queue_s = NowS() - q.enqueued_s;
    if (q.request->on_done) q.request->on_done(summary);
  }
  // Preempted requests come back first, oldest first.
  while (!preempted_.empty()) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return false;
    }
    if (static_cast<int64_t>(running_.size()) >= options_.max_running) return true;
    std::unique_ptr<Running> r = std::move(preempted_.front());
    preempted_.pop_front();
    if (r->request->cancelled->load()) {
      r->summary.flushed_text = r->step->Flush();
      Finish(*r, absl::OkStatus(), "cancelled");
      continue;
    }
    if (!model_->ready()) {
      // A worker restarting: wait for it, at most ready_wait_ms.
      if (r->not_ready_since_s == 0) r->not_ready_since_s = NowS();
      if (NowS() - r->not_ready_since_s < options_.ready_wait_ms / 1000.0) {
        preempted_.push_front(std::move(r));
        return true;
      }
      Finish(*r, NotReadyError(), "error");
      continue;
    }
    r->not_ready_since_s = 0;
    absl::StatusOr<bool> started = StartRunning(*r);
    if (!started.ok()) {
      Finish(*r, started.status(), "error");
      continue;
    }
    if (!*started) {  // waits for pages; nobody overtakes it
      preempted_.push_front(std::move(r));
      return true;
    }
    // Started over after a lost worker: what it reuses now is its cache.
    if (r->pending < 0) r->summary.cached_prompt_tokens = r->pos;
    running_.push_back(std::move(r));
    absl::MutexLock lock(&mu_);
    n_running_ = static_cast<int64_t>(running_.size());
    n_preempted_ = static_cast<int64_t>(preempted_.size());
    UpdateGauges();
  }
  while (true) {
    Queued head;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return false;
      if (queue_.empty() || static_cast<int64_t>(running_.size()) >= options_.max_running) {
        return true;
      }
      head = queue_.front();
    }
    GenerationRequest& request = *head.request;
    auto r = std::make_unique<Running>();
    r->request = head.request;
    r->enqueued_s = head.enqueued_s;
    r->n_prompt = static_cast<int64_t>(request.prompt.size());
    r->summary.prompt_tokens = r->n_prompt;
    auto pop = [&] {
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      ++n_running_;  // pending() counts it until Admit recounts
      UpdateGauges();
    };
    if (request.cancelled->load()) {
      pop();
      Finish(*r, absl::OkStatus(), "cancelled");
      continue;
    }
    if (!model_->ready()) {
      // A worker restarting: the head waits for it, at most ready_wait_ms.
      if (NowS() - head.enqueued_s < options_.ready_wait_ms / 1000.0) return true;
      pop();
      r->summary.queue_s = NowS() - head.enqueued_s;
      Finish(*r, NotReadyError(), "error");
      continue;
    }
    if (AwaitsSharedPrefix(request.prompt)) return true;  // the head waits a step
    sampling::StopOptions stop = request.stop;
    const int64_t room = MaxPositions() - r->n_prompt;  // >= 1 (Submit)
    if (stop.max_tokens == 0 || stop.max_tokens > room) stop.max_tokens = room;
    r->limit = r->n_prompt + stop.max_tokens;
    r->tokens = request.prompt;
    absl::StatusOr<bool> started = StartRunning(*r);
    if (started.ok() && !*started) return true;  // the head waits
    pop();
    r->summary.queue_s = NowS() - head.enqueued_s;
    if (!started.ok()) {
      Finish(*r, started.status(), "error");
      continue;
    }
    r->summary.cached_prompt_tokens = r->pos;

    sampling::TokenStepOptions step_options;
    step_options.sampler = request.sampler;
    step_options.stop = stop;
    step_options.eos_id = model_->eos_id();
    step_options.ignore_eos = request.ignore_eos;
    step_options.top_logprobs = request.top_logprobs;
    absl::StatusOr<sampling::TokenStep> step =
        sampling::TokenStep::Create(step_options, request.prompt);
    if (!step.ok()) {
      Finish(*r, step.status(), "error");
      continue;
    }
    r->step.emplace(std::move(*step));
    r->prefill_start_s = NowS();
    running_.push_back(std::move(r));
    absl::MutexLock lock(&mu_);
    n_running_ = static_cast<int64_t>(running_.size());
    n_preempted_ = static_cast<int64_t>(preempted_.size());
    UpdateGauges();
  }
}

void BatchingScheduler::Step() {
  // Cancelled requests end before the batch is built.
  for (auto& r : running_) {
    if (r->request->cancelled->load()) {
      if (r->step) r->summary.flushed_text = r->step->Flush();
      Finish(*r, absl::OkStatus(), "cancelled");
    }
  }
  GrowOrPreempt();
  std::vector<BatchModel::Entry> entries;
  std::vector<Running*> who;
  std::vector<bool> is_decode;
  int64_t budget = options_.max_batch_tokens;
  int64_t n_decode = 0, n_prefill = 0;
  for (auto& r : running_) {
    if (r->done || r->pending < 0 || r->pos < static_cast<int64_t>(r->tokens.size())) continue;
    entries.push_back({r->sequence, absl::MakeConstSpan(&r->pending, 1), r->pos});
    who.push_back(r.get());
    is_decode.push_back(true);
    --budget;
    ++n_decode;
  }
  for (auto& r : running_) {
    const int64_t n_tokens = static_cast<int64_t>(r->tokens.size());
    if (r->done || r->pos >= n_tokens || budget <= 0) continue;
    const int64_t n = std::min({options_.chunk_tokens, n_tokens - r->pos, budget});
    entries.push_back({r->sequence,
                       absl::MakeConstSpan(r->tokens).subspan(static_cast<size_t>(r->pos),
                                                              static_cast<size_t>(n)),
                       r->pos});
    who.push_back(r.get());
    is_decode.push_back(false);
    budget -= n;
    n_prefill += n;
  }
  if (!entries.empty()) {
    const int64_t vocab = model_->vocab_size();
    logits_.resize(entries.size() * static_cast<size_t>(vocab));
    const double t0 = NowS();
    absl::Status status = model_->Forward(entries, absl::MakeSpan(logits_));
    const double t1 = NowS();
    if (!status.ok()) {
      FailStep(who, status);
    } else {
      for (size_t e = 0; e < entries.size(); ++e) {
        Running& r = *who[e];
        r.pos += static_cast<int64_t>(entries[e].tokens.size());
        if (is_decode[e]) r.tokens.push_back(r.pending);
        if (r.pos < static_cast<int64_t>(r.tokens.size())) continue;  // more to prefill
        // A preempted request has recomputed its KV: its pending token (sampled
        // before the preemption) is fed next step, nothing is sampled now.
        if (!is_decode[e] && r.pending >= 0) continue;
        if (r.pending < 0) {
          r.decode_start_s = t1;
          r.summary.prefill_s = t1 - r.prefill_start_s;
        }
        const absl::Span<const float> row = absl::MakeConstSpan(logits_).subspan(
            e * static_cast<size_t>(vocab), static_cast<size_t>(vocab));
        absl::StatusOr<sampling::TokenStepResult> next =
            r.step->Next(row, [this](int32_t t) { return model_->TokenBytes(t); });
        if (!next.ok()) {
          Finish(r, next.status(), "error");
          continue;
        }
        GeneratedToken out;
        out.token = next->token;
        out.logprob = next->logprob;
        out.top_logprobs = std::move(next->top_logprobs);
        out.text = std::move(next->text);
        r.summary.completion_tokens++;
        const double now = NowS();
        if (metrics_ != nullptr) {
          if (r.summary.completion_tokens == 1) {
            metrics_->ObserveTimeToFirstToken(now - r.enqueued_s);
          } else {
            metrics_->ObserveInterTokenLatency(now - r.last_token_s);
          }
        }
        r.last_token_s = now;
        r.pending = next->token;
        if (r.request->on_token) r.request->on_token(out);
        if (next->finished()) {
          r.summary.matched_stop_token = next->matched_stop_token;
          r.summary.matched_stop_string = next->matched_stop_string;
          Finish(r, absl::OkStatus(), std::string(sampling::FinishReasonName(next->finish_reason)));
        }
      }
    }
    window_prefill_ += n_prefill;
    window_decode_ += n_decode;
    if (window_start_s_ == 0) window_start_s_ = t0;
    if (metrics_ != nullptr && t1 - window_start_s_ >= 1.0) {
      const double dt = t1 - window_start_s_;
      metrics_->SetBatchThroughput(window_prefill_ / dt, window_decode_ / dt);
      window_start_s_ = t1;
      window_prefill_ = window_decode_ = 0;
    }
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const std::unique_ptr<Running>& r) { return r->done; }),
                 running_.end());
  if (metrics_ != nullptr) {
    metrics_->SetKvPages(model_->kv_pages_used(), model_->kv_pages_cached(),
                         model_->kv_pages_total());
  }
  absl::MutexLock lock(&mu_);
  n_running_ = static_cast<int64_t>(running_.size());
  n_preempted_ = static_cast<int64_t>(preempted_.size());
  UpdateGauges();
}

void BatchingScheduler::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (running_.empty() && preempted_.empty()) {
        // Idle: wait for work. (With running requests the loop never blocks.)
        mu_.Await(absl::Condition(
            +[](BatchingScheduler* s)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return s->stop_ || !s->queue_.empty(); },
            this));
      }
    }
    const bool more = Admit();
    if (!more) break;
    if (running_.empty()) {
      // The head is waiting for pages while nothing runs: it can never be
      // admitted (only prefix pages could be missing, and those are
      // evictable), so this does not happen; avoid spinning anyway.
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(10));
      continue;
    }
    Step();
  }
  // Shutdown: cancel what runs and what waits.
  for (auto& r : running_) {
    if (!r->done) {
      if (r->step) r->summary.flushed_text = r->step->Flush();
      Finish(*r, absl::OkStatus(), "cancelled");
    }
  }
  running_.clear();
  for (auto& r : preempted_) {
    r->summary.flushed_text = r->step->Flush();
    Finish(*r, absl::OkStatus(), "cancelled");
  }
  preempted_.clear();
  std::deque<Queued> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(queue_);
    n_running_ = 0;
    n_preempted_ = 0;
    UpdateGauges();
  }
  for (Queued& q : left) {
    GenerationSummary summary;
    summary.finish_reason = "cancelled";
    summary.prompt_tokens = static_cast<int64_t>(q.request->prompt.size());
    if (q.request->on_done) q.request->on_done(summary);
  }
}

}  // namespace moeflow::server
