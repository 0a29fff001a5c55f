// GGUF metadata values and tensor infos: the typed pieces a GGUF header is
// made of, shared by the reader (gguf_shard.h, gguf.h) and the writers.
//
// Role in the data flow: every process that opens a model file sees its
// metadata as GgufValues and its tensors as GgufTensorInfos; nothing here
// touches a file. Thread-safety: plain value types. Failure: none (the
// accessors are programmer-checked: call type() first).
#ifndef MOEFLOW_MODEL_GGUF_VALUE_H_
#define MOEFLOW_MODEL_GGUF_VALUE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "formats/ggml_types.h"

namespace moeflow {

// GGUF metadata value types (ids as stored in the file).
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

absl::string_view GgufTypeName(GgufType type);
bool GgufTypeIsUnsigned(GgufType type);  // kUint8..kUint64 (not bool)
bool GgufTypeIsSigned(GgufType type);    // kInt8..kInt64

// One metadata value. Scalars are held by value; strings and arrays own their
// contents (metadata is small next to tensors; the largest, a 129k-entry
// vocabulary, is a few MB).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue Uint(GgufType type, uint64_t v);  // kUint8..kUint64, kBool
  static GgufValue Int(GgufType type, int64_t v);    // kInt8..kInt64
  static GgufValue Float(GgufType type, double v);   // kFloat32/kFloat64
  static GgufValue String(std::string v);
  static GgufValue Array(GgufType element_type, std::vector<GgufValue> elements);

  GgufType type() const { return type_; }
  // For arrays: the element type (may itself be kArray for nested arrays).
  GgufType element_type() const { return element_type_; }

  bool is_integer() const;  // any of the 8 integer types (not bool)
  bool is_float() const;    // kFloat32 / kFloat64

  // Value accessors; the caller checks type() first (programmer error if not).
  uint64_t as_uint() const { return u_; }
  int64_t as_int() const { return i_; }
  double as_float() const { return f_; }
  bool as_bool() const { return u_ != 0; }
  const std::string& as_string() const { return s_; }
  const std::vector<GgufValue>& as_array() const { return array_; }

  // The value as int64 when it is an integer that fits (false otherwise).
  bool ToInt64(int64_t* out) const;
  // The value as a double when it is a number (float or integer).
  bool ToDouble(double* out) const;
  // "u32", "array of string", ...: what error messages call the type.
  std::string TypeDescription() const;

  // Human-readable rendering; arrays longer than `max_elements` are elided.
  std::string DebugString(size_t max_elements = 8) const;

  // Same type and value, element by element for arrays (floats compared
  // bit for bit, so NaN equals itself).
  bool SameAs(const GgufValue& other) const;

 private:
  GgufType type_ = GgufType::kUint8;
  GgufType element_type_ = GgufType::kUint8;
  uint64_t u_ = 0;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::vector<GgufValue> array_;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  // Dimensions in ggml order: ne[0] is the contiguous (row) dimension.
  std::vector<int64_t> ne;
  GgmlType type = GgmlType::kF32;
  // Offset of the first byte relative to the start of its file's data section.
  uint64_t offset = 0;
  // Derived at open: element count and byte size of the tensor.
  int64_t n_elements = 0;
  uint64_t n_bytes = 0;
  // Which file of a split model holds it (0 for a single file; GgufFile::shards()).
  int shard = 0;

  int64_t rows() const;             // product of ne[1..]
  std::string ShapeString() const;  // "{2048, 102400}" as llama.cpp prints
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_GGUF_VALUE_H_
