// GGUF model files: a validating, memory-mapped reader and a streaming writer.
//
// Role in the data flow: every process that needs weights (cpu_expert_worker,
// gpu_worker, the single-process engine, `moeflow inspect`) opens the model
// file with GgufFile::Open. Opening maps the file and parses only the header,
// metadata and tensor infos; tensor bytes stay on disk until touched, so a
// 380 GB file opens in milliseconds. GgufWriter writes files that llama.cpp's
// loader accepts, tensor by tensor, so a generator never holds a whole model.
//
// Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64
// tensor_count, u64 kv_count, kv_count × (string key, u32 value type, value),
// tensor_count × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type,
// u64 offset), padding to `general.alignment` (default 32), tensor data.
// Strings are u64 length + bytes (no NUL). Arrays are u32 element type + u64
// count + elements, and may nest.
//
// Thread-safety: a GgufFile is immutable after Open; all const methods may be
// called from any thread. GgufWriter is not thread-safe.
//
// Failure: Open never crashes on a bad file. It returns InvalidArgument (or
// NotFound / PermissionDenied for the path) with a message naming the file,
// what is wrong and where: the byte offset, the metadata key or the tensor.
#ifndef MOEFLOW_MODEL_GGUF_H_
#define MOEFLOW_MODEL_GGUF_H_

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
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

// One metadata value. Scalars are held by value; strings and arrays own their
// contents (metadata is small next to tensors; the largest, a 129k-entry
// vocabulary, is a few MB).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue Uint(GgufType type, uint64_t v);   // kUint8..kUint64, kBool
  static GgufValue Int(GgufType type, int64_t v);     // kInt8..kInt64
  static GgufValue Float(GgufType type, double v);    // kFloat32/kFloat64
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

  // Human-readable rendering; arrays longer than `max_elements` are elided.
  std::string DebugString(size_t max_elements = 8) const;

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
  // Offset of the first byte relative to the start of the data section.
  uint64_t offset = 0;
  // Derived at open: element count and byte size of the tensor.
  int64_t n_elements = 0;
  uint64_t n_bytes = 0;

  int64_t rows() const;                  // product of ne[1..]
  std::string ShapeString() const;       // "{2048, 102400}" as llama.cpp prints
};

class GgufFile {
 public:
  // Maps `path` read-only and parses header, metadata and tensor infos.
  // Errors: NotFound/PermissionDenied (path), InvalidArgument (bad file; the
  // message names the file, offset and field).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  // Parses an in-memory image (copied). `name` is used in error messages.
  // Used by tests and the fuzzer.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(absl::Span<const uint8_t> bytes,
                                                             std::string name);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  // Absolute file offset where tensor data begins.
  uint64_t data_offset() const { return data_offset_; }

  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  const GgufValue* Find(absl::string_view key) const;

  // Typed getters. NotFound if the key is absent, InvalidArgument (naming the
  // key and its actual type) if the type does not fit. GetInt accepts any
  // integer type whose value fits in int64; GetFloat accepts f32/f64 and
  // integers; GetBool accepts bool only.
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(absl::string_view key) const;
  // The value or `fallback` when the key is absent (errors on a wrong type).
  absl::StatusOr<int64_t> GetIntOr(absl::string_view key, int64_t fallback) const;
  absl::StatusOr<double> GetFloatOr(absl::string_view key, double fallback) const;
  absl::StatusOr<bool> GetBoolOr(absl::string_view key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(absl::string_view name) const;

  // Start of a tensor's bytes in the mapping (valid while the file lives).
  const uint8_t* TensorData(const GgufTensorInfo& tensor) const;

  // Tells the kernel that the pages of [data, data + n_bytes) will not be read
  // again (after repacking them elsewhere), so they stop counting in RSS.
  void ReleasePages(const uint8_t* data, uint64_t n_bytes) const;

 private:
  GgufFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;             // base_ is an mmap (else owned_ holds it)
  std::vector<uint8_t> owned_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

// Streaming GGUF writer. Usage:
//   GgufWriter w;
//   w.AddMetadata("general.architecture", GgufValue::String("deepseek2"));
//   w.AddTensor("token_embd.weight", GgmlType::kQ4_K, {2048, 102400});
//   RETURN_IF_ERROR(w.Begin(path));          // writes header + infos
//   RETURN_IF_ERROR(w.WriteTensor("token_embd.weight", bytes));  // in order
//   RETURN_IF_ERROR(w.Finish());             // fsync + rename into place
// The file is written to `path + ".tmp"` and renamed on Finish, so a failed
// or interrupted write never leaves a truncated file under `path`.
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3, uint64_t alignment = 32);
  ~GgufWriter();

  // Metadata keys are written in the order added; a duplicate key is an error
  // (reported by Begin). "general.alignment" is added by Begin when the
  // alignment is not the default 32.
  void AddMetadata(std::string key, GgufValue value);
  // Declares a tensor; offsets are assigned in declaration order, each
  // aligned. Shape errors (row not a multiple of the block) are reported by
  // Begin, naming the tensor.
  void AddTensor(std::string name, GgmlType type, std::vector<int64_t> ne);

  absl::Status Begin(const std::string& path);
  // Writes the next tensor's bytes; tensors must come in declaration order
  // and `bytes.size()` must equal the tensor's size (FailedPrecondition /
  // InvalidArgument otherwise). May be called several times per tensor with
  // consecutive chunks (the call that completes it pads to alignment).
  absl::Status WriteTensor(absl::string_view name, absl::Span<const uint8_t> bytes);
  absl::Status Finish();

  // Total file size once finished (valid after Begin).
  uint64_t planned_size() const { return planned_size_; }

 private:
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    uint64_t offset = 0;
    uint64_t n_bytes = 0;
  };
  uint32_t version_;
  uint64_t alignment_;
  std::vector<GgufKeyValue> metadata_;
  std::vector<PendingTensor> tensors_;
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  size_t next_tensor_ = 0;
  uint64_t written_in_tensor_ = 0;
  uint64_t planned_size_ = 0;
  uint64_t position_ = 0;
  std::vector<uint8_t> buffer_;
  absl::Status Flush();
  absl::Status WriteBytes(const void* data, size_t n);
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_GGUF_H_
