#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "gpu_worker/cuda_backend.h"
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

namespace {

// Uploads a matrix of `type` (ggml shape `ne`) held at `data`.
absl::Status UploadLinear(const std::string& name, GgmlType type, const uint8_t* data,
                          const std::vector<int64_t>& ne, GpuLinear* out, int64_t* bytes) {
  int64_t n_elements = 1;
  for (int64_t d : ne) n_elements *= d;
  out->cols = ne[0];
  out->rows = n_elements / ne[0];
  if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
    std::vector<float> values(static_cast<size_t>(n_elements));
    MOEFLOW_RETURN_IF_ERROR(Dequantize(type, data, values.data(), n_elements));
    std::vector<uint16_t> bf(values.size());
    for (size_t i = 0; i < values.size(); ++i) bf[i] = Fp32ToBf16(values[i]);
    out->bf16 = true;
    MOEFLOW_RETURN_IF_ERROR(out->bf16_weights.Upload(bf.data(), bf.size()));
  } else {
    absl::StatusOr<cuda::RepackedMatrix> m = cuda::RepackForGpu(type, data, out->rows, out->cols);
    if (!m.ok()) {
      return absl::Status(m.status().code(), absl::StrCat(name, ": ", m.status().message()));
    }
    MOEFLOW_ASSIGN_OR_RETURN(out->quant, cuda::DeviceRepackedMatrix::Upload(*m));
  }
  *bytes += static_cast<int64_t>(GpuResidentBytes(name, type, ne));
  return absl::OkStatus();
}

absl::Status LoadLinear(const GgufFile& file, const std::string& name,
                        const std::vector<int64_t>& expected_ne, GpuLinear* out, int64_t* bytes) {
  const GgufTensorInfo* t = file.FindTensor(name);
  if (t == nullptr)
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": no tensor ", name));
  if (t->ne != expected_ne) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor ", name, " has shape ", t->ShapeString()));
  }
  return UploadLinear(name, t->type, file.TensorData(*t), t->ne, out, bytes);
}

// attn_k_b and attn_v_b of a layer in the older attn_kv_b layout, derived
// at load as the CPU engine does (model/deepseek2/kv_b_layout.h).
absl::Status LoadDerivedMla(const GgufFile& file, const Deepseek2Config& c, int64_t il,
                            GpuLinear* k_b, GpuLinear* v_b, int64_t* bytes) {
  MOEFLOW_ASSIGN_OR_RETURN(DerivedMla d, DeriveMlaFromKvB(file, c, il));
  MOEFLOW_RETURN_IF_ERROR(UploadLinear(LayerTensorName(il, "attn_k_b.weight"), d.k_b.type,
                                       d.k_b.bytes.data(),
                                       {c.qk_nope_dim, c.kv_lora_rank, c.n_heads}, k_b, bytes));
  return UploadLinear(LayerTensorName(il, "attn_v_b.weight"), d.v_b.type, d.v_b.bytes.data(),
                      {c.kv_lora_rank, c.v_head_dim, c.n_heads}, v_b, bytes);
}

absl::Status LoadF32(const GgufFile& file, const std::string& name, bool optional, GpuF32* out,
                     int64_t* bytes) {
  const GgufTensorInfo* t = file.FindTensor(name);
  if (t == nullptr) {
    if (optional) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": no tensor ", name));
  }
  std::vector<float> values(static_cast<size_t>(t->n_elements));
  MOEFLOW_RETURN_IF_ERROR(Dequantize(t->type, file.TensorData(*t), values.data(), t->n_elements));
  *bytes += t->n_elements * 4;
  return out->data.Upload(values.data(), values.size());
}

}  // namespace

CudaGpuWorkerBackend::CudaGpuWorkerBackend() = default;
CudaGpuWorkerBackend::~CudaGpuWorkerBackend() = default;

absl::Status CudaGpuWorkerBackend::Configure(const proto::ConfigureRequest& request) {
  if (request.role() != proto::WORKER_ROLE_GPU) {
    return absl::InvalidArgumentError("role: gpu_worker must be configured with WORKER_ROLE_GPU");
  }
  if (request.backend() != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend: '", request.backend(), "' given to the CUDA backend"));
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend cuda: no usable CUDA device (",
                     err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", ")"));
  }
  if (request.model_path().empty()) return absl::InvalidArgumentError("model_path: empty");
  if (request.kv_cache_tokens() < 0) {
    return absl::InvalidArgumentError("kv_cache_tokens: must be >= 0");
  }
  config_request_ = request;
  return absl::OkStatus();
}

