// GGUF model files: a validating, memory-mapped reader of a model — one
// file, or every shard of a split model — and a streaming writer.
//
// Role in the data flow: every process that needs weights (cpu_expert_worker,
// gpu_worker, the single-process engine, `moeflow inspect`) opens the model
// with GgufFile::Open, given the file or any shard of a split model
// (gguf_split.h: the other shards are found by name and the set is
// validated). Opening maps the files and parses only the headers, metadata
// and tensor infos (gguf_shard.h); tensor bytes stay on disk until touched,
// so a 380 GB model opens in milliseconds. The model's metadata is its first
// shard's; its tensors are those of all shards, each knowing its shard.
// GgufWriter writes files that llama.cpp's loader accepts, tensor by tensor,
// so a generator never holds a whole model (GgufSplitWriter: as shards).
//
// Thread-safety: a GgufFile is immutable after Open; all const methods may be
// called from any thread. GgufWriter is not thread-safe.
//
// Failure: Open never crashes on a bad file. It returns InvalidArgument (or
// NotFound / PermissionDenied for a path) with a message naming the file,
// what is wrong and where: the byte offset, the metadata key, the tensor, or
// the shard that is missing or does not belong (gguf_split.h). A failed Open
// leaves nothing mapped.
#ifndef MOEFLOW_MODEL_GGUF_H_
#define MOEFLOW_MODEL_GGUF_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "formats/ggml_types.h"
#include "model/gguf_metadata.h"
#include "model/gguf_value.h"

namespace moeflow {

class GgufShard;

struct GgufOpenOptions {
  // The tensors this process will read (empty: all). Shards of a split model
  // that hold none of them are validated and then unmapped; TensorData on
  // their tensors is a programmer error.
  std::function<bool(const GgufTensorInfo&)> reads_tensor;
};

class GgufFile {
 public:
  // Maps the model `path` is (a file) or belongs to (a shard of a split
  // model) read-only and parses every header. Errors: NotFound/PermissionDenied
  // (a path), InvalidArgument (a bad file or shard set; the message names the
  // file, offset and field).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path,
                                                        const GgufOpenOptions& options = {});

  // Parses an in-memory image (copied) as one whole file (split keys are not
  // followed). `name` is used in error messages. Used by tests and the fuzzer.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(absl::Span<const uint8_t> bytes,
                                                             std::string name);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // The first shard's path (the file's, for a model in one file).
  const std::string& path() const;
  uint32_t version() const;    // the first shard's
  uint64_t alignment() const;  // the first shard's
  uint64_t file_size() const;  // all shards together
  // Absolute offset where the first shard's tensor data begins.
  uint64_t data_offset() const;

  // The files of the model, in split.no order (one for a plain file).
  int shard_count() const { return static_cast<int>(shards_.size()); }
  const GgufShard& shard(int i) const;

  const std::vector<GgufKeyValue>& metadata() const { return metadata_->entries(); }
  const GgufValue* Find(absl::string_view key) const { return metadata_->Find(key); }

  // Typed getters (gguf_metadata.h). NotFound if the key is absent,
  // InvalidArgument (naming the key and its actual type) if the type does
  // not fit. GetInt accepts any integer type whose value fits in int64;
  // GetFloat accepts f32/f64 and integers; GetBool accepts bool only.
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const { return metadata_->GetInt(key); }
  absl::StatusOr<double> GetFloat(absl::string_view key) const { return metadata_->GetFloat(key); }
  absl::StatusOr<bool> GetBool(absl::string_view key) const { return metadata_->GetBool(key); }
  absl::StatusOr<std::string> GetString(absl::string_view key) const {
    return metadata_->GetString(key);
  }
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const {
    return metadata_->GetStringArray(key);
  }
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const {
    return metadata_->GetIntArray(key);
  }
  absl::StatusOr<std::vector<double>> GetFloatArray(absl::string_view key) const {
    return metadata_->GetFloatArray(key);
  }
  // The value or `fallback` when the key is absent (errors on a wrong type).
  absl::StatusOr<int64_t> GetIntOr(absl::string_view key, int64_t fallback) const {
    return metadata_->GetIntOr(key, fallback);
  }
  absl::StatusOr<double> GetFloatOr(absl::string_view key, double fallback) const {
    return metadata_->GetFloatOr(key, fallback);
  }
  absl::StatusOr<bool> GetBoolOr(absl::string_view key, bool fallback) const {
    return metadata_->GetBoolOr(key, fallback);
  }

  // Every tensor of the model, in file order (shard by shard).
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(absl::string_view name) const;

  // Start of a tensor's bytes in its shard's mapping (valid while the file
  // lives).
  const uint8_t* TensorData(const GgufTensorInfo& tensor) const;

  // Whether `data` points into one of the model's mappings.
  bool Holds(const uint8_t* data) const;

  // Tells the kernel that the pages of [data, data + n_bytes) will not be read
  // again (after repacking them elsewhere), so they stop counting in RSS.
  // A range outside every mapping is ignored.
  void ReleasePages(const uint8_t* data, uint64_t n_bytes) const;

 private:
  GgufFile() = default;
  void Index();

  std::vector<std::unique_ptr<GgufShard>> shards_;
  const GgufMetadata* metadata_ = nullptr;  // shards_[0]'s
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
  // Close + Commit.
  absl::Status Finish();
  // Flushes, fsyncs and closes NAME.tmp (the file stays unrenamed; the
  // destructor removes it unless Commit runs).
  absl::Status Close();
  // Renames NAME.tmp to NAME (after Close).
  absl::Status Commit();

  // Total file size once finished (valid after Begin).
  uint64_t planned_size() const { return planned_size_; }
  // The metadata added so far, in order.
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }

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
  bool closed_ = false;  // closed, not yet committed
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
