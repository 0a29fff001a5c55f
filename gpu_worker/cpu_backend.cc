#include "gpu_worker/cpu_backend.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "engine/engine_profile.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/reference.h"
#include "model/memory_plan.h"

namespace moeflow {

using dataflow::DataflowOp;
using dataflow::RequestHeader;
using dataflow::WireWriter;

absl::Status CpuGpuWorkerBackend::Configure(const proto::ConfigureRequest& request) {
  if (request.role() != proto::WORKER_ROLE_GPU) {
    return absl::InvalidArgumentError("role: gpu_worker must be configured with WORKER_ROLE_GPU");
  }
  if (request.backend() == "cuda") {
    return absl::FailedPreconditionError(
        "backend cuda: the CUDA backend is not available in this build of gpu_worker "
        "(use backend: cpu)");
  }
  if (!request.backend().empty() && request.backend() != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend: '", request.backend(), "' is not one of cpu, cuda"));
  }
  if (request.model_path().empty()) return absl::InvalidArgumentError("model_path: empty");
  if (request.kv_cache_tokens() < 0 || request.context_tokens() < 0 ||
      request.max_sequences() < 0 || request.kv_page_tokens() < 0) {
    return absl::InvalidArgumentError(
        "kv_cache_tokens, context_tokens, max_sequences, kv_page_tokens: must be >= 0");
  }
  config_request_ = request;
  return absl::OkStatus();
}

absl::Status CpuGpuWorkerBackend::Load(
    const std::function<void(const proto::LoadProgress&)>& progress) {
  proto::LoadProgress p;
  p.set_phase(proto::LOAD_PHASE_MAPPING);
  p.set_tensor_name(config_request_.model_path());
  progress(p);
  if (open_file_ != nullptr) {
    file_ = open_file_;
  } else {
    MOEFLOW_ASSIGN_OR_RETURN(file_, GgufFile::Open(config_request_.model_path()));
  }
  MOEFLOW_ASSIGN_OR_RETURN(config_, Deepseek2Config::FromGguf(*file_));
  MOEFLOW_ASSIGN_OR_RETURN(weights_, EngineWeights::Map(*file_, config_));
  MOEFLOW_ASSIGN_OR_RETURN(double rope_attn_factor,
                           file_->GetFloatOr("deepseek2.rope.scaling.attn_factor", 1.0));
  rope_ = Deepseek2RopeParams::FromConfig(config_, static_cast<float>(rope_attn_factor));
  int threads = config_request_.compute_threads();
  if (shared_pool_ != nullptr) {
    pool_ = shared_pool_;
    threads = shared_pool_->size();
  } else {
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    PinReport pin;
    own_pool_ = MakeCpuPool(threads, &pin);
    caller_cpu_ = pin.caller_cpu;
    own_pool_->SetYieldBeforeSleep(dataflow::DataflowYieldMicros());
    std::fprintf(stderr, "gpu_worker (cpu backend): %s\n", pin.message.c_str());
    pool_ = own_pool_.get();
  }
  // As every CPU process that runs these matrices holds and repacks them
  // (the routed experts are the expert workers'), so that the logits stay
  // bit-identical.
  MOEFLOW_ASSIGN_OR_RETURN(const int64_t copied,
                           MoveWeightsToOwnMemory(*file_, /*routed_experts=*/false, weights_,
                                                  &resident_, pool_, &weight_memory_));
  RepackLayerWeights(SelectedIsa(), /*in_place=*/copied > 0, file_.get(), weights_, &repacked_);
  if (shared_pool_ == nullptr) {
    std::fprintf(stderr, "gpu_worker (cpu backend): %s\n", weight_memory_.c_str());
  }
  limits_ = LimitsFromConfigure(config_request_, config_);
  const int64_t row_dim = config_.kv_lora_rank + config_.qk_rope_dim;
  kv_ = KvPageMemory(config_.n_layers, row_dim, limits_.page_tokens, limits_.n_pages);
  step_.emplace(config_, limits_);
  const int64_t n = limits_.max_tokens, h = config_.hidden;
  scratch_.Reserve(config_, config_.n_experts_used, threads, n, limits_.max_positions);
  ctx_ = EngineContext{&config_, &rope_, SelectedIsa(), pool_, &scratch_};
  for (std::vector<float>* v : {&x_, &ffn_inp_, &x_norm_, &ffn_out_, &shared_, &last_rows_}) {
    v->assign(static_cast<size_t>(n * h), 0.f);
  }
  const ModelBytes bytes = CountModelBytes(file_->tensors());
  shard_bytes_ = static_cast<int64_t>(bytes.non_expert()) + kv_.bytes();
  p.set_phase(proto::LOAD_PHASE_READING);
  p.set_bytes_done(static_cast<int64_t>(bytes.non_expert()));
  p.set_bytes_total(static_cast<int64_t>(bytes.non_expert()));
  progress(p);
  return absl::OkStatus();
}

size_t CpuGpuWorkerBackend::MaxRequestBytes() const {
  return dataflow::MaxLayerRequestBytes(limits_.max_tokens, limits_.max_segments,
                                        MaxStepPages(limits_), config_.hidden);
}

size_t CpuGpuWorkerBackend::MaxReplyBytes() const {
  const int64_t n = limits_.max_tokens;
  return std::max(dataflow::RouterReplyBytes(n, config_.hidden, config_.n_experts_used),
                  dataflow::SectionBytes<float>(static_cast<size_t>(n * config_.vocab_size)));
}

absl::Status CpuGpuWorkerBackend::Handle(const RequestHeader& header,
                                         absl::Span<const uint8_t> payload,
                                         dataflow::ReplyWriter& reply, proto::LayerStats& stats) {
  return HandleAttentionRequest(
      header, *step_, stats, [&] { return HandleLayer(header, payload, reply); },
      [&] { return HandleOutput(header, payload, reply); });
}

absl::Status CpuGpuWorkerBackend::StartStep() {
  const int64_t h = config_.hidden;
  const MatmulWeight& embd = weights_.token_embd;
  const absl::Span<const int32_t> tokens = step_->tokens();
  // The embedding table stays in the file mapping, where each row read maps
  // the aligned 64 KiB around it (Linux's fault-around, fault_around_bytes'
  // default): a 4096-token prompt of random ids made all 112 MiB of
  // v2-lite's table resident. So each row's fault-around block is released
  // once the row is read (the pages stay in the page cache), unless the
  // table is also the output head (tied embeddings, MOEFLOW_HUGEPAGES=0),
  // which streams all of it every step.
  constexpr uintptr_t kFaultAroundBytes = uintptr_t{64} << 10;
  const bool release_rows = embd.data != weights_.output.data && file_->Holds(embd.data);
  const uintptr_t table_begin = reinterpret_cast<uintptr_t>(embd.data);
  const uintptr_t table_end = table_begin + static_cast<uintptr_t>(embd.rows * embd.row_bytes);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const uint8_t* row = embd.row(tokens[t]);
    MOEFLOW_RETURN_IF_ERROR(Dequantize(embd.type, row, x_.data() + static_cast<int64_t>(t) * h, h));
    if (!release_rows) continue;
    // Inside the table only: a page shared with the neighbouring tensor
    // stays (ReleasePages keeps partial pages).
    const uintptr_t r = reinterpret_cast<uintptr_t>(row);
    const uintptr_t begin = std::max(table_begin, r / kFaultAroundBytes * kFaultAroundBytes);
    const uintptr_t end =
        std::min(table_end, (r + static_cast<uintptr_t>(embd.row_bytes) + kFaultAroundBytes - 1) /
                                kFaultAroundBytes * kFaultAroundBytes);
    file_->ReleasePages(reinterpret_cast<const uint8_t*>(begin), end - begin);
  }
  segments_.clear();
  for (const AttentionStep::Segment& s : step_->segments()) {
    AttentionSegment seg;
    seg.first = s.first;
    seg.n = s.n;
    seg.start_pos = s.start_pos;
    seg.kv = MlaKvView{kv_.layer_base(0), step_->pages(s).data(), kv_.page_tokens(),
                       kv_.page_floats(), kv_.row_dim()};
    segments_.push_back(seg);
  }
  return absl::OkStatus();
}

