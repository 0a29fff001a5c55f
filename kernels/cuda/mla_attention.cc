#include "kernels/cuda/mla_attention.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace moeflow::cuda {
namespace {

absl::Status CheckParams(absl::string_view op, const MlaDeviceParams& p) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
  };
  if (p.n_heads < 1 || p.n_heads > 65535) {
    return bad(absl::StrCat("n_heads = ", p.n_heads, " is outside [1, 65535]"));
  }
  if (p.kv_lora < 32 || p.kv_lora % 32 != 0 || p.kv_lora > kMlaMaxKvLora) {
    return bad(absl::StrCat("kv_lora = ", p.kv_lora, " must be a multiple of 32 in [32, ",
                            kMlaMaxKvLora, "]"));
  }
  if (p.rope_dim < 32 || p.rope_dim % 32 != 0 || p.rope_dim > kMlaMaxRope) {
    return bad(absl::StrCat("rope_dim = ", p.rope_dim, " must be a multiple of 32 in [32, ",
                            kMlaMaxRope, "]"));
  }
  if (p.page_tokens < 1) return bad(absl::StrCat("page_tokens = ", p.page_tokens, " must be >= 1"));
  if (p.max_pages < 1) return bad(absl::StrCat("max_pages = ", p.max_pages, " must be >= 1"));
  if (!(p.kq_scale > 0)) return bad(absl::StrCat("kq_scale = ", p.kq_scale, " must be > 0"));
  return absl::OkStatus();
}

}  // namespace

absl::Status CanImplementMlaCacheWrite(const MlaCacheWriteArguments& a) {
  if (a.n_tokens < 0 || a.row_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("mla_cache_write: n_tokens = ", a.n_tokens, ", row_dim = ", a.row_dim));
  }
  if (a.n_tokens > 0 && (a.rows == nullptr || a.slots == nullptr || a.cache == nullptr)) {
    return absl::InvalidArgumentError("mla_cache_write: null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunMlaCacheWrite(const MlaCacheWriteArguments& a) {
  if (absl::Status s = CanImplementMlaCacheWrite(a); !s.ok()) return s;
  return CudaStatus(LaunchMlaCacheWrite(a.rows, a.slots, a.n_tokens, a.row_dim, a.cache, a.stream),
                    "mla_cache_write launch");
}

int64_t MlaDecodeWorkspaceFloats(int64_t n_seqs, int64_t n_heads, int n_splits, int64_t kv_lora) {
  return n_seqs * n_heads * n_splits * (kv_lora + 2);
}

int MlaDecodeSplitsFor(int64_t max_len) {
  return static_cast<int>(std::clamp<int64_t>((max_len + 511) / 512, 1, kMlaMaxSplits));
}

absl::Status CanImplementMlaDecode(const MlaDecodeArguments& a) {
  if (absl::Status s = CheckParams("mla_decode", a.params); !s.ok()) return s;
  if (a.n_seqs < 0 || a.n_seqs > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("mla_decode: n_seqs = ", a.n_seqs, " is outside [0, 65535]"));
  }
  if (a.n_splits < 1 || a.n_splits > kMlaMaxSplits) {
    return absl::InvalidArgumentError(absl::StrCat("mla_decode: n_splits = ", a.n_splits,
                                                   " is outside [1, ", kMlaMaxSplits, "]"));
  }
  if (a.n_seqs > 0 && (a.q == nullptr || a.cache == nullptr || a.page_table == nullptr ||
                       a.seq_lens == nullptr || a.out == nullptr || a.workspace == nullptr)) {
    return absl::InvalidArgumentError("mla_decode: null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunMlaDecode(const MlaDecodeArguments& a) {
  if (absl::Status s = CanImplementMlaDecode(a); !s.ok()) return s;
  float* partial_acc = a.workspace;
  float* partial_ml = a.workspace + a.n_seqs * a.params.n_heads * a.n_splits * a.params.kv_lora;
  return CudaStatus(LaunchMlaDecode(a.q, a.cache, a.page_table, a.seq_lens, a.out, a.n_seqs,
                                    a.n_splits, partial_acc, partial_ml, a.params, a.stream),
                    "mla_decode launch");
}

absl::Status CanImplementMlaPrefill(const MlaPrefillArguments& a) {
  if (absl::Status s = CheckParams("mla_prefill", a.params); !s.ok()) return s;
  if (a.start_pos < 0 || a.n_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("mla_prefill: start_pos = ", a.start_pos, ", n_tokens = ", a.n_tokens));
  }
  const int64_t capacity = static_cast<int64_t>(a.params.max_pages) * a.params.page_tokens;
  if (a.start_pos + a.n_tokens > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("mla_prefill: positions up to ", a.start_pos + a.n_tokens,
                     " exceed the page table's ", capacity, " (max_pages × page_tokens)"));
  }
  if (a.n_tokens > 0 &&
      (a.q == nullptr || a.cache == nullptr || a.page_table == nullptr || a.out == nullptr)) {
    return absl::InvalidArgumentError("mla_prefill: null device pointer");
  }
  return absl::OkStatus();
}

absl::Status RunMlaPrefill(const MlaPrefillArguments& a) {
  if (absl::Status s = CanImplementMlaPrefill(a); !s.ok()) return s;
  return CudaStatus(LaunchMlaPrefill(a.q, a.cache, a.page_table, a.start_pos, a.n_tokens, a.out,
                                     a.params, a.stream),
                    "mla_prefill launch");
}

}  // namespace moeflow::cuda
