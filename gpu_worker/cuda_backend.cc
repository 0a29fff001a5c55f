#include "gpu_worker/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "gpu_worker/cuda_backend_state.h"
#include "gpu_worker/cuda_params.h"
#include "kernels/cpu/quants.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/weight_only_gemm.h"
#include "kernels/cuda/weight_repack.h"
#include "model/deepseek2/kv_b_layout.h"
#include "model/memory_plan.h"

namespace moeflow {

using cuda::CudaStatus;
using cuda_backend_internal::DeviceArray;
using cuda_backend_internal::GpuF32;
using cuda_backend_internal::GpuLayer;
using cuda_backend_internal::GpuLinear;
using dataflow::DataflowOp;
using dataflow::RequestHeader;

size_t CudaGpuWorkerBackend::MaxRequestBytes() const {
  return dataflow::MaxLayerRequestBytes(limits_.max_tokens, limits_.max_segments,
                                        MaxStepPages(limits_), config_.hidden);
}

size_t CudaGpuWorkerBackend::MaxReplyBytes() const {
  const int64_t n = limits_.max_tokens;
  return std::max(dataflow::RouterReplyBytes(n, config_.hidden, config_.n_experts_used),
                  dataflow::SectionBytes<float>(static_cast<size_t>(n * config_.vocab_size)));
}

namespace {

// y[b][t] = W_b x[b][t] for n tokens (batch b over heads when n_batch > 1).
absl::Status Project(cuda::CublasBf16Gemm& cublas, uint16_t* x_bf16, cudaStream_t stream,
                     const GpuLinear& w, const float* x, int64_t x_stride, int64_t x_batch,
                     int64_t n, int64_t n_batch, float* y, int64_t y_stride, int64_t y_batch) {
  const int64_t n_out = w.rows / n_batch;
  if (!w.bf16) {
    cuda::WeightOnlyGemmArguments a;
    a.device.w = w.quant.view();
    a.device.n_out = n_out;
    a.device.n_tokens = n;
    a.device.n_batch = n_batch;
    a.device.x = x;
    a.device.x_stride = x_stride;
    a.device.x_batch = x_batch;
    a.device.y = y;
    a.device.y_stride = y_stride;
    a.device.y_batch = y_batch;
    a.stream = stream;
    return cuda::RunWeightOnlyGemm(a);
  }
  // BF16: convert the activations (the whole strided region), then one GEMM per batch.
  const int64_t span = (n - 1) * x_stride + (n_batch - 1) * x_batch + w.cols;
  MOEFLOW_RETURN_IF_ERROR(cuda::RunConvertToBf16({x, x_bf16, span, stream}));
  for (int64_t b = 0; b < n_batch; ++b) {
    cuda::Bf16GemmArguments g;
    g.m = n;
    g.n = n_out;
    g.k = w.cols;
    g.x = x_bf16 + b * x_batch;
    g.ldx = x_stride;
    g.w = w.bf16_weights.get() + b * n_out * w.cols;
    g.ldw = w.cols;
    g.y = y + b * y_batch;
    g.ldy = y_stride;
    g.stream = stream;
    MOEFLOW_RETURN_IF_ERROR(cublas.Run(g));
  }
  return absl::OkStatus();
}

absl::Status Download(void* host, const void* device, size_t bytes, cudaStream_t stream) {
  MOEFLOW_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream),
                 "cudaMemcpyAsync (device to host)"));
  return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

}  // namespace

absl::Status CudaGpuWorkerBackend::Handle(const RequestHeader& header,
                                          absl::Span<const uint8_t> payload,
                                          dataflow::ReplyWriter& reply, proto::LayerStats& stats) {
  return HandleAttentionRequest(
      header, *step_, stats, [&] { return HandleLayer(header, payload, reply); },
      [&] { return HandleOutput(header, payload, reply); });
}

