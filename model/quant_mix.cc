#include "model/quant_mix.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"

namespace moeflow {
namespace {

using F = LlamaFileType;
using T = GgmlType;

struct FileTypeEntry {
  const char* name;
  LlamaFileType type;
  GgmlType default_type;
};
// llama_ftype_get_default_type.
constexpr FileTypeEntry kFileTypes[] = {
    {"f32", F::kAllF32, T::kF32},          {"f16", F::kF16, T::kF16},
    {"bf16", F::kBF16, T::kBF16},          {"q4_0", F::kQ4_0, T::kQ4_0},
    {"q4_1", F::kQ4_1, T::kQ4_1},          {"q5_0", F::kQ5_0, T::kQ5_0},
    {"q5_1", F::kQ5_1, T::kQ5_1},          {"q8_0", F::kQ8_0, T::kQ8_0},
    {"q2_k", F::kQ2_K, T::kQ2_K},          {"q2_k_s", F::kQ2_K_S, T::kQ2_K},
    {"q3_k_s", F::kQ3_K_S, T::kQ3_K},      {"q3_k_m", F::kQ3_K_M, T::kQ3_K},
    {"q3_k_l", F::kQ3_K_L, T::kQ3_K},      {"q4_k_s", F::kQ4_K_S, T::kQ4_K},
    {"q4_k_m", F::kQ4_K_M, T::kQ4_K},      {"q5_k_s", F::kQ5_K_S, T::kQ5_K},
    {"q5_k_m", F::kQ5_K_M, T::kQ5_K},      {"q6_k", F::kQ6_K, T::kQ6_K},
    {"iq1_s", F::kIQ1_S, T::kIQ1_S},       {"iq1_m", F::kIQ1_M, T::kIQ1_M},
    {"iq2_xxs", F::kIQ2_XXS, T::kIQ2_XXS}, {"iq2_xs", F::kIQ2_XS, T::kIQ2_XS},
    {"iq2_s", F::kIQ2_S, T::kIQ2_XS},      {"iq2_m", F::kIQ2_M, T::kIQ2_S},
    {"iq3_xxs", F::kIQ3_XXS, T::kIQ3_XXS}, {"iq3_xs", F::kIQ3_XS, T::kIQ3_S},
    {"iq3_s", F::kIQ3_S, T::kIQ3_S},       {"iq3_m", F::kIQ3_M, T::kIQ3_S},
    {"iq4_nl", F::kIQ4_NL, T::kIQ4_NL},    {"iq4_xs", F::kIQ4_XS, T::kIQ4_XS},
};
// llama-quantize's aliases.
constexpr std::pair<const char*, const char*> kFileTypeAliases[] = {
    {"q3_k", "q3_k_m"}, {"q4_k", "q4_k_m"}, {"q5_k", "q5_k_m"}};

const FileTypeEntry& FileTypeInfo(LlamaFileType type) {
  for (const FileTypeEntry& e : kFileTypes) {
    if (e.type == type) return e;
  }
  MOEFLOW_CHECK(false);
  return kFileTypes[0];
}

bool IsQuantized(GgmlType type) { return type != T::kF32 && type != T::kF16 && type != T::kBF16; }

// tensor_category of llama-quant.cpp (first match wins, in its order).
enum class Category {
  kOutput,
  kTokenEmbd,
  kAttnQkv,
  kAttnKvB,
  kAttnV,
  kAttnK,
  kAttnQ,
  kAttnOutput,
  kFfnUp,
  kFfnGate,
  kFfnDown,
  kOther
};

Category CategoryOf(absl::string_view name) {
  if (name == "output.weight") return Category::kOutput;
  if (name == "token_embd.weight") return Category::kTokenEmbd;
  if (absl::StrContains(name, "attn_qkv.weight")) return Category::kAttnQkv;
  if (absl::StrContains(name, "attn_kv_b.weight")) return Category::kAttnKvB;
  if (absl::StrContains(name, "attn_v.weight")) return Category::kAttnV;
  if (absl::StrContains(name, "attn_k.weight")) return Category::kAttnK;
  if (absl::StrContains(name, "attn_q.weight")) return Category::kAttnQ;
  if (absl::StrContains(name, "attn_output.weight")) return Category::kAttnOutput;
  if (absl::StrContains(name, "ffn_up")) return Category::kFfnUp;
  if (absl::StrContains(name, "ffn_gate")) return Category::kFfnGate;
  if (absl::StrContains(name, "ffn_down")) return Category::kFfnDown;
  return Category::kOther;
}

bool IsAttnVLike(Category c) {
  return c == Category::kAttnV || c == Category::kAttnQkv || c == Category::kAttnKvB;
}

// Layer index from "blk.N.…", -1 for global tensors (sscanf "blk.%d.").
int64_t LayerOf(absl::string_view name) {
  int layer = -1;
  const std::string s(name);
  if (std::sscanf(s.c_str(), "blk.%d.", &layer) != 1) return -1;
  return layer;
}

// tensor_allows_quantization for the names a deepseek2 file holds.
bool AllowsQuantization(const TensorShape& t) {
  return t.ne.size() >= 2 && absl::EndsWith(t.name, "weight") &&
         !absl::StrContains(t.name, "_norm.weight") &&
         !absl::StrContains(t.name, "ffn_gate_inp.weight");
}

bool OneOf(LlamaFileType ft, std::initializer_list<LlamaFileType> set) {
  return std::find(set.begin(), set.end(), ft) != set.end();
}

bool UseMoreBits(int64_t i, int64_t n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

// quantize_state_impl: counters advanced in llama-quantize's tensor order.
struct MixState {
  int64_t n_attention_wv = 0, i_attention_wv = 0;
  int64_t n_ffn = 0, i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
  bool tied_embeddings = true;
};

// llama_tensor_get_type_impl for a tensor whose default type `t` is quantized.
GgmlType MixType(GgmlType t, const TensorShape& ts, Category cat, MixState& qs,
                 const QuantMixOptions& o) {
  const F ft = o.file_type;
  const int64_t n_expert = std::max<int64_t>(1, o.n_experts);
  // layer_info: with experts, the layer from the name; else the counter.
  auto layer = [&](int64_t counter) { return n_expert > 1 ? LayerOf(ts.name) : counter; };
  const bool iq_low =
      OneOf(ft, {F::kIQ2_XXS, F::kIQ2_XS, F::kIQ1_S, F::kIQ2_S, F::kIQ2_M, F::kIQ1_M});
  if (cat == Category::kOutput || (qs.tied_embeddings && cat == Category::kTokenEmbd)) {
    if (ts.ne[0] % Traits(t).block_size != 0) {
      t = T::kQ8_0;
    } else if (iq_low || ft == F::kIQ3_XXS) {
      t = T::kQ5_K;
    } else if (t != T::kQ8_0) {
      t = T::kQ6_K;
    }
  } else if (cat == Category::kTokenEmbd) {
    if (OneOf(ft, {F::kIQ2_XXS, F::kIQ2_XS, F::kIQ1_S, F::kIQ1_M})) {
      t = T::kQ2_K;
    } else if (OneOf(ft, {F::kIQ2_S, F::kIQ2_M, F::kIQ3_XXS})) {
      t = T::kIQ3_S;
    }
  } else if (iq_low) {
    const bool s_or_m = OneOf(ft, {F::kIQ2_S, F::kIQ2_M});
    if (IsAttnVLike(cat)) {
      if (o.n_gqa >= 4 || o.n_experts >= 4) {
        t = T::kQ4_K;
      } else {
        t = s_or_m ? T::kIQ3_S : T::kQ2_K;
      }
      ++qs.i_attention_wv;
    } else if (o.n_experts == 8 && cat == Category::kAttnK) {
      t = T::kQ4_K;
    } else if (cat == Category::kFfnDown) {
      // The counter, not the layer: in a deepseek2 file the first n/8
      // ffn_down tensors in llama-quantize's order (blk.0's dense one, ...).
      if (qs.i_ffn_down < qs.n_ffn / 8) t = s_or_m ? T::kIQ3_S : T::kQ2_K;
      ++qs.i_ffn_down;
    } else if (cat == Category::kAttnOutput) {
      if (o.n_experts == 8) {
        t = T::kQ5_K;
      } else if (OneOf(ft, {F::kIQ1_S, F::kIQ1_M})) {
        t = T::kIQ2_XXS;
      } else if (s_or_m) {
        t = T::kIQ3_S;
      }
    }
  } else if (IsAttnVLike(cat)) {
    if (ft == F::kQ2_K) {
      t = o.n_gqa >= 4 ? T::kQ4_K : T::kQ3_K;
    } else if (ft == F::kQ2_K_S && o.n_gqa >= 4) {
      t = T::kQ4_K;
    } else if (ft == F::kIQ3_XXS) {
      t = o.n_gqa >= 4 ? T::kQ4_K : !o.has_imatrix ? T::kIQ3_S : T::kIQ3_XXS;
    } else if (OneOf(ft, {F::kIQ3_XS, F::kIQ3_S}) && o.n_gqa >= 4) {
      t = T::kQ4_K;
    } else if (ft == F::kIQ3_M) {
      t = T::kQ4_K;
    } else if (ft == F::kQ3_K_M) {
      t = qs.i_attention_wv < 2 ? T::kQ5_K : T::kQ4_K;
    } else if (ft == F::kQ3_K_L) {
      t = T::kQ5_K;
    } else if (OneOf(ft, {F::kIQ4_NL, F::kIQ4_XS}) && o.n_gqa >= 4) {
      t = T::kQ5_K;
    } else if (OneOf(ft, {F::kQ4_K_M, F::kQ5_K_M}) &&
               UseMoreBits(qs.i_attention_wv, qs.n_attention_wv)) {
      t = T::kQ6_K;
    } else if (ft == F::kQ4_K_S && qs.i_attention_wv < 4) {
      t = T::kQ5_K;
    }
    if (o.n_experts == 8) t = T::kQ8_0;
    ++qs.i_attention_wv;
  } else if (cat == Category::kAttnK) {
    if (o.n_experts == 8) {
      t = T::kQ8_0;
    } else if (ft == F::kIQ3_XS) {
      t = T::kIQ3_XXS;
    } else if (ft == F::kIQ3_XXS) {
      t = T::kIQ2_S;
    }
  } else if (cat == Category::kAttnQ) {
    if (ft == F::kIQ3_XS) {
      t = T::kIQ3_XXS;
    } else if (ft == F::kIQ3_XXS) {
      t = T::kIQ2_S;
    }
  } else if (cat == Category::kFfnDown) {
    const int64_t i = layer(qs.i_ffn_down), n = qs.n_ffn;
    if (ft == F::kQ2_K) {
      t = T::kQ3_K;
    } else if (ft == F::kQ2_K_S) {
      if (i < n / 8) t = T::kQ4_K;
    } else if (ft == F::kIQ3_XXS && !o.has_imatrix) {
      t = i < n / 8 ? T::kQ4_K : T::kQ3_K;
    } else if (ft == F::kQ3_K_M) {
      t = i < n / 16 ? T::kQ5_K : T::kQ4_K;
    } else if (ft == F::kIQ3_M && (i < n / 8 || (o.n_experts == 8 && UseMoreBits(i, n)))) {
      t = T::kQ4_K;
    } else if (ft == F::kQ3_K_L) {
      t = T::kQ5_K;
    } else if (ft == F::kQ4_K_M) {
      if (UseMoreBits(i, n)) t = T::kQ6_K;
    } else if (i < n / 8 && OneOf(ft, {F::kIQ4_NL, F::kIQ4_XS}) && !o.has_imatrix) {
      t = T::kQ5_K;
    } else if (ft == F::kQ5_K_M && UseMoreBits(i, n)) {
      t = T::kQ6_K;
    } else if (ft == F::kQ4_K_S && i < n / 8) {
      t = T::kQ5_K;
    } else if (OneOf(ft, {F::kQ4_0, F::kQ5_0}) && o.has_imatrix && i < n / 8) {
      t = ft == F::kQ4_0 ? T::kQ4_1 : T::kQ5_1;
    }
    ++qs.i_ffn_down;
  } else if (cat == Category::kAttnOutput) {
    if (o.n_experts == 8) {
      if (OneOf(ft, {F::kQ2_K, F::kIQ3_XS, F::kIQ3_XXS, F::kQ3_K_S, F::kQ3_K_M, F::kIQ4_NL,
                     F::kQ4_K_S, F::kQ4_K_M, F::kIQ3_S, F::kIQ3_M, F::kIQ4_XS})) {
        t = T::kQ5_K;
      }
    } else if (ft == F::kQ2_K) {
      t = T::kQ3_K;
    } else if (ft == F::kIQ3_XXS) {
      t = T::kIQ3_S;
    } else if (ft == F::kQ3_K_M || ft == F::kIQ3_M) {
      t = T::kQ4_K;
    } else if (ft == F::kQ3_K_L) {
      t = T::kQ5_K;
    }
  } else if (cat == Category::kAttnQkv) {
    if (OneOf(ft, {F::kQ3_K_M, F::kQ3_K_L, F::kIQ3_M})) {
      t = T::kQ4_K;
    } else if (ft == F::kQ4_K_M) {
      t = T::kQ5_K;
    } else if (ft == F::kQ5_K_M) {
      t = T::kQ6_K;
    }
  } else if (cat == Category::kFfnGate || cat == Category::kFfnUp) {
    int64_t& counter = cat == Category::kFfnGate ? qs.i_ffn_gate : qs.i_ffn_up;
    const int64_t i = layer(counter), n = qs.n_ffn;
    if (ft == F::kIQ3_XS && i >= n / 8 && i < 7 * n / 8) t = T::kIQ3_XXS;
    ++counter;
  }
  return t;
}

// tensor_type_fallback: rows that do not fit the type's block.
GgmlType Fallback(GgmlType t, int64_t cols) {
  if (cols % Traits(t).block_size == 0) return t;
  switch (t) {
    case T::kIQ1_S:
    case T::kIQ1_M:
    case T::kIQ2_XXS:
    case T::kIQ2_XS:
    case T::kIQ2_S:
    case T::kIQ3_XXS:
    case T::kIQ3_S:
    case T::kIQ4_XS:
      t = T::kIQ4_NL;
      break;
    case T::kQ2_K:
    case T::kQ3_K:
      t = T::kQ4_0;
      break;
    case T::kQ4_K:
      t = T::kQ5_0;
      break;
    case T::kQ5_K:
      t = T::kQ5_1;
      break;
    case T::kQ6_K:
      t = T::kQ8_0;
      break;
    default:
      break;
  }
  return cols % Traits(t).block_size == 0 ? t : T::kF16;
}

}  // namespace

absl::StatusOr<LlamaFileType> ParseLlamaFileType(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [alias, target] : kFileTypeAliases) {
    if (lower == alias) lower = target;
  }
  for (const FileTypeEntry& e : kFileTypes) {
    if (lower == e.name) return e.type;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown type \"", name, "\" (known: ", absl::StrJoin(LlamaFileTypeNames(), ", "), ")"));
}

