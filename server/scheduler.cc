#include "server/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow::server {
namespace {

double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

float LogSoftmaxAt(absl::Span<const float> logits, int32_t token, int32_t top_n,
                   std::vector<std::pair<int32_t, float>>* top) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  double sum = 0;
  for (float l : logits) {
    if (std::isfinite(l)) sum += std::exp(static_cast<double>(l - max_logit));
  }
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  if (top != nullptr) {
    top->clear();
    const int32_t n = std::min<int32_t>(top_n, static_cast<int32_t>(logits.size()));
    std::vector<int32_t> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    for (int32_t i = 0; i < n; ++i) top->emplace_back(ids[i], logits[ids[i]] - log_z);
  }
  return logits[token] - log_z;
}

SerialScheduler::SerialScheduler(SequenceModel* model, SerialSchedulerOptions options,
                                 ServerMetrics* metrics)
    : model_(model), options_(options), metrics_(metrics) {
  logits_.resize(static_cast<size_t>(model_->vocab_size()));
  thread_ = std::thread([this] { Loop(); });
}

SerialScheduler::~SerialScheduler() { Shutdown(); }

absl::Status SerialScheduler::Submit(std::shared_ptr<GenerationRequest> request) {
  const int64_t n_prompt = static_cast<int64_t>(request->prompt.size());
  const int64_t context = model_->context_tokens();
  if (n_prompt == 0) return absl::InvalidArgumentError("the prompt has no tokens");
  if (n_prompt >= context) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", n_prompt, " tokens but the context holds ", context,
                     " (at least one position must be left to generate)"));
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
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError(drain_reason_);
  if (stop_) return absl::UnavailableError("the server is shutting down");
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the queue is full (", queue_.size(), " requests waiting); retry later"));
  }
  cancel_.Add(request->cancelled);
  queue_.push_back({std::move(request), NowS()});
  UpdateGauges();
  return absl::OkStatus();
}

void SerialScheduler::StopAccepting(std::string reason) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  drain_reason_ = std::move(reason);
}

void SerialScheduler::StartAccepting() {
  absl::MutexLock lock(&mu_);
  draining_ = false;
}

int64_t SerialScheduler::pending() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size()) + (running_ ? 1 : 0);
}

void SerialScheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void SerialScheduler::UpdateGauges() {
  if (metrics_ == nullptr) return;
  metrics_->SetQueueDepth(static_cast<int64_t>(queue_.size()));
  metrics_->SetRunning(running_ ? 1 : 0);
}

void SerialScheduler::Loop() {
  while (true) {
    Queued next;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SerialScheduler* s)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return s->stop_ || !s->queue_.empty(); },
          this));
      if (stop_) {
        // Cancel what is still waiting.
        std::deque<Queued> left;
        left.swap(queue_);
        UpdateGauges();
        mu_.Unlock();
        for (Queued& q : left) {
          GenerationSummary summary;
          summary.finish_reason = "cancelled";
          summary.prompt_tokens = static_cast<int64_t>(q.request->prompt.size());
          if (q.request->on_done) q.request->on_done(summary);
        }
        mu_.Lock();
        return;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      UpdateGauges();
    }
    Run(*next.request, NowS() - next.enqueued_s);
    {
      absl::MutexLock lock(&mu_);
      running_ = false;
      UpdateGauges();
    }
    if (metrics_ != nullptr) metrics_->SetKvCacheTokens(static_cast<int64_t>(cached_.size()));
  }
}

