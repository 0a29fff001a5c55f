// One GGUF file on disk (or one in-memory image): maps it and parses the
// header, metadata and tensor infos, validating every field.
//
// Role in the data flow: GgufFile (gguf.h) opens one GgufShard for a plain
// model file and one per shard of a split model (gguf_split.h); processes
// use GgufFile, not this. Opening maps the file read-only and parses only
// the header, metadata and tensor infos; tensor bytes stay on disk until
// touched, so a 380 GB file opens in milliseconds.
//
// Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64
// tensor_count, u64 kv_count, kv_count × (string key, u32 value type, value),
// tensor_count × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type,
// u64 offset), padding to `general.alignment` (default 32), tensor data.
// Strings are u64 length + bytes (no NUL). Arrays are u32 element type + u64
// count + elements, and may nest.
//
// Thread-safety: immutable after Open except Unmap (call it before sharing);
// const methods from any thread.
// Failure: Open never crashes on a bad file. It returns InvalidArgument (or
// NotFound / PermissionDenied for the path) with a message naming the file,
// what is wrong and where: the byte offset, the metadata key or the tensor
// (a tensor that extends past the end of the file: "truncated").
#ifndef MOEFLOW_MODEL_GGUF_SHARD_H_
#define MOEFLOW_MODEL_GGUF_SHARD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf_metadata.h"
#include "model/gguf_value.h"

namespace moeflow {

class GgufShard {
 public:
  // Maps `path` read-only and parses it. Errors: NotFound/PermissionDenied
  // (path), InvalidArgument (bad file; names the file, offset and field).
  static absl::StatusOr<std::unique_ptr<GgufShard>> Open(const std::string& path);
  // Parses an in-memory image (copied). `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<GgufShard>> FromBytes(absl::Span<const uint8_t> bytes,
                                                              std::string name);

  ~GgufShard();
  GgufShard(const GgufShard&) = delete;
  GgufShard& operator=(const GgufShard&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of tensor data
  // Device and inode of an opened file (0 for an in-memory image).
  uint64_t device() const { return device_; }
  uint64_t inode() const { return inode_; }

  const GgufMetadata& metadata() const { return metadata_; }
  // Tensor infos in file order; `shard` is 0 until the owner renumbers them.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  std::vector<GgufTensorInfo>& mutable_tensors() { return tensors_; }

  // Whether the tensor bytes can be read (false after Unmap).
  bool mapped() const { return base_ != nullptr || size_ == 0; }
  // Start of a tensor's bytes (valid while the shard lives and is mapped).
  const uint8_t* TensorData(const GgufTensorInfo& tensor) const;
  // Whether [data, data + n) lies in this shard's mapping.
  bool Contains(const uint8_t* data) const;
  // Tells the kernel the pages of [data, data + n_bytes) will not be read
  // again, so they stop counting in RSS (only whole pages of the range that
  // lie in this mapping).
  void ReleasePages(const uint8_t* data, uint64_t n_bytes) const;
  // Drops the mapping of a file whose tensors this process never reads; the
  // parsed header stays. TensorData is a programmer error afterwards.
  void Unmap();

 private:
  GgufShard() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;  // base_ is an mmap (else owned_ holds it)
  std::vector<uint8_t> owned_;
  uint64_t device_ = 0;
  uint64_t inode_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  GgufMetadata metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_GGUF_SHARD_H_