void CpuGpuWorkerBackend::AddRoutedSums(absl::Span<const float> routed) {
  const int64_t n = step_->n_tokens();
  // In place: Combine reads each element of ffn_inp before writing x.
  Combine(ffn_inp_.data(), routed.data(), config_.n_shared_experts > 0 ? shared_.data() : nullptr,
          n, config_.hidden, x_.data());
}

absl::Status CpuGpuWorkerBackend::HandleLayer(const RequestHeader& header,
                                              absl::Span<const uint8_t> payload,
                                              dataflow::ReplyWriter& reply) {
  MOEFLOW_ASSIGN_OR_RETURN(const dataflow::LayerRequest request,
                           dataflow::ParseLayerRequest(header, payload, config_.hidden));
  MOEFLOW_RETURN_IF_ERROR(step_->BeginLayer(header, request));
  if ((header.flags & dataflow::kStepStart) != 0) MOEFLOW_RETURN_IF_ERROR(StartStep());
  if (!request.routed_sums.empty()) AddRoutedSums(request.routed_sums);
  const int64_t il = header.layer, n = step_->n_tokens(), h = config_.hidden;
  const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
  for (AttentionSegment& seg : segments_) seg.kv.base = kv_.layer_base(il);
  {
    const EnginePhaseTimer timer(EnginePhase::kAttention, n);
    EngineAttentionBlock(ctx_, lw).ForwardSegments(x_.data(), n, segments_, ffn_inp_.data());
  }
  const bool moe = config_.is_moe_layer(il);
  float* x_norm = x_norm_.data();
  WireWriter out(absl::MakeSpan(reply.Payload(), MaxReplyBytes()));
  const int64_t k = header.k;
  if (moe) x_norm = out.Add<float>(static_cast<size_t>(n * h));  // the routed rows, in place
  for (int64_t t = 0; t < n; ++t) {
    RmsNorm(ffn_inp_.data() + t * h, lw.ffn_norm.data(), h, config_.rms_eps, x_norm + t * h);
  }
  if (!moe) {
    {
      const EnginePhaseTimer timer(EnginePhase::kDenseFfn, n);
      EngineSwigluFfn(ctx_, lw.ffn_gate, lw.ffn_up, lw.ffn_down)
          .Forward(x_norm, n, ffn_out_.data());
    }
    Combine(ffn_inp_.data(), ffn_out_.data(), nullptr, n, h, x_.data());
    step_->FinishLayer();
    return reply.Send(0);
  }
  int32_t* ids = out.Add<int32_t>(static_cast<size_t>(n * k));
  float* weights = out.Add<float>(static_cast<size_t>(n * k));
  {
    const EnginePhaseTimer timer(EnginePhase::kRouter, n);
    EngineRouter(ctx_, lw, k).Route(x_norm, n, ids, weights);
  }
  step_->FinishLayer();
  // The expert workers start on these rows while the shared experts run here.
  MOEFLOW_RETURN_IF_ERROR(reply.Send(out.size()));
  if (config_.n_shared_experts > 0) {
    const EnginePhaseTimer timer(EnginePhase::kSharedExperts, n);
    EngineSwigluFfn(ctx_, lw.ffn_gate_shexp, lw.ffn_up_shexp, lw.ffn_down_shexp)
        .Forward(x_norm, n, shared_.data());
  }
  return absl::OkStatus();
}

