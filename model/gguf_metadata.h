// The metadata (key/value) section of one GGUF file, with typed getters.
//
// Role in the data flow: GgufShard parses a file's keys into one; GgufFile
// answers its getters from the first shard's (the one llama.cpp's
// gguf-split gives every model key). Every getter's error names the file and
// the key, so a caller can pass it on unchanged.
//
// Thread-safety: immutable once built; const methods from any thread.
// Failure: NotFound for an absent key, InvalidArgument naming the key and
// its actual type when the type does not fit.
#ifndef MOEFLOW_MODEL_GGUF_METADATA_H_
#define MOEFLOW_MODEL_GGUF_METADATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/gguf_value.h"

namespace moeflow {

class GgufMetadata {
 public:
  // `file` names the file in error messages.
  explicit GgufMetadata(std::string file = "") : file_(std::move(file)) {}

  // Appends a key; false (and nothing added) if the key is already there.
  bool Add(GgufKeyValue kv);
  void Reserve(size_t n);

  const std::string& file() const { return file_; }
  const std::vector<GgufKeyValue>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  bool contains(absl::string_view key) const { return index_.contains(key); }
  const GgufValue* Find(absl::string_view key) const;

  // GetInt accepts any integer type whose value fits in int64; GetFloat
  // accepts f32/f64 and integers; GetBool accepts bool only.
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

 private:
  std::string file_;
  std::vector<GgufKeyValue> entries_;
  absl::flat_hash_map<std::string, size_t> index_;
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_GGUF_METADATA_H_
