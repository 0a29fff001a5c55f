// The admission half of BatchingScheduler (batching_scheduler.h): the queue
// head's admission, KV pages and preemption, and requests that start over
// after a lost worker.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "server/batching_running.h"
#include "server/batching_scheduler.h"

namespace moeflow::server {

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

}  // namespace moeflow::server
