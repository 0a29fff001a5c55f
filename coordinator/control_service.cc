#include "coordinator/control_service.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/check.h"
#include "chat/chat_message.h"
#include "chat/chat_template.h"
#include "auth/bearer_auth.h"
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

ControlServiceImpl::ControlServiceImpl(Coordinator& coordinator, std::string token,
                                       std::function<void()> on_shutdown)
    : coordinator_(coordinator), token_(std::move(token)), on_shutdown_(std::move(on_shutdown)) {
  auto tokenizer = BpeTokenizer::FromGguf(coordinator_.model_file());
  if (tokenizer.ok()) {
    tokenizer_ = std::move(*tokenizer);
  } else {
    tokenizer_error_ = std::string(tokenizer.status().message());
  }
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
  if (draining)
    return active > 0 ? proto::COORDINATOR_STATE_DRAINING : proto::COORDINATOR_STATE_DRAINED;
  return coordinator_.AllServing() ? proto::COORDINATOR_STATE_SERVING
                                   : proto::COORDINATOR_STATE_DEGRADED;
}

grpc::Status ControlServiceImpl::Status(grpc::ServerContext* context, const proto::StatusRequest*,
                                        proto::StatusResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  coordinator_.FillStatus(response);
  response->set_state(State());
  int64_t http = 0;
  for (const Frontend& f : frontends_) http += f.pending();
  response->set_http_requests(static_cast<int32_t>(http));
  absl::MutexLock lock(&mu_);
  response->set_active_requests(active_);
  response->set_queued_requests(queued_);
  return grpc::Status::OK;
}

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
  if (request->input_case() == proto::GenerateRequest::INPUT_NOT_SET) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "input: set prompt or chat");
  }
  if (tokenizer_ == nullptr) {
    return grpc::Status(grpc::FAILED_PRECONDITION,
                        absl::StrCat("the model has no usable tokenizer: ", tokenizer_error_));
  }
  std::vector<int32_t> prompt;
  if (request->input_case() == proto::GenerateRequest::kChat) {
    absl::StatusOr<std::vector<int32_t>> rendered = RenderChatPrompt(request->chat());
    if (!rendered.ok()) return ToGrpc(rendered.status());
    prompt = std::move(*rendered);
  } else {
    prompt = tokenizer_->Encode(request->prompt(), tokenizer_->add_bos());
  }
  if (prompt.empty()) return grpc::Status(grpc::INVALID_ARGUMENT, "prompt: empty");
  const int64_t context_tokens = coordinator_.context_tokens();
  if (static_cast<int64_t>(prompt.size()) >= context_tokens) {
    return grpc::Status(grpc::INVALID_ARGUMENT,
                        absl::StrCat("prompt: ", prompt.size(), " tokens leave no room in the ",
                                     context_tokens, "-token context (kv_cache_tokens)"));
  }
  if (request->max_tokens() < 0) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "max_tokens: must be >= 0");
  }
  sampling::SamplerOptions so;
  so.temperature = request->sampling().temperature();
  so.top_k = request->sampling().top_k();
  so.top_p = request->sampling().top_p() == 0.f ? 1.f : request->sampling().top_p();
  so.seed = request->sampling().seed();
  auto sampler = sampling::Sampler::Create(so);
  if (!sampler.ok())
    return grpc::Status(grpc::INVALID_ARGUMENT, std::string(sampler.status().message()));
  sampling::StopOptions stop_options;
  for (const std::string& s : request->stop()) {
    if (s.empty()) return grpc::Status(grpc::INVALID_ARGUMENT, "stop: empty string");
    stop_options.stop_strings.push_back(s);
  }
  if (tokenizer_->eos_id() >= 0) stop_options.stop_tokens.push_back(tokenizer_->eos_id());
  const int64_t room = context_tokens - static_cast<int64_t>(prompt.size());
  stop_options.max_tokens =
      request->max_tokens() > 0 ? std::min<int64_t>(request->max_tokens(), room) : room;
  auto stop = sampling::StopCondition::Create(stop_options);
  if (!stop.ok()) return grpc::Status(grpc::INVALID_ARGUMENT, std::string(stop.status().message()));

  {
    absl::MutexLock lock(&mu_);
    ++queued_;
    ++requests_total_;
  }
  // The KV cache is this request's until it ends (Coordinator::kv_mutex).
  absl::MutexLock run(&coordinator_.kv_mutex());
  coordinator_.SwapKvUser(this);
  {
    absl::MutexLock lock(&mu_);
    --queued_;
    ++active_;
    prompt_tokens_ += static_cast<int64_t>(prompt.size());
  }
  auto finish = [&](const grpc::Status& s) {
    absl::MutexLock lock(&mu_);
    --active_;
    if (!s.ok()) ++requests_failed_;
    return s;
  };
  const absl::Time start = absl::Now();
  if (cancel_running_.load()) {
    // Queued when a Drain ran out of time: cancelled before it started.
    proto::GenerateResponse final_message;
    final_message.mutable_final()->set_finish_reason(proto::FINISH_REASON_CANCELLED);
    final_message.mutable_final()->mutable_usage()->set_prompt_tokens(
        static_cast<int32_t>(prompt.size()));
    writer->Write(final_message);
    {
      absl::MutexLock lock(&mu_);
      ++requests_cancelled_;
    }
    return finish(grpc::Status::OK);
  }
  std::vector<float> logits;
  absl::Status s = coordinator_.Forward(prompt, 0, /*last_only=*/true, &logits);
  if (!s.ok()) return finish(ToGrpc(s));
  const absl::Time first = absl::Now();
  int64_t pos = static_cast<int64_t>(prompt.size());
  int32_t generated = 0;
  proto::FinishReason reason = proto::FINISH_REASON_MAX_TOKENS;
  while (true) {
    if (context->IsCancelled()) {
      reason = proto::FINISH_REASON_CANCELLED;
      break;
    }
    if (cancel_running_.load()) {
      reason = proto::FINISH_REASON_CANCELLED;
      absl::MutexLock lock(&mu_);
      ++requests_cancelled_;
      break;
    }
    absl::StatusOr<int32_t> token = sampler->Sample(logits);
    if (!token.ok()) return finish(ToGrpc(token.status()));
    sampler->Accept(*token);
    ++generated;
    sampling::StopStep step = stop->Append(*token, tokenizer_->TokenBytes(*token));
    if (!step.text.empty()) {
      proto::GenerateResponse piece;
      piece.mutable_piece()->set_text(ValidUtf8(step.text));
      piece.mutable_piece()->add_token_ids(*token);
      writer->Write(piece);
    }
    if (step.finished()) {
      reason = step.matched_stop_token >= 0        ? proto::FINISH_REASON_EOS
               : !step.matched_stop_string.empty() ? proto::FINISH_REASON_STOP_STRING
               : pos + 1 >= context_tokens         ? proto::FINISH_REASON_CONTEXT_FULL
                                                   : proto::FINISH_REASON_MAX_TOKENS;
      break;
    }
    const int32_t next[1] = {*token};
    s = coordinator_.Forward(absl::MakeConstSpan(next, 1), pos, true, &logits);
    if (!s.ok()) return finish(ToGrpc(s));
    ++pos;
  }
  if (std::string rest = stop->Flush(); !rest.empty()) {
    proto::GenerateResponse piece;
    piece.mutable_piece()->set_text(ValidUtf8(rest));
    writer->Write(piece);
  }
  const absl::Time end = absl::Now();
  proto::GenerateResponse final_message;
  proto::GenerateFinal* f = final_message.mutable_final();
  f->set_finish_reason(reason);
  f->mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt.size()));
  f->mutable_usage()->set_completion_tokens(generated);
  f->mutable_usage()->set_time_to_first_token_ms(absl::ToInt64Milliseconds(first - start));
  f->mutable_usage()->set_total_time_ms(absl::ToInt64Milliseconds(end - start));
  writer->Write(final_message);
  {
    absl::MutexLock lock(&mu_);
    completion_tokens_ += generated;
    const double prefill_s = absl::ToDoubleSeconds(first - start);
    const double decode_s = absl::ToDoubleSeconds(end - first);
    if (prefill_s > 0) prefill_tps_ = static_cast<double>(prompt.size()) / prefill_s;
    if (decode_s > 0 && generated > 1) decode_tps_ = (generated - 1) / decode_s;
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
  // The other front ends (HTTP) stop taking requests first; their pending
  // ones are waited for by polling (they do not signal mu_).
  int64_t frontend_before = 0;
  for (const Frontend& f : frontends_) {
    f.stop_accepting();
    frontend_before += f.pending();
  }
  auto frontends_pending = [this] {
    int64_t n = 0;
    for (const Frontend& f : frontends_) n += f.pending();
    return n;
  };
  absl::MutexLock lock(&mu_);
  draining_ = true;
  const int before = active_ + queued_;
  const int64_t cancelled_before = requests_cancelled_;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0 && queued_ == 0; };
  // Waits until this service and the front ends are idle or `deadline`.
  auto wait_idle = [&](absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    static constexpr bool kNever = false;
    while (true) {
      const absl::Time slice = std::min(deadline, absl::Now() + absl::Milliseconds(50));
      if (mu_.AwaitWithDeadline(absl::Condition(&idle), slice)) {
        if (frontends_pending() == 0) return true;
        mu_.AwaitWithDeadline(absl::Condition(&kNever), slice);  // sleeps, mu_ released
      }
      if (absl::Now() >= deadline) return false;
    }
  };
  int64_t frontend_cancelled = 0;
  if (!wait_idle(request->timeout_ms() == 0
                     ? absl::InfiniteFuture()
                     : absl::Now() + absl::Milliseconds(request->timeout_ms()))) {
    // Cancel what is left: each request stops at its next step (one forward
    // pass, bounded by the coordinator's step timeout).
    frontend_cancelled = frontends_pending();
    for (const Frontend& f : frontends_) f.cancel_all();
    cancel_running_.store(true);
    const bool done = wait_idle(absl::Now() + absl::Seconds(70));
    cancel_running_.store(false);
    if (!done) {
      return grpc::Status(
          grpc::DEADLINE_EXCEEDED,
          absl::StrCat(active_ + queued_ + frontends_pending(), " requests still running ",
                       request->timeout_ms(), " ms + 70 s after Drain, though cancelled"));
    }
  }
  const int cancelled =
      static_cast<int>(requests_cancelled_ - cancelled_before + frontend_cancelled);
  response->set_requests_cancelled(cancelled);
  response->set_requests_finished(static_cast<int>(before + frontend_before) - cancelled);
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
  for (const Frontend& f : frontends_) {
    if (f.start_accepting) f.start_accepting();
  }
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
  if (request->tokens_size() > coordinator_.context_tokens()) {
    return grpc::Status(grpc::INVALID_ARGUMENT, "tokens: longer than the context");
  }
  std::vector<int32_t> tokens(request->tokens().begin(), request->tokens().end());
  std::vector<float> logits;
  absl::MutexLock run(&coordinator_.kv_mutex());
  coordinator_.SwapKvUser(this);
  absl::Status s = coordinator_.Forward(tokens, 0, /*last_only=*/false, &logits);
  if (!s.ok()) return ToGrpc(s);
  response->set_n_vocab(static_cast<int32_t>(coordinator_.config().vocab_size));
  response->set_logits(
      std::string(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float)));
  return grpc::Status::OK;
}

}  // namespace moeflow
