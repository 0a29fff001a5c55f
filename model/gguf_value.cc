#include "model/gguf_value.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"

namespace moeflow {

absl::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "u8";
    case GgufType::kInt8:
      return "i8";
    case GgufType::kUint16:
      return "u16";
    case GgufType::kInt16:
      return "i16";
    case GgufType::kUint32:
      return "u32";
    case GgufType::kInt32:
      return "i32";
    case GgufType::kFloat32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "u64";
    case GgufType::kInt64:
      return "i64";
    case GgufType::kFloat64:
      return "f64";
  }
  return "unknown";
}

bool GgufTypeIsUnsigned(GgufType t) {
  return t == GgufType::kUint8 || t == GgufType::kUint16 || t == GgufType::kUint32 ||
         t == GgufType::kUint64;
}

bool GgufTypeIsSigned(GgufType t) {
  return t == GgufType::kInt8 || t == GgufType::kInt16 || t == GgufType::kInt32 ||
         t == GgufType::kInt64;
}

// ---------------------------------------------------------------------------
// GgufValue

GgufValue GgufValue::Uint(GgufType type, uint64_t v) {
  MOEFLOW_CHECK(GgufTypeIsUnsigned(type) || type == GgufType::kBool);
  GgufValue value;
  value.type_ = type;
  value.u_ = v;
  return value;
}

GgufValue GgufValue::Int(GgufType type, int64_t v) {
  MOEFLOW_CHECK(GgufTypeIsSigned(type));
  GgufValue value;
  value.type_ = type;
  value.i_ = v;
  return value;
}

GgufValue GgufValue::Float(GgufType type, double v) {
  MOEFLOW_CHECK(type == GgufType::kFloat32 || type == GgufType::kFloat64);
  GgufValue value;
  value.type_ = type;
  value.f_ = v;
  return value;
}

GgufValue GgufValue::String(std::string v) {
  GgufValue value;
  value.type_ = GgufType::kString;
  value.s_ = std::move(v);
  return value;
}

GgufValue GgufValue::Array(GgufType element_type, std::vector<GgufValue> elements) {
  GgufValue value;
  value.type_ = GgufType::kArray;
  value.element_type_ = element_type;
  value.array_ = std::move(elements);
  return value;
}

bool GgufValue::is_integer() const { return GgufTypeIsUnsigned(type_) || GgufTypeIsSigned(type_); }

bool GgufValue::is_float() const {
  return type_ == GgufType::kFloat32 || type_ == GgufType::kFloat64;
}

bool GgufValue::ToInt64(int64_t* out) const {
  if (GgufTypeIsUnsigned(type_)) {
    if (u_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u_);
    return true;
  }
  if (GgufTypeIsSigned(type_)) {
    *out = i_;
    return true;
  }
  return false;
}

bool GgufValue::ToDouble(double* out) const {
  if (is_float()) {
    *out = f_;
    return true;
  }
  if (GgufTypeIsUnsigned(type_)) {
    *out = static_cast<double>(u_);
    return true;
  }
  if (GgufTypeIsSigned(type_)) {
    *out = static_cast<double>(i_);
    return true;
  }
  return false;
}

std::string GgufValue::TypeDescription() const {
  if (type_ == GgufType::kArray) return absl::StrCat("array of ", GgufTypeName(element_type_));
  return std::string(GgufTypeName(type_));
}

std::string GgufValue::DebugString(size_t max_elements) const {
  if (GgufTypeIsUnsigned(type_)) return absl::StrCat(u_);
  if (GgufTypeIsSigned(type_)) return absl::StrCat(i_);
  switch (type_) {
    case GgufType::kBool:
      return u_ != 0 ? "true" : "false";
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      return absl::StrCat(f_);
    case GgufType::kString:
      return absl::StrCat("\"", absl::CHexEscape(s_), "\"");
    case GgufType::kArray: {
      std::string out = "[";
      const size_t shown = std::min(max_elements, array_.size());
      for (size_t i = 0; i < shown; ++i) {
        if (i > 0) out += ", ";
        out += array_[i].DebugString(max_elements);
      }
      if (shown < array_.size()) {
        absl::StrAppend(&out, shown > 0 ? ", " : "", "... ", array_.size() - shown, " more");
      }
      out += "]";
      return out;
    }
    default:
      return "?";
  }
}

bool GgufValue::SameAs(const GgufValue& other) const {
  if (type_ != other.type_) return false;
  if (GgufTypeIsUnsigned(type_) || type_ == GgufType::kBool) return u_ == other.u_;
  if (GgufTypeIsSigned(type_)) return i_ == other.i_;
  switch (type_) {
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      return std::memcmp(&f_, &other.f_, sizeof(f_)) == 0;
    case GgufType::kString:
      return s_ == other.s_;
    case GgufType::kArray:
      if (element_type_ != other.element_type_ || array_.size() != other.array_.size()) {
        return false;
      }
      for (size_t i = 0; i < array_.size(); ++i) {
        if (!array_[i].SameAs(other.array_[i])) return false;
      }
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------
// GgufTensorInfo

int64_t GgufTensorInfo::rows() const {
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  return rows;
}

std::string GgufTensorInfo::ShapeString() const {
  return absl::StrCat("{", absl::StrJoin(ne, ", "), "}");
}

}  // namespace moeflow