std::string LlamaFileTypeName(LlamaFileType type) {
  return absl::AsciiStrToUpper(FileTypeInfo(type).name);
}

std::vector<std::string> LlamaFileTypeNames() {
  std::vector<std::string> names;
  for (const FileTypeEntry& e : kFileTypes) names.push_back(e.name);
  for (const auto& [alias, target] : kFileTypeAliases) names.push_back(alias);
  return names;
}

GgmlType DefaultTensorType(LlamaFileType type) { return FileTypeInfo(type).default_type; }

std::vector<GgmlType> ChooseTensorTypes(const std::vector<TensorShape>& tensors,
                                        const QuantMixOptions& options) {
  // llama-quantize's order: weights_map sorted by layer (-1 first), then name.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<int64_t> layers(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) layers[i] = LayerOf(tensors[i].name);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (layers[a] != layers[b]) return layers[a] < layers[b];
    return tensors[a].name < tensors[b].name;
  });
  MixState qs;
  for (const TensorShape& t : tensors) {
    const Category c = CategoryOf(t.name);
    if (IsAttnVLike(c)) ++qs.n_attention_wv;
    if (c == Category::kOutput) qs.tied_embeddings = false;
  }
  qs.n_ffn = options.n_layers;

  const GgmlType default_type = DefaultTensorType(options.file_type);
  std::vector<GgmlType> out(tensors.size(), T::kF32);
  for (size_t i : order) {
    const TensorShape& t = tensors[i];
    if (!AllowsQuantization(t)) continue;  // F32 as generated
    GgmlType type = default_type;
    if (IsQuantized(default_type)) {
      if (!options.pure) type = MixType(type, t, CategoryOf(t.name), qs, options);
      type = Fallback(type, t.ne[0]);
    }
    out[i] = type;
  }
  return out;
}

bool TensorRequiresImatrix(absl::string_view name, GgmlType type, LlamaFileType file_type) {
  if (name == "token_embd.weight" || name == "output.weight") return false;
  switch (type) {
    case T::kIQ3_XXS:
    case T::kIQ2_XXS:
    case T::kIQ2_XS:
    case T::kIQ2_S:
    case T::kIQ1_M:
    case T::kIQ1_S:
      return true;
    case T::kQ2_K:
      return file_type == F::kQ2_K_S;
    default:
      return false;
  }
}

}  // namespace moeflow
