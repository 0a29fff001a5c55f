#include "coordinator/control_service.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth/bearer_auth.h"
#include "base/check.h"
#include "chat/chat_message.h"
#include "chat/chat_template.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"

namespace moeflow {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Proto strings must be UTF-8: bytes a (random-weight) model produced that
// do not form UTF-8 become U+FFFD, as in a text decoder's "replace" mode.
std::string ValidUtf8(absl::string_view in) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    const unsigned char c = static_cast<unsigned char>(in[i]);
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 0;
    bool ok = len > 0 && i + len <= in.size();
    for (size_t j = 1; ok && j < len; ++j) {
      ok = (static_cast<unsigned char>(in[i + j]) & 0xC0) == 0x80;
    }
    if (ok && len > 1) {
      uint32_t cp = c & (0xFF >> (len + 1));
      for (size_t j = 1; j < len; ++j)
        cp = (cp << 6) | (static_cast<unsigned char>(in[i + j]) & 0x3F);
      const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= min_cp[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok) {
      out.append(in.data() + i, len);
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

}  // namespace

ControlServiceImpl::ControlServiceImpl(Coordinator& coordinator,
                                       server::GenerationBackend* scheduler,
                                       DataflowBatchModel* model, const BpeTokenizer* tokenizer,
                                       std::string token, std::function<void()> on_shutdown)
    : coordinator_(coordinator),
      scheduler_(scheduler),
      model_(model),
      tokenizer_(tokenizer),
      token_(std::move(token)),
      on_shutdown_(std::move(on_shutdown)) {
  // Missing or unreadable: RenderChat falls back to a known template.
  if (coordinator_.model_file().Find("tokenizer.chat_template") != nullptr) {
    chat_template_ =
        coordinator_.model_file().GetString("tokenizer.chat_template").value_or(std::string());
  }
}

absl::StatusOr<std::vector<int32_t>> ControlServiceImpl::RenderChatPrompt(
    const proto::ChatConversation& chat) const {
  if (chat.messages_size() == 0) return absl::InvalidArgumentError("chat.messages: empty");
  std::vector<chat::ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const proto::ChatMessage& m = chat.messages(i);
    chat::ChatMessage message;
    if (m.role() == "system") {
      message.role = chat::ChatRole::kSystem;
    } else if (m.role() == "user") {
      message.role = chat::ChatRole::kUser;
    } else if (m.role() == "assistant") {
      message.role = chat::ChatRole::kAssistant;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("chat.messages[", i, "].role: '", m.role(),
                                                     "' is not system, user or assistant"));
    }
    message.content = m.content();
    messages.push_back(std::move(message));
  }
  chat::ChatTemplateOptions options;
  options.add_generation_prompt = true;
  // As `moeflow generate --chat`: a file without a recognized template is
  // rendered with DeepSeek V3's.
  options.fallback_template = "deepseek-v3";
  if (tokenizer_->bos_id() >= 0) {
    options.bos_token = std::string(tokenizer_->TokenText(tokenizer_->bos_id()));
  }
  if (tokenizer_->eos_id() >= 0) {
    options.eos_token = std::string(tokenizer_->TokenText(tokenizer_->eos_id()));
  }
  MOEFLOW_ASSIGN_OR_RETURN(chat::RenderedPrompt rendered,
                           chat::RenderChat(chat_template_, messages, options));
  return tokenizer_->Encode(rendered.text,
                            /*add_bos=*/!rendered.starts_with_bos && tokenizer_->add_bos());
}

grpc::Status ControlServiceImpl::Authorize(grpc::ServerContext* context) const {
  return dataflow::CheckBearer(*context, token_, "moeflowctl --token");
}

proto::CoordinatorState ControlServiceImpl::State() {
  bool draining, stopping;
  int active;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    stopping = stopping_;
    active = active_;
  }
  if (stopping) return proto::COORDINATOR_STATE_STOPPING;
  if (draining) {
    return active > 0 || scheduler_->pending() > 0 ? proto::COORDINATOR_STATE_DRAINING
                                                   : proto::COORDINATOR_STATE_DRAINED;
  }
  return coordinator_.AllServing() ? proto::COORDINATOR_STATE_SERVING
                                   : proto::COORDINATOR_STATE_DEGRADED;
}

