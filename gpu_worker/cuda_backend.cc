#include "gpu_worker/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
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
using dataflow::DataflowOp;
using dataflow::RequestHeader;

namespace {

// One device allocation of n elements of T.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(o.n_) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      Free();
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = o.n_;
    }
    return *this;
  }
  ~DeviceArray() { Free(); }

  absl::Status Allocate(size_t n) {
    Free();
    n_ = n;
    if (n == 0) return absl::OkStatus();
    return CudaStatus(cudaMalloc(&ptr_, n * sizeof(T)),
                      absl::StrCat("cudaMalloc of ", n * sizeof(T), " bytes"));
  }
  absl::Status Upload(const T* host, size_t n) {
    MOEFLOW_RETURN_IF_ERROR(Allocate(n));
    if (n == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpy(ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  T* get() const { return static_cast<T*>(ptr_); }
  size_t size() const { return n_; }

 private:
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
  }
  void* ptr_ = nullptr;
  size_t n_ = 0;
};

// A projection y = W x held as the plan says: int8/int4 repack or BF16.
struct GpuLinear {
  bool bf16 = false;
  int64_t rows = 0;  // all batches together
  int64_t cols = 0;
  cuda::DeviceRepackedMatrix quant;
  DeviceArray<uint16_t> bf16_weights;  // [rows × cols]
};

// A 1-D f32 tensor, or a f32 matrix (the router).
struct GpuF32 {
  DeviceArray<float> data;
};

struct GpuLayer {
  GpuF32 attn_norm, q_a_norm, kv_a_norm, ffn_norm;
  GpuLinear q, q_a, q_b, kv_a, k_b, v_b, attn_output;
  GpuLinear gate, up, down;                    // dense layers
  GpuF32 gate_inp, exp_probs_b;                // router (f32)
  GpuLinear gate_shexp, up_shexp, down_shexp;  // shared experts
};

}  // namespace

struct CudaGpuWorkerBackend::State {
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::CublasBf16Gemm> cublas;
  std::vector<GpuLayer> layers;
  GpuF32 output_norm;
  GpuLinear output;
  // The paged cache: one pool per layer of the coordinator's n_pages pages;
  // the step's page tables (every segment's, concatenated) index it.
  std::vector<DeviceArray<uint16_t>> cache;
  DeviceArray<int32_t> page_table;
  // Step buffers, sized for max_batch tokens. x is the step's residual
  // stream, shared the pending MoE layer's shared experts, routed its
  // routed sums.
  DeviceArray<float> x, xn, q_a, q, kv_a, rows, q_abs, ctx, heads_out, attn, ffn_inp, x_norm, gate,
      up, act, ffn_out, shared, routed, router_logits, weights, logits;
  // Host staging of the step start.
  std::vector<float> embedded;
  std::vector<int32_t> positions_host, slots_host;
  DeviceArray<uint16_t> x_bf16;
  DeviceArray<int32_t> positions, slots, ids;

  ~State() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

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
