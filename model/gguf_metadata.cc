#include "model/gguf_metadata.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moeflow {
namespace {

absl::Status MissingKey(const std::string& path, absl::string_view key) {
  return absl::NotFoundError(absl::StrCat(path, ": metadata key '", key, "' is absent"));
}

absl::Status WrongType(const std::string& path, absl::string_view key, const GgufValue& v,
                       absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key '", key, "' is a ",
                                                 v.TypeDescription(), ", expected ", expected));
}

}  // namespace

bool GgufMetadata::Add(GgufKeyValue kv) {
  if (index_.contains(kv.key)) return false;
  index_.emplace(kv.key, entries_.size());
  entries_.push_back(std::move(kv));
  return true;
}

void GgufMetadata::Reserve(size_t n) {
  entries_.reserve(n);
  index_.reserve(n);
}

const GgufValue* GgufMetadata::Find(absl::string_view key) const {
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  return &entries_[it->second].value;
}

absl::StatusOr<int64_t> GgufMetadata::GetInt(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  int64_t out = 0;
  if (!v->is_integer()) return WrongType(file_, key, *v, "an integer");
  if (!v->ToInt64(&out)) {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": metadata key '", key,
                                                   "' = ", v->as_uint(), " does not fit in int64"));
  }
  return out;
}

absl::StatusOr<double> GgufMetadata::GetFloat(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  double out = 0;
  if (!v->ToDouble(&out)) return WrongType(file_, key, *v, "a number");
  return out;
}

absl::StatusOr<bool> GgufMetadata::GetBool(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  if (v->type() != GgufType::kBool) return WrongType(file_, key, *v, "bool");
  return v->as_bool();
}

absl::StatusOr<std::string> GgufMetadata::GetString(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  if (v->type() != GgufType::kString) return WrongType(file_, key, *v, "string");
  return v->as_string();
}

absl::StatusOr<std::vector<std::string>> GgufMetadata::GetStringArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  if (v->type() != GgufType::kArray || v->element_type() != GgufType::kString) {
    return WrongType(file_, key, *v, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(v->as_array().size());
  for (const GgufValue& e : v->as_array()) out.push_back(e.as_string());
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufMetadata::GetIntArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  if (v->type() != GgufType::kArray ||
      !(GgufTypeIsUnsigned(v->element_type()) || GgufTypeIsSigned(v->element_type()))) {
    return WrongType(file_, key, *v, "array of integers");
  }
  std::vector<int64_t> out(v->as_array().size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (!v->as_array()[i].ToInt64(&out[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_, ": metadata key '", key, "'[", i, "] does not fit in int64"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufMetadata::GetFloatArray(absl::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(file_, key);
  const GgufType e = v->element_type();
  if (v->type() != GgufType::kArray || !(GgufTypeIsUnsigned(e) || GgufTypeIsSigned(e) ||
                                         e == GgufType::kFloat32 || e == GgufType::kFloat64)) {
    return WrongType(file_, key, *v, "array of numbers");
  }
  std::vector<double> out(v->as_array().size());
  for (size_t i = 0; i < out.size(); ++i) v->as_array()[i].ToDouble(&out[i]);
  return out;
}

absl::StatusOr<int64_t> GgufMetadata::GetIntOr(absl::string_view key, int64_t fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetInt(key);
}

absl::StatusOr<double> GgufMetadata::GetFloatOr(absl::string_view key, double fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetFloat(key);
}

absl::StatusOr<bool> GgufMetadata::GetBoolOr(absl::string_view key, bool fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetBool(key);
}

}  // namespace moeflow
