#include "server/batching_scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "server/batching_running.h"

namespace moeflow::server {

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