grpc::Status ControlServiceImpl::Status(grpc::ServerContext* context, const proto::StatusRequest*,
                                        proto::StatusResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  coordinator_.FillStatus(response);
  response->set_state(State());
  const int64_t pending = scheduler_->pending();
  absl::MutexLock lock(&mu_);
  response->set_active_requests(active_);
  response->set_http_requests(static_cast<int32_t>(std::max<int64_t>(0, pending - active_)));
  return grpc::Status::OK;
}

absl::StatusOr<std::shared_ptr<server::GenerationRequest>> ControlServiceImpl::MakeRequest(
    const proto::GenerateRequest& request) {
  if (request.input_case() == proto::GenerateRequest::INPUT_NOT_SET) {
    return absl::InvalidArgumentError("input: set prompt or chat");
  }
  if (tokenizer_ == nullptr) {
    return absl::FailedPreconditionError("the model has no usable tokenizer");
  }
  auto r = std::make_shared<server::GenerationRequest>();
  if (request.input_case() == proto::GenerateRequest::kChat) {
    MOEFLOW_ASSIGN_OR_RETURN(r->prompt, RenderChatPrompt(request.chat()));
  } else {
    r->prompt = tokenizer_->Encode(request.prompt(), tokenizer_->add_bos());
  }
  if (r->prompt.empty()) return absl::InvalidArgumentError("prompt: empty");
  const int64_t context_tokens = scheduler_->context_tokens();
  const int64_t n_prompt = static_cast<int64_t>(r->prompt.size());
  if (n_prompt >= context_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", n_prompt,
                                                   " tokens leave no room in the ", context_tokens,
                                                   "-token context (kv_cache_tokens)"));
  }
  if (request.max_tokens() < 0) return absl::InvalidArgumentError("max_tokens: must be >= 0");
  sampling::SamplerOptions& so = r->sampler;
  so.temperature = request.sampling().temperature();
  so.top_k = request.sampling().top_k();
  so.top_p = request.sampling().top_p() == 0.f ? 1.f : request.sampling().top_p();
  so.seed = request.sampling().seed();
  so.repetition_penalty = 1.f;
  MOEFLOW_RETURN_IF_ERROR(sampling::ValidateSamplerOptions(so));
  for (const std::string& stop : request.stop()) {
    if (stop.empty()) return absl::InvalidArgumentError("stop: empty string");
    r->stop.stop_strings.push_back(stop);
  }
  // 0: until the context (or the KV cache) is full.
  r->stop.max_tokens = std::min<int64_t>(request.max_tokens(), context_tokens - n_prompt);
  return r;
}

namespace {

// What a Generate's handler thread and the scheduler's callbacks share.
struct GenerateStream {
  absl::Mutex mu;
  std::deque<proto::GenerateResponse> out ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  server::GenerationSummary summary ABSL_GUARDED_BY(mu);
  absl::Time first_token ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
};

proto::FinishReason FinishReasonOf(const server::GenerationSummary& s, int64_t max_tokens) {
  if (s.finish_reason == "cancelled") return proto::FINISH_REASON_CANCELLED;
  if (s.finish_reason == "stop") {
    return s.matched_stop_token >= 0 ? proto::FINISH_REASON_EOS : proto::FINISH_REASON_STOP_STRING;
  }
  return max_tokens > 0 && s.completion_tokens >= max_tokens ? proto::FINISH_REASON_MAX_TOKENS
                                                             : proto::FINISH_REASON_CONTEXT_FULL;
}

}  // namespace