absl::Status CudaGpuWorkerBackend::Load(
    const std::function<void(const proto::LoadProgress&)>& progress) {
  proto::LoadProgress p;
  p.set_phase(proto::LOAD_PHASE_MAPPING);
  p.set_tensor_name(config_request_.model_path());
  progress(p);
  MOEFLOW_ASSIGN_OR_RETURN(file_, GgufFile::Open(config_request_.model_path()));
  MOEFLOW_ASSIGN_OR_RETURN(config_, Deepseek2Config::FromGguf(*file_));
  const Deepseek2Config& c = config_;
  MOEFLOW_ASSIGN_OR_RETURN(double rope_attn_factor,
                           file_->GetFloatOr("deepseek2.rope.scaling.attn_factor", 1.0));
  rope_ = Deepseek2RopeParams::FromConfig(c, static_cast<float>(rope_attn_factor));
  limits_ = LimitsFromConfigure(config_request_, c);
  step_ = std::make_unique<AttentionStep>(c, limits_);

  auto s = std::make_unique<State>();
  MOEFLOW_RETURN_IF_ERROR(CudaStatus(cudaStreamCreate(&s->stream), "cudaStreamCreate"));
  MOEFLOW_ASSIGN_OR_RETURN(s->cublas, cuda::CublasBf16Gemm::Create());

  const int64_t h = c.hidden, heads = c.n_heads, head_dim = c.qk_head_dim();
  const int64_t kv_lora = c.kv_lora_rank, rope = c.qk_rope_dim, row_dim = kv_lora + rope;
  int64_t bytes = 0;
  p.set_phase(proto::LOAD_PHASE_UPLOADING);
  s->layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t il = 0; il < c.n_layers; ++il) {
    GpuLayer& L = s->layers[static_cast<size_t>(il)];
    auto name = [&](const char* suffix) { return LayerTensorName(il, suffix); };
    MOEFLOW_RETURN_IF_ERROR(LoadF32(*file_, name("attn_norm.weight"), false, &L.attn_norm, &bytes));
    if (c.q_lora_rank == 0) {
      MOEFLOW_RETURN_IF_ERROR(
          LoadLinear(*file_, name("attn_q.weight"), {h, heads * head_dim}, &L.q, &bytes));
    } else {
      MOEFLOW_RETURN_IF_ERROR(
          LoadLinear(*file_, name("attn_q_a.weight"), {h, c.q_lora_rank}, &L.q_a, &bytes));
      MOEFLOW_RETURN_IF_ERROR(
          LoadF32(*file_, name("attn_q_a_norm.weight"), false, &L.q_a_norm, &bytes));
      MOEFLOW_RETURN_IF_ERROR(LoadLinear(*file_, name("attn_q_b.weight"),
                                         {c.q_lora_rank, heads * head_dim}, &L.q_b, &bytes));
    }
    MOEFLOW_RETURN_IF_ERROR(
        LoadLinear(*file_, name("attn_kv_a_mqa.weight"), {h, row_dim}, &L.kv_a, &bytes));
    MOEFLOW_RETURN_IF_ERROR(
        LoadF32(*file_, name("attn_kv_a_norm.weight"), false, &L.kv_a_norm, &bytes));
    if (StoresKvB(*file_, il)) {
      MOEFLOW_RETURN_IF_ERROR(LoadDerivedMla(*file_, c, il, &L.k_b, &L.v_b, &bytes));
    } else {
      MOEFLOW_RETURN_IF_ERROR(LoadLinear(*file_, name("attn_k_b.weight"),
                                         {c.qk_nope_dim, kv_lora, heads}, &L.k_b, &bytes));
      MOEFLOW_RETURN_IF_ERROR(LoadLinear(*file_, name("attn_v_b.weight"),
                                         {kv_lora, c.v_head_dim, heads}, &L.v_b, &bytes));
    }
    MOEFLOW_RETURN_IF_ERROR(LoadLinear(*file_, name("attn_output.weight"),
                                       {heads * c.v_head_dim, h}, &L.attn_output, &bytes));
    MOEFLOW_RETURN_IF_ERROR(LoadF32(*file_, name("ffn_norm.weight"), false, &L.ffn_norm, &bytes));
    if (!c.is_moe_layer(il)) {
      MOEFLOW_RETURN_IF_ERROR(
          LoadLinear(*file_, name("ffn_gate.weight"), {h, c.dense_ff}, &L.gate, &bytes));
      MOEFLOW_RETURN_IF_ERROR(
          LoadLinear(*file_, name("ffn_up.weight"), {h, c.dense_ff}, &L.up, &bytes));
      MOEFLOW_RETURN_IF_ERROR(
          LoadLinear(*file_, name("ffn_down.weight"), {c.dense_ff, h}, &L.down, &bytes));
    } else {
      MOEFLOW_RETURN_IF_ERROR(
          LoadF32(*file_, name("ffn_gate_inp.weight"), false, &L.gate_inp, &bytes));
      MOEFLOW_RETURN_IF_ERROR(
          LoadF32(*file_, name("exp_probs_b.bias"), true, &L.exp_probs_b, &bytes));
      if (c.n_shared_experts > 0) {
        const int64_t ff = c.expert_ff * c.n_shared_experts;
        MOEFLOW_RETURN_IF_ERROR(
            LoadLinear(*file_, name("ffn_gate_shexp.weight"), {h, ff}, &L.gate_shexp, &bytes));
        MOEFLOW_RETURN_IF_ERROR(
            LoadLinear(*file_, name("ffn_up_shexp.weight"), {h, ff}, &L.up_shexp, &bytes));
        MOEFLOW_RETURN_IF_ERROR(
            LoadLinear(*file_, name("ffn_down_shexp.weight"), {ff, h}, &L.down_shexp, &bytes));
      }
    }
    p.set_tensor_name(name("*"));
    p.set_bytes_done(bytes);
    progress(p);
  }
  MOEFLOW_RETURN_IF_ERROR(LoadF32(*file_, "output_norm.weight", false, &s->output_norm, &bytes));
  // Tied embeddings: llama.cpp falls back to token_embd when output is absent.
  const std::string output_name =
      file_->FindTensor("output.weight") != nullptr ? "output.weight" : "token_embd.weight";
  MOEFLOW_RETURN_IF_ERROR(LoadLinear(*file_, output_name, {h, c.vocab_size}, &s->output, &bytes));

  // The cache: the coordinator's pages of limits_.page_tokens positions.
  s->cache.resize(static_cast<size_t>(c.n_layers));
  for (auto& pool : s->cache) {
    MOEFLOW_RETURN_IF_ERROR(
        pool.Allocate(static_cast<size_t>(limits_.n_pages * limits_.page_tokens * row_dim)));
    bytes += static_cast<int64_t>(pool.size() * 2);
  }
  MOEFLOW_RETURN_IF_ERROR(
      s->page_table.Allocate(static_cast<size_t>(std::max<int64_t>(1, MaxStepPages(limits_)))));

  const int64_t m = limits_.max_tokens;
  const int64_t ff_max =
      std::max(c.n_dense_layers > 0 ? c.dense_ff : 0, c.expert_ff * c.n_shared_experts);
  // Widest activation a BF16 projection converts (the head-batched ones read
  // the whole strided region).
  const int64_t widest_in =
      std::max({h, c.q_lora_rank, heads * c.v_head_dim, ff_max, heads * head_dim, heads * kv_lora});
  for (auto [buf, n] : std::vector<std::pair<DeviceArray<float>*, int64_t>>{
           {&s->x, m * h},
           {&s->xn, m * h},
           {&s->q_a, m * std::max<int64_t>(1, c.q_lora_rank)},
           {&s->q, m * heads * head_dim},
           {&s->kv_a, m * row_dim},
           {&s->rows, m * row_dim},
           {&s->q_abs, m * heads * row_dim},
           {&s->ctx, m * heads * kv_lora},
           {&s->heads_out, m * heads * c.v_head_dim},
           {&s->attn, m * h},
           {&s->ffn_inp, m * h},
           {&s->x_norm, m * h},
           {&s->gate, m * std::max<int64_t>(1, ff_max)},
           {&s->up, m * std::max<int64_t>(1, ff_max)},
           {&s->act, m * std::max<int64_t>(1, ff_max)},
           {&s->ffn_out, m * h},
           {&s->shared, m * h},
           {&s->routed, m * h},
           {&s->router_logits, m * std::max<int64_t>(1, c.n_experts)},
           {&s->weights, m * std::max<int64_t>(1, c.n_experts_used)},
           {&s->logits, m * c.vocab_size}}) {
    MOEFLOW_RETURN_IF_ERROR(buf->Allocate(static_cast<size_t>(n)));
    bytes += n * 4;
  }
  MOEFLOW_RETURN_IF_ERROR(s->x_bf16.Allocate(static_cast<size_t>(m * widest_in)));
  s->embedded.resize(static_cast<size_t>(m * h));
  MOEFLOW_RETURN_IF_ERROR(s->positions.Allocate(static_cast<size_t>(m)));
  MOEFLOW_RETURN_IF_ERROR(s->slots.Allocate(static_cast<size_t>(m)));
  MOEFLOW_RETURN_IF_ERROR(
      s->ids.Allocate(static_cast<size_t>(m * std::max<int64_t>(1, c.n_experts_used))));
  device_bytes_ = bytes;
  state_ = std::move(s);
  p.set_phase(proto::LOAD_PHASE_DONE);
  p.set_bytes_total(bytes);
  progress(p);
  return absl::OkStatus();
}

}  // namespace moeflow