absl::Status CpuGpuWorkerBackend::HandleOutput(const RequestHeader& header,
                                               absl::Span<const uint8_t> payload,
                                               dataflow::ReplyWriter& reply) {
  MOEFLOW_ASSIGN_OR_RETURN(const absl::Span<const float> routed,
                           dataflow::ParseOutputRequest(header, payload, config_.hidden));
  MOEFLOW_RETURN_IF_ERROR(step_->BeginOutput(header, routed));
  if (!routed.empty()) AddRoutedSums(routed);
  const int64_t h = config_.hidden;
  const std::vector<int64_t> rows = step_->OutputRows((header.flags & dataflow::kAllLogits) != 0);
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  if (header.n_rows != n_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("kOutput: n_rows ", header.n_rows, ", the step ", "gives ", n_rows));
  }
  const float* x = x_.data();
  if (n_rows != step_->n_tokens()) {
    for (int64_t r = 0; r < n_rows; ++r) {
      std::copy(x_.data() + rows[static_cast<size_t>(r)] * h,
                x_.data() + (rows[static_cast<size_t>(r)] + 1) * h, last_rows_.data() + r * h);
    }
    x = last_rows_.data();
  }
  WireWriter out(absl::MakeSpan(reply.Payload(), MaxReplyBytes()));
  float* logits = out.Add<float>(static_cast<size_t>(n_rows * config_.vocab_size));
  {
    const EnginePhaseTimer timer(EnginePhase::kOutputHead, n_rows);
    EngineOutputHead(ctx_, weights_, x, n_rows, logits);
  }
  step_->End();
  return reply.Send(out.size());
}

}  // namespace moeflow