grpc::Status ControlServiceImpl::Generate(grpc::ServerContext* context,
                                          const proto::GenerateRequest* request,
                                          grpc::ServerWriter<proto::GenerateResponse>* writer) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  const proto::CoordinatorState state = State();
  if (state != proto::COORDINATOR_STATE_SERVING) {
    return grpc::Status(
        grpc::UNAVAILABLE,
        absl::StrCat("coordinator is ", proto::CoordinatorState_Name(state), ", not SERVING"));
  }
  absl::StatusOr<std::shared_ptr<server::GenerationRequest>> made = MakeRequest(*request);
  if (!made.ok()) return ToGrpc(made.status());
  std::shared_ptr<server::GenerationRequest> r = *std::move(made);
  auto stream = std::make_shared<GenerateStream>();
  r->on_token = [stream](const server::GeneratedToken& token) {
    absl::MutexLock lock(&stream->mu);
    if (stream->first_token == absl::InfiniteFuture()) stream->first_token = absl::Now();
    if (token.text.empty()) return;
    proto::GenerateResponse piece;
    piece.mutable_piece()->set_text(ValidUtf8(token.text));
    piece.mutable_piece()->add_token_ids(token.token);
    stream->out.push_back(std::move(piece));
  };
  r->on_done = [stream](const server::GenerationSummary& summary) {
    absl::MutexLock lock(&stream->mu);
    if (!summary.flushed_text.empty()) {
      proto::GenerateResponse piece;
      piece.mutable_piece()->set_text(ValidUtf8(summary.flushed_text));
      stream->out.push_back(std::move(piece));
    }
    stream->summary = summary;
    stream->done = true;
  };
  const int64_t n_prompt = static_cast<int64_t>(r->prompt.size());
  const int64_t max_tokens = r->stop.max_tokens;
  const absl::Time start = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    ++requests_total_;
    ++active_;
    prompt_tokens_ += n_prompt;
  }
  auto finish = [&](const grpc::Status& s) {
    absl::MutexLock lock(&mu_);
    --active_;
    if (!s.ok()) ++requests_failed_;
    return s;
  };
  if (absl::Status s = scheduler_->Submit(r); !s.ok()) {
    r->on_token = nullptr;
    r->on_done = nullptr;
    return finish(ToGrpc(s));
  }
  // The scheduler thread produces, this thread writes (gRPC streams are
  // written from their handler's thread).
  server::GenerationSummary summary;
  absl::Time first = absl::InfiniteFuture();
  while (true) {
    std::deque<proto::GenerateResponse> out;
    bool done = false;
    {
      absl::MutexLock lock(&stream->mu);
      stream->mu.AwaitWithTimeout(absl::Condition(
                                      +[](GenerateStream* g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g->mu) {
                                        return g->done || !g->out.empty();
                                      },
                                      stream.get()),
                                  absl::Milliseconds(50));
      out.swap(stream->out);
      done = stream->done;
      if (done) summary = stream->summary;
      first = stream->first_token;
    }
    for (proto::GenerateResponse& m : out) writer->Write(m);
    if (done) break;
    if (context->IsCancelled()) r->cancelled->store(true);  // the client left
  }
  r->on_token = nullptr;
  r->on_done = nullptr;
  if (!summary.status.ok()) return finish(ToGrpc(summary.status));
  const absl::Time end = absl::Now();
  proto::GenerateResponse final_message;
  proto::GenerateFinal* f = final_message.mutable_final();
  f->set_finish_reason(FinishReasonOf(summary, max_tokens));
  f->mutable_usage()->set_prompt_tokens(static_cast<int32_t>(n_prompt));
  f->mutable_usage()->set_completion_tokens(static_cast<int32_t>(summary.completion_tokens));
  f->mutable_usage()->set_cached_prompt_tokens(static_cast<int32_t>(summary.cached_prompt_tokens));
  if (first != absl::InfiniteFuture()) {
    f->mutable_usage()->set_time_to_first_token_ms(absl::ToInt64Milliseconds(first - start));
  }
  f->mutable_usage()->set_total_time_ms(absl::ToInt64Milliseconds(end - start));
  writer->Write(final_message);
  {
    absl::MutexLock lock(&mu_);
    completion_tokens_ += summary.completion_tokens;
    if (summary.prefill_s > 0) prefill_tps_ = n_prompt / summary.prefill_s;
    if (summary.decode_s > 0 && summary.completion_tokens > 1) {
      decode_tps_ = (summary.completion_tokens - 1) / summary.decode_s;
    }
  }
  return finish(grpc::Status::OK);
}

