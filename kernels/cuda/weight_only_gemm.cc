#include "kernels/cuda/weight_only_gemm.h"

#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace moeflow::cuda {
namespace {

absl::Status CopyToDevice(const void* src, size_t bytes, void** dst) {
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = CudaStatus(cudaMalloc(dst, bytes), "weight upload: cudaMalloc"); !s.ok()) {
    return s;
  }
  return CudaStatus(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice),
                    "weight upload: cudaMemcpy");
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

absl::StatusOr<DeviceRepackedMatrix> DeviceRepackedMatrix::Upload(const RepackedMatrix& m) {
  DeviceRepackedMatrix d;
  if (absl::Status s = CopyToDevice(m.qs.data(), m.qs.size(), &d.qs_); !s.ok()) return s;
  if (absl::Status s = CopyToDevice(m.scales.data(), m.scales.size() * 2, &d.scales_); !s.ok()) {
    return s;
  }
  if (absl::Status s = CopyToDevice(m.sub.data(), m.sub.size(), &d.sub_); !s.ok()) return s;
  d.view_.kind = static_cast<int>(m.kind);
  d.view_.rows = m.rows;
  d.view_.cols = m.cols;
  d.view_.qs = static_cast<const uint8_t*>(d.qs_);
  d.view_.scales = static_cast<const uint16_t*>(d.scales_);
  d.view_.sub = static_cast<const uint8_t*>(d.sub_);
  return d;
}

DeviceRepackedMatrix::DeviceRepackedMatrix(DeviceRepackedMatrix&& o) noexcept {
  *this = std::move(o);
}

DeviceRepackedMatrix& DeviceRepackedMatrix::operator=(DeviceRepackedMatrix&& o) noexcept {
  if (this != &o) {
    Release();
    view_ = o.view_;
    qs_ = std::exchange(o.qs_, nullptr);
    scales_ = std::exchange(o.scales_, nullptr);
    sub_ = std::exchange(o.sub_, nullptr);
    o.view_ = WeightOnlyDeviceMatrix();
  }
  return *this;
}

DeviceRepackedMatrix::~DeviceRepackedMatrix() { Release(); }

void DeviceRepackedMatrix::Release() {
  for (void* p : {qs_, scales_, sub_}) {
    if (p != nullptr) cudaFree(p);
  }
  qs_ = scales_ = sub_ = nullptr;
}

absl::Status CanImplementWeightOnlyGemm(const WeightOnlyGemmArguments& args) {
  const WeightOnlyGemmDeviceArgs& a = args.device;
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("weight_only_gemm: ", what));
  };
  if (a.w.kind != 0 && a.w.kind != 1) return bad(absl::StrCat("unknown weight kind ", a.w.kind));
  const int64_t block = a.w.kind == 0 ? 32 : 256;
  if (a.w.cols < block || a.w.cols % block != 0) {
    return bad(absl::StrCat("K = ", a.w.cols, " is not a positive multiple of ", block,
                            a.w.kind == 0 ? " (int8)" : " (int4)"));
  }
  if (a.n_out < 1 || a.n_batch < 1 || a.n_tokens < 0) {
    return bad(
        absl::StrCat("n_out = ", a.n_out, ", n_batch = ", a.n_batch, ", n_tokens = ", a.n_tokens));
  }
  if (a.n_batch * a.n_out != a.w.rows) {
    return bad(absl::StrCat("n_batch × n_out = ", a.n_batch * a.n_out, " but the matrix has ",
                            a.w.rows, " rows"));
  }
  if (a.n_batch > 65535 || (a.n_tokens + 31) / 32 > 65535) {
    return bad(
        absl::StrCat("grid too large (n_batch = ", a.n_batch, ", n_tokens = ", a.n_tokens, ")"));
  }
  if (a.n_tokens > 1 && a.x_stride < a.w.cols) {
    return bad(absl::StrCat("x_stride = ", a.x_stride, " < K = ", a.w.cols));
  }
  if (a.n_tokens > 1 && a.y_stride < a.n_out) {
    return bad(absl::StrCat("y_stride = ", a.y_stride, " < n_out = ", a.n_out));
  }
  if (a.x_stride % 4 != 0 || a.x_batch % 4 != 0 || !Aligned16(a.x)) {
    return bad(absl::StrCat("x must be 16-byte aligned with strides of whole float4s (x_stride = ",
                            a.x_stride, ", x_batch = ", a.x_batch, ")"));
  }
  if (a.n_tokens > 0 && (a.x == nullptr || a.y == nullptr || a.w.qs == nullptr ||
                         a.w.scales == nullptr || (a.w.kind == 1 && a.w.sub == nullptr))) {
    return bad("null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunWeightOnlyGemm(const WeightOnlyGemmArguments& args) {
  if (absl::Status s = CanImplementWeightOnlyGemm(args); !s.ok()) return s;
  return CudaStatus(LaunchWeightOnlyGemm(args.device, args.stream), "weight_only_gemm launch");
}

}  // namespace moeflow::cuda
