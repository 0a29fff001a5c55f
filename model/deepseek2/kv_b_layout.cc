#include "model/deepseek2/kv_b_layout.h"

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

bool IsFloatType(GgmlType t) {
  return t == GgmlType::kF32 || t == GgmlType::kF16 || t == GgmlType::kBF16;
}

std::vector<int64_t> KvBShape(const Deepseek2Config& c) {
  return {c.kv_lora_rank, c.n_heads * (c.qk_nope_dim + c.v_head_dim)};
}

std::string Shape(const std::vector<int64_t>& ne) {
  std::string s = "{";
  for (size_t i = 0; i < ne.size(); ++i) absl::StrAppend(&s, i ? ", " : "", ne[i]);
  return s + "}";
}

// "blk.7.attn_kv_b.weight" -> "blk.7.attn_k_b.weight".
std::string Renamed(const std::string& kv_b_name, const char* part) {
  std::string name = kv_b_name;
  const size_t at = name.find("attn_kv_b");
  MOEFLOW_CHECK(at != std::string::npos);
  name.replace(at, 9, part);
  return name;
}

GgufTensorInfo Info(std::string name, GgmlType type, std::vector<int64_t> ne) {
  GgufTensorInfo t;
  t.name = std::move(name);
  t.type = type;
  t.ne = std::move(ne);
  t.n_elements = 1;
  for (int64_t d : t.ne) t.n_elements *= d;
  t.n_bytes = static_cast<uint64_t>(RowBytes(t.type, t.ne[0]).value() * t.rows());
  return t;
}

absl::Status CheckShape(const std::string& file, const GgufTensorInfo& kv_b,
                        const Deepseek2Config& c) {
  if (kv_b.ne != KvBShape(c)) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": tensor ", kv_b.name, " has shape ", kv_b.ShapeString(), ", expected ",
                     Shape(KvBShape(c)), " (kv_lora_rank, n_heads · (qk_nope + v_head))"));
  }
  return absl::OkStatus();
}

}  // namespace

bool StoresKvB(const GgufFile& file, int64_t layer) {
  return file.FindTensor(LayerTensorName(layer, "attn_kv_b.weight")) != nullptr &&
         file.FindTensor(LayerTensorName(layer, "attn_k_b.weight")) == nullptr &&
         file.FindTensor(LayerTensorName(layer, "attn_v_b.weight")) == nullptr;
}

GgmlType DerivedKbType(GgmlType kv_b_type, int64_t qk_nope_dim) {
  if (IsFloatType(kv_b_type)) return kv_b_type;
  return qk_nope_dim % Traits(GgmlType::kQ8_0).block_size == 0 ? GgmlType::kQ8_0 : GgmlType::kF32;
}

absl::StatusOr<std::vector<GgufTensorInfo>> DerivedMlaTensorInfos(const GgufTensorInfo& kv_b,
                                                                  const Deepseek2Config& c) {
  MOEFLOW_RETURN_IF_ERROR(CheckShape("", kv_b, c));
  std::vector<GgufTensorInfo> out;
  out.push_back(Info(Renamed(kv_b.name, "attn_k_b"), DerivedKbType(kv_b.type, c.qk_nope_dim),
                     {c.qk_nope_dim, c.kv_lora_rank, c.n_heads}));
  out.push_back(
      Info(Renamed(kv_b.name, "attn_v_b"), kv_b.type, {c.kv_lora_rank, c.v_head_dim, c.n_heads}));
  for (GgufTensorInfo& t : out) t.shard = kv_b.shard;
  return out;
}

std::vector<GgufTensorInfo> WithDerivedMlaTensors(const std::vector<GgufTensorInfo>& tensors,
                                                  const Deepseek2Config& c) {
  std::vector<GgufTensorInfo> out;
  out.reserve(tensors.size() + 8);
  for (const GgufTensorInfo& t : tensors) {
    if (absl::StrContains(t.name, ".attn_kv_b.")) {
      absl::StatusOr<std::vector<GgufTensorInfo>> derived = DerivedMlaTensorInfos(t, c);
      if (derived.ok()) {
        out.insert(out.end(), derived->begin(), derived->end());
        continue;
      }
    }
    out.push_back(t);
  }
  return out;
}