absl::Status CudaGpuWorkerBackend::StartStep() {
  const Deepseek2Config& c = config_;
  State& s = *state_;
  const int64_t h = c.hidden, n = step_->n_tokens();
  const GgufTensorInfo* embd = file_->FindTensor("token_embd.weight");
  if (embd == nullptr) return absl::InvalidArgumentError("no tensor token_embd.weight");
  const int64_t row_bytes =
      static_cast<int64_t>(embd->n_bytes / static_cast<uint64_t>(c.vocab_size));
  const absl::Span<const int32_t> tokens = step_->tokens();
  for (int64_t t = 0; t < n; ++t) {
    MOEFLOW_RETURN_IF_ERROR(Dequantize(embd->type, file_->TensorData(*embd) + tokens[t] * row_bytes,
                                       s.embedded.data() + t * h, h));
  }
  step_->PositionsAndSlots(&s.positions_host, &s.slots_host);
  const absl::Span<const int32_t> pages = step_->pages();
  auto upload = [&](void* device, const void* host, size_t bytes, const char* what) {
    return CudaStatus(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, s.stream), what);
  };
  MOEFLOW_RETURN_IF_ERROR(upload(s.x.get(), s.embedded.data(), n * h * 4, "cudaMemcpyAsync (x)"));
  MOEFLOW_RETURN_IF_ERROR(
      upload(s.positions.get(), s.positions_host.data(), n * 4, "cudaMemcpyAsync (positions)"));
  MOEFLOW_RETURN_IF_ERROR(
      upload(s.slots.get(), s.slots_host.data(), n * 4, "cudaMemcpyAsync (slots)"));
  if (!pages.empty()) {
    MOEFLOW_RETURN_IF_ERROR(upload(s.page_table.get(), pages.data(), pages.size() * 4,
                                   "cudaMemcpyAsync (page tables)"));
  }
  return absl::OkStatus();
}

absl::Status CudaGpuWorkerBackend::AddRoutedSums(absl::Span<const float> routed) {
  State& s = *state_;
  MOEFLOW_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(s.routed.get(), routed.data(), routed.size() * 4,
                                 cudaMemcpyHostToDevice, s.stream),
                 "cudaMemcpyAsync (routed sums)"));
  return cuda::RunResidualAdd({s.ffn_inp.get(), s.routed.get(),
                               config_.n_shared_experts > 0 ? s.shared.get() : nullptr, s.x.get(),
                               static_cast<int64_t>(routed.size()), s.stream});
}

