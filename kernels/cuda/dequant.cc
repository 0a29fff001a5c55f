#include "kernels/cuda/dequant.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/dequant_kernels.cuh"

namespace moeflow::cuda {

absl::Status CanImplementDequantize(const DequantizeArguments& args) {
  if (args.type != GgmlType::kQ8_0 && args.type != GgmlType::kQ4_K &&
      args.type != GgmlType::kQ6_K) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU dequantization of ", Traits(args.type).name, " is not implemented"));
  }
  const int64_t block = Traits(args.type).block_size;
  if (args.n_elements < 0 || args.n_elements % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(args.n_elements, " elements is not a multiple of ",
                                                   Traits(args.type).name, "'s block size ",
                                                   block));
  }
  if (args.n_elements > 0 && (args.blocks == nullptr || args.out == nullptr)) {
    return absl::InvalidArgumentError("null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunDequantize(const DequantizeArguments& args) {
  if (absl::Status s = CanImplementDequantize(args); !s.ok()) return s;
  const int64_t n_blocks = args.n_elements / Traits(args.type).block_size;
  cudaError_t err = cudaSuccess;
  switch (args.type) {
    case GgmlType::kQ8_0:
      err = LaunchDequantizeQ8_0(args.blocks, args.out, n_blocks, args.stream);
      break;
    case GgmlType::kQ4_K:
      err = LaunchDequantizeQ4_K(args.blocks, args.out, n_blocks, args.stream);
      break;
    default:
      err = LaunchDequantizeQ6_K(args.blocks, args.out, n_blocks, args.stream);
      break;
  }
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat("dequantize ", Traits(args.type).name,
                                            " launch failed: ", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

}  // namespace moeflow::cuda
