#include "gpu_worker/cpu_backend.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "model/deepseek2/reference.h"
#include "model/memory_plan.h"

namespace moeflow {

using dataflow::DataflowOp;
using dataflow::RequestHeader;

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
  if (request.kv_cache_tokens() < 0) {
    return absl::InvalidArgumentError("kv_cache_tokens: must be >= 0");
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
  MOEFLOW_ASSIGN_OR_RETURN(file_, GgufFile::Open(config_request_.model_path()));
  MOEFLOW_ASSIGN_OR_RETURN(config_, Deepseek2Config::FromGguf(*file_));
  MOEFLOW_ASSIGN_OR_RETURN(weights_, EngineWeights::Map(*file_, config_));
  MOEFLOW_ASSIGN_OR_RETURN(double rope_attn_factor,
                           file_->GetFloatOr("deepseek2.rope.scaling.attn_factor", 1.0));
  rope_ = Deepseek2RopeParams::FromConfig(config_, static_cast<float>(rope_attn_factor));
  int threads = config_request_.compute_threads();
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  PinReport pin;
  pool_ = MakeCpuPool(threads, &pin);
  caller_cpu_ = pin.caller_cpu;
  pool_->SetYieldBeforeSleep(dataflow::DataflowYieldMicros());
  std::fprintf(stderr, "gpu_worker (cpu backend): %s\n", pin.message.c_str());
  // As the single-process engine holds and repacks them (the routed experts
  // are the expert workers'), so that the logits stay bit-identical.
  std::string weight_memory;
  MOEFLOW_ASSIGN_OR_RETURN(const int64_t copied,
                           MoveWeightsToOwnMemory(*file_, /*routed_experts=*/false, weights_,
                                                  &resident_, pool_.get(), &weight_memory));
  RepackLayerWeights(SelectedIsa(), /*in_place=*/copied > 0, file_.get(), weights_.layers,
                     &repacked_);
  std::fprintf(stderr, "gpu_worker (cpu backend): %s\n", weight_memory.c_str());
  kv_tokens_ = config_request_.kv_cache_tokens() > 0
                   ? std::min<int64_t>(config_request_.kv_cache_tokens(), config_.context_length)
                   : config_.context_length;
  max_batch_ = std::min<int64_t>(config_request_.max_batch_tokens(), kv_tokens_);
  scratch_.Reserve(config_, config_.n_experts_used, threads, max_batch_, kv_tokens_);
  cache_ = MlaKvCache(config_.n_layers, config_.kv_lora_rank + config_.qk_rope_dim);
  for (MlaLayerCache& l : cache_.layers) l.rows.reserve(static_cast<size_t>(kv_tokens_ * l.row_dim));
  ctx_ = EngineContext{&config_, &rope_, SelectedIsa(), pool_.get(), &scratch_};
  x_norm_.resize(static_cast<size_t>(max_batch_ * config_.hidden));
  ffn_out_.resize(static_cast<size_t>(max_batch_ * config_.hidden));
  const ModelBytes bytes = CountModelBytes(file_->tensors());
  shard_bytes_ = static_cast<int64_t>(bytes.non_expert()) +
                 static_cast<int64_t>(cache_.layers.size()) * kv_tokens_ *
                     cache_.layers[0].row_dim * static_cast<int64_t>(sizeof(float));
  p.set_phase(proto::LOAD_PHASE_READING);
  p.set_bytes_done(static_cast<int64_t>(bytes.non_expert()));
  p.set_bytes_total(static_cast<int64_t>(bytes.non_expert()));
  progress(p);
  return absl::OkStatus();
}

size_t CpuGpuWorkerBackend::MaxRequestBytes() const {
  return static_cast<size_t>(max_batch_ * config_.hidden) * sizeof(float);
}

std::vector<size_t> CpuGpuWorkerBackend::ReplyPartBytes() const {
  const size_t n = static_cast<size_t>(max_batch_);
  const size_t h = static_cast<size_t>(config_.hidden);
  const size_t k = static_cast<size_t>(config_.n_experts_used);
  const size_t part0 =
      std::max(n * static_cast<size_t>(config_.vocab_size), n * (2 * h + 2 * k)) * sizeof(float);
  return {part0, n * h * sizeof(float)};
}

absl::Status CpuGpuWorkerBackend::Handle(const RequestHeader& header,
                                         absl::Span<const uint8_t> payload,
                                         dataflow::ReplyWriter& reply, proto::LayerStats& stats) {
  const int64_t n = header.n_tokens;
  const int64_t h = config_.hidden;
  if (n < 1 || n > max_batch_) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_tokens ", n, " is outside [1, max_batch_tokens = ", max_batch_, "]"));
  }
  stats.set_rows_computed(n);
  const size_t x_bytes = static_cast<size_t>(n * h) * sizeof(float);
  switch (static_cast<DataflowOp>(header.op)) {
    case DataflowOp::kEmbed: {
      if (payload.size() != static_cast<size_t>(n) * sizeof(int32_t)) {
        return absl::InvalidArgumentError("kEmbed: payload is not n_tokens int32 ids");
      }
      float* x = reinterpret_cast<float*>(reply.Payload(0));
      const MatmulWeight& embd = weights_.token_embd;
      for (int64_t t = 0; t < n; ++t) {
        int32_t token = 0;  // the payload need not be 4-byte aligned
        std::memcpy(&token, payload.data() + t * sizeof(int32_t), sizeof(token));
        if (token < 0 || token >= config_.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token id ", token, " at index ", t,
                                                         " is out of range [0, ",
                                                         config_.vocab_size, ")"));
        }
        MOEFLOW_RETURN_IF_ERROR(Dequantize(embd.type, embd.row(token), x + t * h, h));
      }
      return reply.Send(0, x_bytes);
    }
    case DataflowOp::kLayer: {
      const int64_t il = header.layer;
      if (il < 0 || il >= config_.n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", il, " is outside [0, ",
                                                       config_.n_layers, ")"));
      }
      if (payload.size() != x_bytes) return absl::InvalidArgumentError("kLayer: payload size");
      MlaLayerCache& cache = cache_.layers[static_cast<size_t>(il)];
      if (header.start_pos < 0 || header.start_pos > cache.n_tokens() ||
          header.start_pos + n > kv_tokens_) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", il, ": start_pos ", header.start_pos, " with ", n,
                         " tokens does not fit the cache (", cache.n_tokens(), " cached, ",
                         kv_tokens_, " capacity)"));
      }
      const int64_t k = header.k;
      if (config_.is_moe_layer(il) && (k < 1 || k > config_.n_experts_used)) {
        return absl::InvalidArgumentError(absl::StrCat("k ", k, " is outside [1, ",
                                                       config_.n_experts_used, "]"));
      }
      const float* x = reinterpret_cast<const float*>(payload.data());
      const EngineLayerWeights& lw = weights_.layers[static_cast<size_t>(il)];
      float* out = reinterpret_cast<float*>(reply.Payload(0));
      float* ffn_inp = out;
      EngineAttentionBlock(ctx_, lw).Forward(x, n, header.start_pos, cache, ffn_inp);
      float* x_norm = config_.is_moe_layer(il) ? out + n * h : x_norm_.data();
      for (int64_t t = 0; t < n; ++t) {
        RmsNorm(ffn_inp + t * h, lw.ffn_norm.data(), h, config_.rms_eps, x_norm + t * h);
      }
      if (!config_.is_moe_layer(il)) {
        EngineSwigluFfn(ctx_, lw.ffn_gate, lw.ffn_up, lw.ffn_down).Forward(x_norm, n,
                                                                           ffn_out_.data());
        // In place: Combine reads each element of ffn_inp before writing it.
        Combine(ffn_inp, ffn_out_.data(), nullptr, n, h, out);
        return reply.Send(0, x_bytes);
      }
      int32_t* ids = reinterpret_cast<int32_t*>(out + 2 * n * h);
      float* weights = reinterpret_cast<float*>(ids + n * k);
      EngineRouter(ctx_, lw, k).Route(x_norm, n, ids, weights);
      MOEFLOW_RETURN_IF_ERROR(reply.Send(0, (2 * n * h + 2 * n * k) * sizeof(float)));
      if (config_.n_shared_experts > 0) {
        float* shared = reinterpret_cast<float*>(reply.Payload(1));
        EngineSwigluFfn(ctx_, lw.ffn_gate_shexp, lw.ffn_up_shexp, lw.ffn_down_shexp)
            .Forward(x_norm, n, shared);
        MOEFLOW_RETURN_IF_ERROR(reply.Send(1, x_bytes));
      }
      return absl::OkStatus();
    }
    case DataflowOp::kOutput: {
      if (payload.size() != x_bytes) return absl::InvalidArgumentError("kOutput: payload size");
      float* logits = reinterpret_cast<float*>(reply.Payload(0));
      EngineOutputHead(ctx_, weights_, reinterpret_cast<const float*>(payload.data()), n, logits);
      return reply.Send(0, static_cast<size_t>(n * config_.vocab_size) * sizeof(float));
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("gpu_worker: unknown op ", header.op));
  }
}

}  // namespace moeflow
