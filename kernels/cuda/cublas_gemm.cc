#include "kernels/cuda/cublas_gemm.h"

#include <cublas_v2.h>
#include <dlfcn.h>

#include <climits>

#include "absl/strings/str_cat.h"

namespace moeflow::cuda {
namespace {

// libcublas is opened at the first Create, not linked: loading it (and
// cublasLt) costs about a second, which every gpu_worker process would pay
// even with the CPU backend.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  // cublasGemmEx has C++ overloads: the C signature, spelled out.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  std::string error;  // why the library could not be used
};

const CublasApi& Api() {
  static const CublasApi* api = [] {
    auto* a = new CublasApi();
    void* lib = nullptr;
    for (const char* name : {
             "libcublas.so.13",
             "libcublas.so",
#ifdef MOEFLOW_CUDA_LIB_DIR
             MOEFLOW_CUDA_LIB_DIR "/libcublas.so.13",
             MOEFLOW_CUDA_LIB_DIR "/libcublas.so",
#endif
         }) {
      if (lib == nullptr) lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    }
    if (lib == nullptr) {
      a->error = absl::StrCat("cannot load libcublas: ", dlerror());
      return a;
    }
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (p == nullptr && a->error.empty()) a->error = absl::StrCat("libcublas has no ", name);
      return p;
    };
    a->create = reinterpret_cast<decltype(a->create)>(sym("cublasCreate_v2"));
    a->destroy = reinterpret_cast<decltype(a->destroy)>(sym("cublasDestroy_v2"));
    a->set_stream = reinterpret_cast<decltype(a->set_stream)>(sym("cublasSetStream_v2"));
    a->gemm_ex = reinterpret_cast<decltype(a->gemm_ex)>(sym("cublasGemmEx"));
    a->sgemm = reinterpret_cast<decltype(a->sgemm)>(sym("cublasSgemm_v2"));
    a->status_name = reinterpret_cast<decltype(a->status_name)>(sym("cublasGetStatusName"));
    a->status_string = reinterpret_cast<decltype(a->status_string)>(sym("cublasGetStatusString"));
    return a;
  }();
  return *api;
}

absl::Status CublasStatus(cublasStatus_t s, absl::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, " failed: ", Api().status_name(s), ": ", Api().status_string(s)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CublasBf16Gemm>> CublasBf16Gemm::Create() {
  if (!Api().error.empty()) return absl::InternalError(Api().error);
  std::unique_ptr<CublasBf16Gemm> g(new CublasBf16Gemm());
  cublasHandle_t handle = nullptr;
  if (absl::Status s = CublasStatus(Api().create(&handle), "cublasCreate"); !s.ok()) return s;
  g->handle_ = handle;
  return g;
}

CublasBf16Gemm::~CublasBf16Gemm() {
  if (handle_ != nullptr) Api().destroy(static_cast<cublasHandle_t>(handle_));
}

absl::Status CublasBf16Gemm::CanImplement(const Bf16GemmArguments& a) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("bf16_gemm: ", what));
  };
  if (a.m < 0 || a.n < 1 || a.k < 1 || a.m > INT_MAX || a.n > INT_MAX || a.k > INT_MAX) {
    return bad(absl::StrCat("m = ", a.m, ", n = ", a.n, ", k = ", a.k,
                            " (need m >= 0, n, k >= 1, all < 2^31)"));
  }
  if (a.ldx < a.k || a.ldw < a.k || a.ldy < a.n || a.ldx > INT_MAX || a.ldw > INT_MAX ||
      a.ldy > INT_MAX) {
    return bad(absl::StrCat("leading dimensions x ", a.ldx, ", w ", a.ldw, ", y ", a.ldy,
                            " must be >= k, k, n (k = ", a.k, ", n = ", a.n, ")"));
  }
  if (a.m > 0 && (a.x == nullptr || a.w == nullptr || a.y == nullptr)) {
    return bad("null device pointer");
  }
  return absl::OkStatus();
}

absl::Status CublasBf16Gemm::Run(const Bf16GemmArguments& a) {
  if (absl::Status s = CanImplement(a); !s.ok()) return s;
  if (a.m == 0) return absl::OkStatus();
  cublasHandle_t handle = static_cast<cublasHandle_t>(handle_);
  if (absl::Status s = CublasStatus(Api().set_stream(handle, a.stream), "cublasSetStream");
      !s.ok()) {
    return s;
  }
  // cuBLAS is column-major: row-major Y [m × n] is the column-major n × m
  // matrix C = Aᵀ · B, with A = W seen column-major as k × n (lda = ldw) and
  // B = X seen column-major as k × m (ldb = ldx).
  const float alpha = 1.0f;
  return CublasStatus(
      Api().gemm_ex(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.n), static_cast<int>(a.m),
                    static_cast<int>(a.k), &alpha, a.w, CUDA_R_16BF, static_cast<int>(a.ldw), a.x,
                    CUDA_R_16BF, static_cast<int>(a.ldx), &a.beta, a.y, CUDA_R_32F,
                    static_cast<int>(a.ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx (bf16)");
}

absl::Status CublasBf16Gemm::RunF32(const F32GemmArguments& a) {
  Bf16GemmArguments shape;  // same shape rules
  shape.m = a.m;
  shape.n = a.n;
  shape.k = a.k;
  shape.ldx = a.ldx;
  shape.ldw = a.ldw;
  shape.ldy = a.ldy;
  shape.x = reinterpret_cast<const uint16_t*>(a.x);
  shape.w = reinterpret_cast<const uint16_t*>(a.w);
  shape.y = a.y;
  if (absl::Status s = CanImplement(shape); !s.ok()) return s;
  if (a.m == 0) return absl::OkStatus();
  cublasHandle_t handle = static_cast<cublasHandle_t>(handle_);
  if (absl::Status s = CublasStatus(Api().set_stream(handle, a.stream), "cublasSetStream");
      !s.ok()) {
    return s;
  }
  const float alpha = 1.0f;
  return CublasStatus(
      Api().sgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.n), static_cast<int>(a.m),
                  static_cast<int>(a.k), &alpha, a.w, static_cast<int>(a.ldw), a.x,
                  static_cast<int>(a.ldx), &a.beta, a.y, static_cast<int>(a.ldy)),
      "cublasSgemm");
}

}  // namespace moeflow::cuda