absl::StatusOr<DerivedMla> DeriveMlaFromKvB(const GgufFile& file, const Deepseek2Config& c,
                                            int64_t layer) {
  const std::string name = LayerTensorName(layer, "attn_kv_b.weight");
  const GgufTensorInfo* kv_b = file.FindTensor(name);
  if (kv_b == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": missing tensor ", name, " (and no attn_k_b / attn_v_b)"));
  }
  MOEFLOW_RETURN_IF_ERROR(CheckShape(file.path(), *kv_b, c));
  if (!CanDequantize(kv_b->type)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has type ",
                                                   Traits(kv_b->type).name,
                                                   ", which moeflow cannot dequantize"));
  }
  const int64_t h_n = c.n_heads, lora = c.kv_lora_rank, nope = c.qk_nope_dim, v = c.v_head_dim;
  const int64_t src_row = RowBytes(kv_b->type, lora).value();
  const uint8_t* src = file.TensorData(*kv_b);
  auto row = [&](int64_t h, int64_t j) { return src + (h * (nope + v) + j) * src_row; };

  DerivedMla out;
  // v_b: rows (h, j) = kv_b rows h·(nope+v) + nope + j, copied.
  out.v_b.type = kv_b->type;
  out.v_b.cols = lora;
  out.v_b.rows = h_n * v;
  out.v_b.bytes.resize(static_cast<size_t>(out.v_b.rows * src_row));
  for (int64_t h = 0; h < h_n; ++h) {
    for (int64_t j = 0; j < v; ++j) {
      std::memcpy(out.v_b.bytes.data() + (h * v + j) * src_row, row(h, nope + j),
                  static_cast<size_t>(src_row));
    }
  }
  // k_b: row (h, c) = column c of kv_b's rows h·(nope+v) .. + nope.
  out.k_b.type = DerivedKbType(kv_b->type, nope);
  out.k_b.cols = nope;
  out.k_b.rows = h_n * lora;
  const int64_t dst_row = RowBytes(out.k_b.type, nope).value();
  out.k_b.bytes.resize(static_cast<size_t>(out.k_b.rows * dst_row));
  if (IsFloatType(kv_b->type)) {
    const size_t es = static_cast<size_t>(Traits(kv_b->type).type_size);
    for (int64_t h = 0; h < h_n; ++h) {
      for (int64_t n = 0; n < nope; ++n) {
        const uint8_t* r = row(h, n);
        for (int64_t k = 0; k < lora; ++k) {
          std::memcpy(out.k_b.bytes.data() + ((h * lora + k) * nope + n) * es, r + k * es, es);
        }
      }
    }
    file.ReleasePages(src, kv_b->n_bytes);
    return out;
  }
  std::vector<float> head(static_cast<size_t>(nope * lora));  // [n][k]
  std::vector<float> column(static_cast<size_t>(nope));
  for (int64_t h = 0; h < h_n; ++h) {
    for (int64_t n = 0; n < nope; ++n) {
      MOEFLOW_RETURN_IF_ERROR(Dequantize(kv_b->type, row(h, n), head.data() + n * lora, lora));
    }
    for (int64_t k = 0; k < lora; ++k) {
      for (int64_t n = 0; n < nope; ++n) column[n] = head[n * lora + k];
      uint8_t* dst = out.k_b.bytes.data() + (h * lora + k) * dst_row;
      if (out.k_b.type == GgmlType::kF32) {
        std::memcpy(dst, column.data(), static_cast<size_t>(nope) * sizeof(float));
      } else {
        MOEFLOW_RETURN_IF_ERROR(Quantize(out.k_b.type, column.data(), dst, nope));
      }
    }
  }
  file.ReleasePages(src, kv_b->n_bytes);
  return out;
}

absl::Status SplitKvBFloat(const std::vector<float>& kv_b, const Deepseek2Config& c,
                           std::vector<float>* k_b, std::vector<float>* v_b) {
  const int64_t h_n = c.n_heads, lora = c.kv_lora_rank, nope = c.qk_nope_dim, v = c.v_head_dim;
  if (static_cast<int64_t>(kv_b.size()) != h_n * (nope + v) * lora) {
    return absl::InvalidArgumentError(
        absl::StrCat("attn_kv_b has ", kv_b.size(), " values, expected ", h_n * (nope + v) * lora));
  }
  k_b->assign(static_cast<size_t>(h_n * lora * nope), 0.f);
  v_b->assign(static_cast<size_t>(h_n * v * lora), 0.f);
  for (int64_t h = 0; h < h_n; ++h) {
    const float* head = kv_b.data() + h * (nope + v) * lora;
    for (int64_t n = 0; n < nope; ++n) {
      for (int64_t k = 0; k < lora; ++k) (*k_b)[(h * lora + k) * nope + n] = head[n * lora + k];
    }
    std::memcpy(v_b->data() + h * v * lora, head + nope * lora,
                static_cast<size_t>(v * lora) * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace moeflow