void SerialScheduler::Run(GenerationRequest& request, double queue_s) {
  GenerationSummary summary;
  summary.queue_s = queue_s;
  const int64_t n_prompt = static_cast<int64_t>(request.prompt.size());
  summary.prompt_tokens = n_prompt;
  auto finish = [&](absl::Status status, std::string reason) {
    summary.status = std::move(status);
    summary.finish_reason = std::move(reason);
    if (metrics_ != nullptr && summary.status.ok()) {
      metrics_->RecordGeneration(summary.prompt_tokens, summary.cached_prompt_tokens,
                                 summary.completion_tokens, summary.prefill_s, summary.decode_s);
    }
    if (request.on_done) request.on_done(summary);
  };
  auto is_cancelled = [&] {
    if (request.cancelled->load()) return true;
    absl::MutexLock lock(&mu_);
    return stop_;
  };
  if (is_cancelled()) return finish(absl::OkStatus(), "cancelled");
  // A worker restarting: wait for it (bounded by ready_wait_ms from now)
  // rather than fail at once. False when it did not come back (or the
  // request was cancelled meanwhile: *cancelled).
  bool cancelled_while_waiting = false;
  auto wait_ready = [&] {
    const double deadline = NowS() + options_.ready_wait_ms / 1000.0;
    while (!model_->ready() && NowS() < deadline) {
      if (is_cancelled()) {
        cancelled_while_waiting = true;
        return false;
      }
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(50));
    }
    return model_->ready();
  };
  auto not_ready = [&] {
    if (cancelled_while_waiting) return finish(absl::OkStatus(), "cancelled");
    finish(absl::UnavailableError(absl::StrCat("the model did not serve within ",
                                               options_.ready_wait_ms, " ms (a worker is down)")),
           "error");
  };
  if (!wait_ready()) return not_ready();

  const int64_t room = model_->context_tokens() - n_prompt;
  sampling::StopOptions stop = request.stop;
  if (stop.max_tokens == 0 || stop.max_tokens > room) stop.max_tokens = room;
  const int32_t eos = model_->eos_id();
  if (!request.ignore_eos && eos >= 0 &&
      std::find(stop.stop_tokens.begin(), stop.stop_tokens.end(), eos) == stop.stop_tokens.end()) {
    stop.stop_tokens.push_back(eos);
  }
  absl::StatusOr<sampling::StopCondition> stop_condition = sampling::StopCondition::Create(stop);
  if (!stop_condition.ok()) return finish(stop_condition.status(), "error");
  absl::StatusOr<sampling::Sampler> sampler = sampling::Sampler::Create(request.sampler);
  if (!sampler.ok()) return finish(sampler.status(), "error");
  for (int32_t t : request.prompt) sampler->Accept(t);

  // Prefill what the cache does not already hold (at least the last token,
  // whose logits we need).
  int64_t reuse = 0;
  if (options_.reuse_prefix) {
    const int64_t limit = std::min<int64_t>(static_cast<int64_t>(cached_.size()), n_prompt - 1);
    while (reuse < limit && cached_[static_cast<size_t>(reuse)] == request.prompt[reuse]) ++reuse;
  }
  summary.cached_prompt_tokens = reuse;
  cached_.resize(static_cast<size_t>(reuse));
  const double prefill_start = NowS();
  const absl::Span<const int32_t> prompt(request.prompt);
  int retries = 0;
  for (int64_t pos = reuse; pos < n_prompt;) {
    if (is_cancelled()) return finish(absl::OkStatus(), "cancelled");
    const int64_t n = std::min(options_.prefill_chunk_tokens, n_prompt - pos);
    absl::Status status =
        model_->Forward(prompt.subspan(static_cast<size_t>(pos), static_cast<size_t>(n)), pos,
                        absl::MakeSpan(logits_));
    if (!status.ok()) {
      cached_.clear();
      // A worker lost during the prefill: nothing reached the client yet,
      // so the request waits for the restart and starts over (twice at most).
      if (absl::IsUnavailable(status) && retries < 2) {
        ++retries;
        if (!wait_ready()) return not_ready();
        pos = 0;
        summary.cached_prompt_tokens = 0;
        continue;
      }
      return finish(status, "error");
    }
    cached_.insert(cached_.end(), prompt.begin() + pos, prompt.begin() + pos + n);
    pos += n;
  }
  const double decode_start = NowS();
  summary.prefill_s = decode_start - prefill_start;
  double last_token_s = 0;
  while (true) {
    if (is_cancelled()) {
      summary.flushed_text = stop_condition->Flush();
      summary.decode_s = NowS() - decode_start;
      return finish(absl::OkStatus(), "cancelled");
    }
    absl::StatusOr<int32_t> token = sampler->Sample(logits_);
    if (!token.ok()) return finish(token.status(), "error");
    sampler->Accept(*token);
    GeneratedToken out;
    out.token = *token;
    if (request.top_logprobs >= 0) {
      out.logprob = LogSoftmaxAt(logits_, *token, request.top_logprobs, &out.top_logprobs);
    }
    sampling::StopStep step = stop_condition->Append(*token, model_->TokenBytes(*token));
    out.text = std::move(step.text);
    summary.completion_tokens++;
    const double now = NowS();
    if (metrics_ != nullptr) {
      if (summary.completion_tokens == 1) {
        metrics_->ObserveTimeToFirstToken(queue_s + now - prefill_start);
      } else {
        metrics_->ObserveInterTokenLatency(now - last_token_s);
      }
    }
    last_token_s = now;
    if (request.on_token) request.on_token(out);
    if (step.finished()) {
      summary.decode_s = NowS() - decode_start;
      return finish(absl::OkStatus(), std::string(sampling::FinishReasonName(step.finish_reason)));
    }
    const int64_t pos = static_cast<int64_t>(cached_.size());
    absl::Status status =
        model_->Forward(absl::MakeConstSpan(&out.token, 1), pos, absl::MakeSpan(logits_));
    if (!status.ok()) {
      cached_.clear();
      return finish(status, "error");
    }
    cached_.push_back(out.token);
  }
}

}  // namespace moeflow::server