absl::Status CudaGpuWorkerBackend::HandleLayer(const RequestHeader& header,
                                               absl::Span<const uint8_t> payload,
                                               dataflow::ReplyWriter& reply) {
  const Deepseek2Config& c = config_;
  State& s = *state_;
  MOEFLOW_ASSIGN_OR_RETURN(const dataflow::LayerRequest request,
                           dataflow::ParseLayerRequest(header, payload, c.hidden));
  MOEFLOW_RETURN_IF_ERROR(step_->BeginLayer(header, request));
  if ((header.flags & dataflow::kStepStart) != 0) MOEFLOW_RETURN_IF_ERROR(StartStep());
  if (!request.routed_sums.empty()) MOEFLOW_RETURN_IF_ERROR(AddRoutedSums(request.routed_sums));
  const int64_t il = header.layer, n = step_->n_tokens(), h = c.hidden, k = header.k;
  cuda::CublasBf16Gemm& cublas = *s.cublas;
  auto project = [&](const GpuLinear& w, const float* x, int64_t x_stride, float* y,
                     int64_t y_stride) {
    return Project(cublas, s.x_bf16.get(), s.stream, w, x, x_stride, 0, n, 1, y, y_stride, 0);
  };
  auto norm = [&](const float* x, int64_t x_stride, const GpuF32& w, int64_t width, float* out,
                  int64_t out_stride) {
    return cuda::RunRmsNorm(
        {x, x_stride, w.data.get(), out, out_stride, n, width, c.rms_eps, s.stream});
  };
  // down(silu(gate · x) ⊙ (up · x)) into `out`.
  auto swiglu = [&](const GpuLinear& gate, const GpuLinear& up, const GpuLinear& down,
                    const float* x, float* out) -> absl::Status {
    const int64_t ff = gate.rows;
    MOEFLOW_RETURN_IF_ERROR(project(gate, x, h, s.gate.get(), ff));
    MOEFLOW_RETURN_IF_ERROR(project(up, x, h, s.up.get(), ff));
    MOEFLOW_RETURN_IF_ERROR(
        cuda::RunSiluMul({s.gate.get(), s.up.get(), ff, s.act.get(), ff, n, ff, s.stream}));
    return project(down, s.act.get(), ff, out, h);
  };
  const GpuLayer& L = s.layers[static_cast<size_t>(il)];
  const int64_t heads = c.n_heads, head_dim = c.qk_head_dim(), nope = c.qk_nope_dim;
  const int64_t kv_lora = c.kv_lora_rank, rope = c.qk_rope_dim, row_dim = kv_lora + rope;

  MOEFLOW_RETURN_IF_ERROR(norm(s.x.get(), h, L.attn_norm, h, s.xn.get(), h));
  if (c.q_lora_rank > 0) {
    MOEFLOW_RETURN_IF_ERROR(project(L.q_a, s.xn.get(), h, s.q_a.get(), c.q_lora_rank));
    MOEFLOW_RETURN_IF_ERROR(
        norm(s.q_a.get(), c.q_lora_rank, L.q_a_norm, c.q_lora_rank, s.q_a.get(), c.q_lora_rank));
    MOEFLOW_RETURN_IF_ERROR(
        project(L.q_b, s.q_a.get(), c.q_lora_rank, s.q.get(), heads * head_dim));
  } else {
    MOEFLOW_RETURN_IF_ERROR(project(L.q, s.xn.get(), h, s.q.get(), heads * head_dim));
  }
  // Cache rows [rms_norm(kv_cmpr), rope(k_pe)], written at each row's slot.
  MOEFLOW_RETURN_IF_ERROR(project(L.kv_a, s.xn.get(), h, s.kv_a.get(), row_dim));
  MOEFLOW_RETURN_IF_ERROR(norm(s.kv_a.get(), row_dim, L.kv_a_norm, kv_lora, s.rows.get(), row_dim));
  cuda::RopeArguments r;
  r.params = cuda::RopeDeviceParamsFrom(rope_);
  r.in = s.kv_a.get() + kv_lora;
  r.in_token_stride = row_dim;
  r.in_head_stride = rope;
  r.out = s.rows.get() + kv_lora;
  r.out_token_stride = row_dim;
  r.out_head_stride = rope;
  r.positions = s.positions.get();
  r.n_tokens = n;
  r.n_heads = 1;
  r.stream = s.stream;
  MOEFLOW_RETURN_IF_ERROR(cuda::RunRope(r));
  uint16_t* pool = s.cache[static_cast<size_t>(il)].get();
  MOEFLOW_RETURN_IF_ERROR(
      cuda::RunMlaCacheWrite({s.rows.get(), s.slots.get(), n, row_dim, pool, s.stream}));
  // Absorbed queries: [k_b[h] · q_nope[h], rope(q_pe[h])].
  MOEFLOW_RETURN_IF_ERROR(Project(cublas, s.x_bf16.get(), s.stream, L.k_b, s.q.get(),
                                  heads * head_dim, head_dim, n, heads, s.q_abs.get(),
                                  heads * row_dim, row_dim));
  r.in = s.q.get() + nope;
  r.in_token_stride = heads * head_dim;
  r.in_head_stride = head_dim;
  r.out = s.q_abs.get() + kv_lora;
  r.out_token_stride = heads * row_dim;
  r.out_head_stride = row_dim;
  r.n_heads = heads;
  MOEFLOW_RETURN_IF_ERROR(cuda::RunRope(r));
  // Attention per segment, over its own page table.
  for (const AttentionStep::Segment& seg : step_->segments()) {
    cuda::MlaPrefillArguments a;
    a.params = {static_cast<int>(heads),       static_cast<int>(kv_lora),
                static_cast<int>(rope),        static_cast<int>(limits_.page_tokens),
                static_cast<int>(seg.n_pages), rope_.kq_scale};
    a.q = s.q_abs.get() + seg.first * heads * row_dim;
    a.cache = pool;
    a.page_table = s.page_table.get() + seg.page_offset;
    a.start_pos = seg.start_pos;
    a.n_tokens = seg.n;
    a.out = s.ctx.get() + seg.first * heads * kv_lora;
    a.stream = s.stream;
    MOEFLOW_RETURN_IF_ERROR(cuda::RunMlaPrefill(a));
  }
  // attn_v_b per head, attn_output, + residual.
  MOEFLOW_RETURN_IF_ERROR(Project(cublas, s.x_bf16.get(), s.stream, L.v_b, s.ctx.get(),
                                  heads * kv_lora, kv_lora, n, heads, s.heads_out.get(),
                                  heads * c.v_head_dim, c.v_head_dim));
  MOEFLOW_RETURN_IF_ERROR(
      project(L.attn_output, s.heads_out.get(), heads * c.v_head_dim, s.attn.get(), h));
  MOEFLOW_RETURN_IF_ERROR(
      cuda::RunResidualAdd({s.x.get(), s.attn.get(), nullptr, s.ffn_inp.get(), n * h, s.stream}));
  MOEFLOW_RETURN_IF_ERROR(norm(s.ffn_inp.get(), h, L.ffn_norm, h, s.x_norm.get(), h));

  if (!c.is_moe_layer(il)) {
    MOEFLOW_RETURN_IF_ERROR(swiglu(L.gate, L.up, L.down, s.x_norm.get(), s.ffn_out.get()));
    MOEFLOW_RETURN_IF_ERROR(cuda::RunResidualAdd(
        {s.ffn_inp.get(), s.ffn_out.get(), nullptr, s.x.get(), n * h, s.stream}));
    MOEFLOW_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize"));
    step_->FinishLayer();
    return reply.Send(0);
  }
  // Router: f32 gate logits, then top-k.
  cuda::F32GemmArguments g;
  g.m = n;
  g.n = c.n_experts;
  g.k = h;
  g.x = s.x_norm.get();
  g.ldx = h;
  g.w = L.gate_inp.data.get();
  g.ldw = h;
  g.y = s.router_logits.get();
  g.ldy = c.n_experts;
  g.stream = s.stream;
  MOEFLOW_RETURN_IF_ERROR(cublas.RunF32(g));
  cuda::RouterTopKArguments rt;
  rt.logits = s.router_logits.get();
  rt.bias = L.exp_probs_b.data.size() > 0 ? L.exp_probs_b.data.get() : nullptr;
  rt.ids = s.ids.get();
  rt.weights = s.weights.get();
  rt.n_tokens = n;
  rt.params = cuda::RouterDeviceParamsFrom(c, k);
  rt.stream = s.stream;
  MOEFLOW_RETURN_IF_ERROR(cuda::RunRouterTopK(rt));
  // The routed rows (dataflow/wire.h RouterReply).
  dataflow::WireWriter out(absl::MakeSpan(reply.Payload(), MaxReplyBytes()));
  float* x_norm = out.Add<float>(static_cast<size_t>(n * h));
  int32_t* ids = out.Add<int32_t>(static_cast<size_t>(n * k));
  float* weights = out.Add<float>(static_cast<size_t>(n * k));
  MOEFLOW_RETURN_IF_ERROR(Download(x_norm, s.x_norm.get(), n * h * 4, s.stream));
  MOEFLOW_RETURN_IF_ERROR(Download(ids, s.ids.get(), n * k * 4, s.stream));
  MOEFLOW_RETURN_IF_ERROR(Download(weights, s.weights.get(), n * k * 4, s.stream));
  step_->FinishLayer();
  MOEFLOW_RETURN_IF_ERROR(reply.Send(out.size()));
  // The shared experts stay on the card for the next request's residual add.
  if (c.n_shared_experts > 0) {
    MOEFLOW_RETURN_IF_ERROR(
        swiglu(L.gate_shexp, L.up_shexp, L.down_shexp, s.x_norm.get(), s.shared.get()));
  }
  return absl::OkStatus();
}