grpc::Status ControlServiceImpl::Drain(grpc::ServerContext* context,
                                       const proto::DrainRequest* request,
                                       proto::DrainResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  if (request->timeout_ms() < 0) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "timeout_ms: must be >= 0");
  }
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  // Both front ends (this service and the HTTP API) submit to the scheduler.
  scheduler_->StopAccepting("the server is draining (moeflowctl drain)");
  const int64_t before = scheduler_->pending();
  auto wait_idle = [&](absl::Time deadline) {
    while (scheduler_->pending() > 0) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return true;
  };
  int64_t cancelled = 0;
  if (!wait_idle(request->timeout_ms() == 0
                     ? absl::InfiniteFuture()
                     : absl::Now() + absl::Milliseconds(request->timeout_ms()))) {
    // Cancel what is left: each request stops at its next step.
    cancelled = scheduler_->pending();
    scheduler_->CancelAll();
    if (!wait_idle(absl::Now() + absl::Seconds(70))) {
      return grpc::Status(
          grpc::DEADLINE_EXCEEDED,
          absl::StrCat(scheduler_->pending(), " requests still running ", request->timeout_ms(),
                       " ms + 70 s after Drain, though "
                       "cancelled"));
    }
  }
  response->set_requests_cancelled(static_cast<int32_t>(cancelled));
  response->set_requests_finished(static_cast<int32_t>(before - cancelled));
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Undrain(grpc::ServerContext* context, const proto::UndrainRequest*,
                                         proto::UndrainResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return grpc::Status(grpc::FAILED_PRECONDITION, "the coordinator is stopping");
    draining_ = false;
  }
  scheduler_->StartAccepting();
  response->set_state(State());
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Shutdown(grpc::ServerContext* context,
                                          const proto::CoordinatorShutdownRequest*,
                                          proto::CoordinatorShutdownResponse*) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return grpc::Status::OK;
    stopping_ = true;
  }
  // After this call's reply has gone out.
  std::thread([cb = on_shutdown_] {
    absl::SleepFor(absl::Milliseconds(100));
    cb();
  }).detach();
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Metrics(grpc::ServerContext* context,
                                         const proto::MetricsRequest* request,
                                         proto::MetricsResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    response->set_requests_total(requests_total_);
    response->set_requests_failed(requests_failed_);
    response->set_prompt_tokens_total(prompt_tokens_);
    response->set_completion_tokens_total(completion_tokens_);
    response->set_decode_tokens_per_second(decode_tps_);
    response->set_prefill_tokens_per_second(prefill_tps_);
  }
  int64_t p50, p99;
  int32_t b50;
  coordinator_.StepTimePercentiles(&p50, &p99, &b50);
  response->set_step_time_p50_us(p50);
  response->set_step_time_p99_us(p99);
  response->set_batch_tokens_p50(b50);
  std::vector<int64_t> le_us, counts;
  coordinator_.StepTimeHistogram(&le_us, &counts);
  for (size_t i = 0; i < le_us.size(); ++i) {
    response->add_step_time_bucket_le_us(le_us[i]);
    response->add_step_time_bucket_count(counts[i]);
  }
  coordinator_.FillWorkerMetrics(response, request->reset());
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::SetExpertPolicy(grpc::ServerContext* context,
                                                 const proto::SetExpertPolicyRequest* request,
                                                 proto::SetExpertPolicyResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  auto previous = coordinator_.SetActiveExperts(request->active_experts_per_token());
  if (!previous.ok()) return ToGrpc(previous.status());
  response->set_previous_active_experts_per_token(*previous);
  response->set_active_experts_per_token(coordinator_.active_experts());
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::ComputeLogits(grpc::ServerContext* context,
                                               const proto::ComputeLogitsRequest* request,
                                               proto::ComputeLogitsResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  const proto::CoordinatorState state = State();
  if (state != proto::COORDINATOR_STATE_SERVING) {
    return grpc::Status(grpc::UNAVAILABLE,
                        absl::StrCat("coordinator is ", proto::CoordinatorState_Name(state)));
  }
  if (request->tokens_size() == 0) return grpc::Status(grpc::INVALID_ARGUMENT, "tokens: empty");
  if (request->tokens_size() > model_->context_tokens()) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "tokens: longer than the context");
  }
  std::vector<int32_t> tokens(request->tokens().begin(), request->tokens().end());
  std::vector<float> logits;
  absl::Status s = model_->AllLogits(tokens, &logits);
  if (!s.ok()) return ToGrpc(s);
  response->set_n_vocab(static_cast<int32_t>(coordinator_.config().vocab_size));
  response->set_logits(
      std::string(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float)));
  return grpc::Status::OK;
}

}  // namespace moeflow
