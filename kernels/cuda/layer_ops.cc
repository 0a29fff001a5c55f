#include "kernels/cuda/layer_ops.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace moeflow::cuda {
namespace {

absl::Status Invalid(absl::string_view op, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

bool Aliases(const void* a, const void* b) { return a != nullptr && a == b; }

}  // namespace

absl::Status CanImplementRmsNorm(const RmsNormArguments& a) {
  if (a.n_rows < 0 || a.n < 1) {
    return Invalid("rms_norm", absl::StrCat("n_rows = ", a.n_rows, ", n = ", a.n,
                                            ": need n_rows >= 0 and n >= 1"));
  }
  if (a.x_stride < a.n || a.out_stride < a.n) {
    return Invalid("rms_norm", absl::StrCat("row strides x ", a.x_stride, " / out ", a.out_stride,
                                            " are shorter than the row (n = ", a.n, ")"));
  }
  if (!(a.eps > 0)) return Invalid("rms_norm", absl::StrCat("eps = ", a.eps, " must be > 0"));
  if (a.n_rows > 0 && (a.x == nullptr || a.weight == nullptr || a.out == nullptr)) {
    return Invalid("rms_norm", "null device pointer");
  }
  if (a.n_rows > 2147483647) return Invalid("rms_norm", "more than 2^31 - 1 rows");
  return absl::OkStatus();
}

absl::Status RunRmsNorm(const RmsNormArguments& a) {
  if (absl::Status s = CanImplementRmsNorm(a); !s.ok()) return s;
  return CudaStatus(
      LaunchRmsNorm(a.x, a.x_stride, a.weight, a.out, a.out_stride, a.n_rows, a.n, a.eps, a.stream),
      "rms_norm launch");
}

absl::Status CanImplementRope(const RopeArguments& a) {
  if (a.params.n_dims < 2 || a.params.n_dims % 2 != 0) {
    return Invalid("rope", absl::StrCat("n_dims = ", a.params.n_dims, " must be even and >= 2"));
  }
  if (a.n_tokens < 0 || a.n_heads < 1) {
    return Invalid("rope", absl::StrCat("n_tokens = ", a.n_tokens, ", n_heads = ", a.n_heads));
  }
  if (a.n_heads > 1 &&
      (a.in_head_stride < a.params.n_dims || a.out_head_stride < a.params.n_dims)) {
    return Invalid("rope",
                   absl::StrCat("head strides in ", a.in_head_stride, " / out ", a.out_head_stride,
                                " overlap the ", a.params.n_dims, " rotated values"));
  }
  if (a.n_tokens > 1 && (a.in_token_stride < a.n_heads * a.params.n_dims ||
                         a.out_token_stride < a.n_heads * a.params.n_dims)) {
    return Invalid("rope", absl::StrCat("token strides in ", a.in_token_stride, " / out ",
                                        a.out_token_stride, " are shorter than n_heads × n_dims"));
  }
  if (a.n_tokens > 0 && (a.in == nullptr || a.out == nullptr || a.positions == nullptr)) {
    return Invalid("rope", "null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunRope(const RopeArguments& a) {
  if (absl::Status s = CanImplementRope(a); !s.ok()) return s;
  return CudaStatus(
      LaunchRope(a.in, a.in_token_stride, a.in_head_stride, a.out, a.out_token_stride,
                 a.out_head_stride, a.positions, a.n_tokens, a.n_heads, a.params, a.stream),
      "rope launch");
}

absl::Status CanImplementSiluMul(const SiluMulArguments& a) {
  if (a.n_rows < 0 || a.n < 0) {
    return Invalid("silu_mul", absl::StrCat("n_rows = ", a.n_rows, ", n = ", a.n));
  }
  if (a.in_stride < a.n || a.out_stride < a.n) {
    return Invalid("silu_mul", absl::StrCat("row strides in ", a.in_stride, " / out ", a.out_stride,
                                            " are shorter than n = ", a.n));
  }
  if (a.n_rows * a.n > 0 && (a.gate == nullptr || a.up == nullptr || a.out == nullptr)) {
    return Invalid("silu_mul", "null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunSiluMul(const SiluMulArguments& a) {
  if (absl::Status s = CanImplementSiluMul(a); !s.ok()) return s;
  return CudaStatus(
      LaunchSiluMul(a.gate, a.up, a.in_stride, a.out, a.out_stride, a.n_rows, a.n, a.stream),
      "silu_mul launch");
}

absl::Status CanImplementResidualAdd(const ResidualAddArguments& a) {
  if (a.n < 0) return Invalid("residual_add", absl::StrCat("n = ", a.n, " must be >= 0"));
  if (a.n > 0 && (a.residual == nullptr || a.a == nullptr || a.out == nullptr)) {
    return Invalid("residual_add", "null device pointer (residual, a and out are required)");
  }
  return absl::OkStatus();
}

absl::Status RunResidualAdd(const ResidualAddArguments& a) {
  if (absl::Status s = CanImplementResidualAdd(a); !s.ok()) return s;
  return CudaStatus(LaunchResidualAdd(a.residual, a.a, a.b, a.out, a.n, a.stream),
                    "residual_add launch");
}

absl::Status RunConvertToBf16(const ConvertToBf16Arguments& a) {
  if (a.n < 0) return Invalid("convert_to_bf16", absl::StrCat("n = ", a.n, " must be >= 0"));
  if (a.n > 0 && (a.in == nullptr || a.out == nullptr)) {
    return Invalid("convert_to_bf16", "null device pointer");
  }
  if (Aliases(a.in, a.out)) return Invalid("convert_to_bf16", "in and out alias");
  return CudaStatus(LaunchConvertToBf16(a.in, a.out, a.n, a.stream), "convert_to_bf16 launch");
}

absl::Status CanImplementRouterTopK(const RouterTopKArguments& a) {
  const RouterDeviceParams& p = a.params;
  if (p.n_experts < 1 || p.n_experts > 1024) {
    return Invalid("router_top_k", absl::StrCat("n_experts = ", p.n_experts,
                                                " is outside [1, 1024] (one block per token)"));
  }
  if (p.k < 1 || p.k > 32 || p.k > p.n_experts) {
    return Invalid(
        "router_top_k",
        absl::StrCat("k = ", p.k, " is outside [1, min(32, n_experts = ", p.n_experts, ")]"));
  }
  if (p.n_groups < 1 || p.n_groups > 64 || p.n_experts % p.n_groups != 0) {
    return Invalid("router_top_k",
                   absl::StrCat("n_groups = ", p.n_groups,
                                " must be in [1, 64] and divide n_experts = ", p.n_experts));
  }
  if (p.n_groups_used < 1 || p.n_groups_used > p.n_groups) {
    return Invalid("router_top_k", absl::StrCat("n_groups_used = ", p.n_groups_used,
                                                " is outside [1, n_groups = ", p.n_groups, "]"));
  }
  if (p.k > p.n_groups_used * (p.n_experts / p.n_groups)) {
    return Invalid("router_top_k", absl::StrCat("k = ", p.k, " exceeds the ",
                                                p.n_groups_used * (p.n_experts / p.n_groups),
                                                " experts of the kept groups"));
  }
  if (a.n_tokens < 0 || a.n_tokens > 2147483647) {
    return Invalid("router_top_k", absl::StrCat("n_tokens = ", a.n_tokens));
  }
  if (a.n_tokens > 0 && (a.logits == nullptr || a.ids == nullptr || a.weights == nullptr)) {
    return Invalid("router_top_k", "null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunRouterTopK(const RouterTopKArguments& a) {
  if (absl::Status s = CanImplementRouterTopK(a); !s.ok()) return s;
  return CudaStatus(
      LaunchRouterTopK(a.logits, a.bias, a.ids, a.weights, a.n_tokens, a.params, a.stream),
      "router_top_k launch");
}

}  // namespace moeflow::cuda
