// GgufFile: a model over its shards (one for a plain file). Parsing is
// GgufShard's (gguf_shard.cc), finding and checking a split set is
// gguf_split.cc's; this file joins their tensor tables.
#include "model/gguf.h"

#include <string>
#include <utility>
#include <vector>

#include "base/check.h"
#include "model/gguf_shard.h"
#include "model/gguf_split.h"

namespace moeflow {

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path,
                                                         const GgufOpenOptions& options) {
  MOEFLOW_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<GgufShard>> shards,
                           OpenGgufShards(path, options.reads_tensor));
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->shards_ = std::move(shards);
  file->Index();
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(absl::Span<const uint8_t> bytes,
                                                              std::string name) {
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufShard> shard,
                           GgufShard::FromBytes(bytes, std::move(name)));
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->shards_.push_back(std::move(shard));
  file->Index();
  return file;
}

GgufFile::~GgufFile() = default;

void GgufFile::Index() {
  MOEFLOW_CHECK(!shards_.empty());
  metadata_ = &shards_[0]->metadata();
  size_t n = 0;
  for (const auto& shard : shards_) n += shard->tensors().size();
  tensors_.reserve(n);
  tensor_index_.reserve(n);
  for (const auto& shard : shards_) {
    for (const GgufTensorInfo& t : shard->tensors()) {
      // Names are unique across shards (OpenGgufShards checked).
      tensor_index_.emplace(t.name, tensors_.size());
      tensors_.push_back(t);
    }
  }
}

const std::string& GgufFile::path() const { return shards_[0]->path(); }
uint32_t GgufFile::version() const { return shards_[0]->version(); }
uint64_t GgufFile::alignment() const { return shards_[0]->alignment(); }
uint64_t GgufFile::data_offset() const { return shards_[0]->data_offset(); }

uint64_t GgufFile::file_size() const {
  uint64_t total = 0;
  for (const auto& shard : shards_) total += shard->file_size();
  return total;
}

const GgufShard& GgufFile::shard(int i) const {
  MOEFLOW_CHECK(i >= 0 && i < shard_count());
  return *shards_[i];
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) return nullptr;
  return &tensors_[it->second];
}

const uint8_t* GgufFile::TensorData(const GgufTensorInfo& tensor) const {
  MOEFLOW_CHECK(tensor.shard >= 0 && tensor.shard < shard_count());
  return shards_[tensor.shard]->TensorData(tensor);
}

bool GgufFile::Holds(const uint8_t* data) const {
  for (const auto& shard : shards_) {
    if (shard->Contains(data)) return true;
  }
  return false;
}

void GgufFile::ReleasePages(const uint8_t* data, uint64_t n_bytes) const {
  for (const auto& shard : shards_) {
    if (shard->Contains(data)) {
      shard->ReleasePages(data, n_bytes);
      return;
    }
  }
}

}  // namespace moeflow