absl::Status CudaGpuWorkerBackend::HandleOutput(const RequestHeader& header,
                                                absl::Span<const uint8_t> payload,
                                                dataflow::ReplyWriter& reply) {
  const Deepseek2Config& c = config_;
  State& s = *state_;
  MOEFLOW_ASSIGN_OR_RETURN(const absl::Span<const float> routed,
                           dataflow::ParseOutputRequest(header, payload, c.hidden));
  MOEFLOW_RETURN_IF_ERROR(step_->BeginOutput(header, routed));
  if (!routed.empty()) MOEFLOW_RETURN_IF_ERROR(AddRoutedSums(routed));
  const int64_t n = step_->n_tokens(), h = c.hidden;
  const std::vector<int64_t> rows = step_->OutputRows((header.flags & dataflow::kAllLogits) != 0);
  if (header.n_rows != static_cast<int64_t>(rows.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("kOutput: n_rows ", header.n_rows, ", the step gives ", rows.size()));
  }
  MOEFLOW_RETURN_IF_ERROR(cuda::RunRmsNorm(
      {s.x.get(), h, s.output_norm.data.get(), s.xn.get(), h, n, h, c.rms_eps, s.stream}));
  MOEFLOW_RETURN_IF_ERROR(Project(*s.cublas, s.x_bf16.get(), s.stream, s.output, s.xn.get(), h, 0,
                                  n, 1, s.logits.get(), c.vocab_size, 0));
  dataflow::WireWriter out(absl::MakeSpan(reply.Payload(), MaxReplyBytes()));
  float* logits = out.Add<float>(rows.size() * static_cast<size_t>(c.vocab_size));
  for (size_t r = 0; r < rows.size(); ++r) {
    MOEFLOW_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(logits + r * c.vocab_size, s.logits.get() + rows[r] * c.vocab_size,
                        c.vocab_size * 4, cudaMemcpyDeviceToHost, s.stream),
        "cudaMemcpyAsync (logits)"));
  }
  MOEFLOW_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize"));
  step_->End();
  return reply.Send(out.size());
}

}  // namespace moeflow
