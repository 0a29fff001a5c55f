#include "model/gguf_split.h"

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"

namespace moeflow {
namespace {

// gguf-split pads every tensor to GGUF_DEFAULT_ALIGNMENT when it adds up a
// shard's size, whatever the file's alignment.
constexpr uint64_t kSplitSizeAlignment = 32;
constexpr int kMaxShards = 65535;  // split.count is a u16

std::string Suffix(int split_no, int split_count) {
  return absl::StrFormat("-%05d-of-%05d.gguf", split_no + 1, split_count);
}

// "shard 3 of 9".
std::string ShardLabel(int i, int n) { return absl::StrCat("shard ", i + 1, " of ", n); }

}  // namespace

std::string GgufSplitPath(absl::string_view prefix, int split_no, int split_count) {
  return absl::StrCat(prefix, Suffix(split_no, split_count));
}

std::optional<std::string> GgufSplitPrefix(absl::string_view path, int split_no, int split_count) {
  const std::string suffix = Suffix(split_no, split_count);
  if (path.size() <= suffix.size() || !absl::EndsWith(path, suffix)) return std::nullopt;
  return std::string(path.substr(0, path.size() - suffix.size()));
}

absl::StatusOr<GgufSplitKeys> ReadGgufSplitKeys(const GgufMetadata& m) {
  GgufSplitKeys keys;
  const bool has_no = m.contains(kGgufSplitNoKey);
  const bool has_count = m.contains(kGgufSplitCountKey);
  const bool has_tensors = m.contains(kGgufSplitTensorsCountKey);
  if (!has_no && !has_count && !has_tensors) return keys;
  if (!has_no || !has_count || !has_tensors) {
    return absl::InvalidArgumentError(
        absl::StrCat(m.file(), ": has only some of the split keys (", kGgufSplitNoKey,
                     has_no ? "" : " absent", ", ", kGgufSplitCountKey, has_count ? "" : " absent",
                     ", ", kGgufSplitTensorsCountKey, has_tensors ? "" : " absent", ")"));
  }
  MOEFLOW_ASSIGN_OR_RETURN(const int64_t no, m.GetInt(kGgufSplitNoKey));
  MOEFLOW_ASSIGN_OR_RETURN(const int64_t count, m.GetInt(kGgufSplitCountKey));
  MOEFLOW_ASSIGN_OR_RETURN(keys.tensors_count, m.GetInt(kGgufSplitTensorsCountKey));
  if (count < 1 || count > kMaxShards) {
    return absl::InvalidArgumentError(absl::StrCat(m.file(), ": ", kGgufSplitCountKey, " = ", count,
                                                   " is not in [1, ", kMaxShards, "]"));
  }
  if (no < 0 || no >= count) {
    return absl::InvalidArgumentError(absl::StrCat(m.file(), ": ", kGgufSplitNoKey, " = ", no,
                                                   " is not in [0, ", kGgufSplitCountKey, " = ",
                                                   count, ")"));
  }
  if (keys.tensors_count < 0) {
    return absl::InvalidArgumentError(absl::StrCat(m.file(), ": ", kGgufSplitTensorsCountKey, " = ",
                                                   keys.tensors_count, " is negative"));
  }
  keys.present = true;
  keys.no = static_cast<int>(no);
  keys.count = static_cast<int>(count);
  return keys;
}

namespace {

// Checks shard `i` of the set that `first` (shard 0) heads: its split keys
// and every key it shares with the first shard.
absl::Status CheckShardKeys(const GgufShard& shard, int i, int n, const GgufSplitKeys& expected,
                            const GgufShard& first, const std::string& opened) {
  MOEFLOW_ASSIGN_OR_RETURN(const GgufSplitKeys keys, ReadGgufSplitKeys(shard.metadata()));
  const std::string label =
      absl::StrCat(shard.path(), " (", ShardLabel(i, n), " of the model ", opened, " belongs to)");
  if (!keys.present) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": has no split keys: not a shard of a split model"));
  }
  if (keys.count != n) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", kGgufSplitCountKey, " = ",
                                                   keys.count, " but the set has ", n,
                                                   " shards: a shard of another split model"));
  }
  if (keys.no != i) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", kGgufSplitNoKey, " = ", keys.no,
                                                   " says it is ", ShardLabel(keys.no, n),
                                                   ": a duplicated or renamed shard"));
  }
  if (keys.tensors_count != expected.tensors_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": ", kGgufSplitTensorsCountKey, " = ", keys.tensors_count, " but ", first.path(),
        " says ", expected.tensors_count, ": a shard of another split model"));
  }
  if (&shard == &first) return absl::OkStatus();
  for (const GgufKeyValue& kv : shard.metadata().entries()) {
    if (kv.key == kGgufSplitNoKey) continue;
    const GgufValue* theirs = first.metadata().Find(kv.key);
    if (theirs != nullptr && !theirs->SameAs(kv.value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": metadata key '", absl::CHexEscape(kv.key), "' = ", kv.value.DebugString(4),
          " but ", first.path(), " has ", theirs->DebugString(4), ": a shard of another model"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<GgufShard>>> OpenGgufShards(
    const std::string& path, const std::function<bool(const GgufTensorInfo&)>& reads_tensor) {
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufShard> opened, GgufShard::Open(path));
  MOEFLOW_ASSIGN_OR_RETURN(const GgufSplitKeys keys, ReadGgufSplitKeys(opened->metadata()));
  std::vector<std::unique_ptr<GgufShard>> shards;
  if (!keys.present || keys.count == 1) {
    if (keys.present && keys.tensors_count != static_cast<int64_t>(opened->tensors().size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", kGgufSplitTensorsCountKey, " = ", keys.tensors_count, " but the file has ",
          opened->tensors().size(), " tensors (", kGgufSplitCountKey, " = 1)"));
    }
    shards.push_back(std::move(opened));
    return shards;
  }
  const int n = keys.count;
  const std::optional<std::string> prefix = GgufSplitPrefix(path, keys.no, n);
  if (!prefix.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", kGgufSplitNoKey, " = ", keys.no, " and ", kGgufSplitCountKey, " = ", n,
        " make it ", ShardLabel(keys.no, n), ", but its name does not end in ", Suffix(keys.no, n),
        "; the other shards are found by that name (as llama.cpp does)"));
  }
  shards.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (i == keys.no) {
      shards[i] = std::move(opened);
      continue;
    }
    const std::string shard_path = GgufSplitPath(*prefix, i, n);
    absl::StatusOr<std::unique_ptr<GgufShard>> shard = GgufShard::Open(shard_path);
    if (!shard.ok()) {
      if (shard.status().code() == absl::StatusCode::kNotFound) {
        return absl::NotFoundError(
            absl::StrCat(shard_path, ": ", ShardLabel(i, n), " of the split model ", path,
                         " belongs to is missing (", kGgufSplitCountKey, " = ", n, ")"));
      }
      return absl::Status(shard.status().code(),
                          absl::StrCat(ShardLabel(i, n), " of the split model ", path,
                                       " belongs to: ", shard.status().message()));
    }
    shards[i] = std::move(*shard);
  }
  // Shard 0 carries the model keys; every shard must agree with it.
  MOEFLOW_ASSIGN_OR_RETURN(const GgufSplitKeys first_keys,
                           ReadGgufSplitKeys(shards[0]->metadata()));
  for (int i = 0; i < n; ++i) {
    MOEFLOW_RETURN_IF_ERROR(CheckShardKeys(*shards[i], i, n, first_keys, *shards[0], path));
    for (int j = 0; j < i; ++j) {
      if (shards[i]->device() == shards[j]->device() && shards[i]->inode() == shards[j]->inode()) {
        return absl::InvalidArgumentError(absl::StrCat(shards[i]->path(), " and ",
                                                       shards[j]->path(),
                                                       " are the same file: a duplicated shard"));
      }
    }
  }
  absl::flat_hash_map<std::string, int> holder;
  int64_t total = 0;
  for (int i = 0; i < n; ++i) {
    for (GgufTensorInfo& t : shards[i]->mutable_tensors()) {
      t.shard = i;
      auto [it, inserted] = holder.emplace(t.name, i);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", absl::CHexEscape(t.name), "' is in both ", shards[it->second]->path(),
            " and ", shards[i]->path(), ": shards of different splits of the model"));
      }
    }
    total += static_cast<int64_t>(shards[i]->tensors().size());
  }
  if (total != first_keys.tensors_count) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the ", n, " shards of its split model hold ", total, " tensors but ",
                     kGgufSplitTensorsCountKey, " = ", first_keys.tensors_count, " (",
                     shards[0]->path(), "): shards of different splits of the model"));
  }
  if (reads_tensor) {
    for (std::unique_ptr<GgufShard>& shard : shards) {
      bool needed = false;
      for (const GgufTensorInfo& t : shard->tensors()) needed = needed || reads_tensor(t);
      if (!needed) shard->Unmap();
    }
  }
  return shards;
}

// ---------------------------------------------------------------------------
// Writing.

absl::StatusOr<uint64_t> ParseGgufSplitSize(absl::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("split size \"", text,
                     "\": expected a positive integer followed by M or G (as "
                     "llama-gguf-split: 1 M = 1000000 bytes, 1 G = 1000000000)"));
  };
  if (text.size() < 2) return bad();
  const char unit = text.back();
  uint64_t scale = 0;
  if (unit == 'M') scale = 1000ull * 1000;
  if (unit == 'G') scale = 1000ull * 1000 * 1000;
  uint64_t n = 0;
  if (scale == 0 || !absl::SimpleAtoi(text.substr(0, text.size() - 1), &n) || n == 0 ||
      n > UINT64_MAX / scale) {
    return bad();
  }
  return n * scale;
}

absl::StatusOr<std::vector<int>> PlanGgufSplit(absl::Span<const uint64_t> tensor_bytes,
                                               const GgufSplitLimits& limits) {
  if ((limits.max_bytes > 0) == (limits.max_tensors > 0)) {
    return absl::InvalidArgumentError(
        "split by a maximum size or by a maximum tensor count, exactly one (as llama-gguf-split)");
  }
  std::vector<int> shard_of(tensor_bytes.size(), 0);
  int shard = 0;
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < tensor_bytes.size(); ++i) {
    const uint64_t padded =
        (tensor_bytes[i] + kSplitSizeAlignment - 1) / kSplitSizeAlignment * kSplitSizeAlignment;
    bool split = false;
    if (limits.max_tensors > 0) {
      split = i > 0 && i % static_cast<uint64_t>(limits.max_tensors) == 0;
      shard_bytes += padded;
    } else {
      const uint64_t next = shard_bytes + padded;
      split = next > limits.max_bytes;
      if (split && i == 0) {
        return absl::InvalidArgumentError(absl::StrCat("the first tensor alone (", padded,
                                                       " bytes) is larger than the split size ",
                                                       limits.max_bytes, " bytes"));
      }
      shard_bytes = split ? padded : next;
    }
    if (split) ++shard;
    if (shard >= kMaxShards) {
      return absl::InvalidArgumentError(
          absl::StrCat("the split would need more than ", kMaxShards, " shards"));
    }
    shard_of[i] = shard;
  }
  return shard_of;
}

GgufSplitWriter::GgufSplitWriter(GgufSplitLimits limits) : limits_(limits) {}

void GgufSplitWriter::AddMetadata(std::string key, GgufValue value) {
  metadata_.push_back(GgufKeyValue{std::move(key), std::move(value)});
}

void GgufSplitWriter::AddTensor(std::string name, GgmlType type, std::vector<int64_t> ne) {
  tensors_.push_back(Tensor{std::move(name), type, std::move(ne)});
}

absl::Status GgufSplitWriter::Begin(const std::string& prefix) {
  if (!shards_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix, ": GgufSplitWriter::Begin called twice"));
  }
  std::vector<uint64_t> bytes;
  bytes.reserve(tensors_.size());
  for (const Tensor& t : tensors_) {
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    absl::StatusOr<int64_t> row_bytes =
        t.ne.empty() ? absl::StatusOr<int64_t>(0) : RowBytes(t.type, t.ne[0]);
    if (!row_bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, ": tensor '", t.name, "': ", row_bytes.status().message()));
    }
    bytes.push_back(static_cast<uint64_t>(*row_bytes * rows));
  }
  absl::StatusOr<std::vector<int>> plan = PlanGgufSplit(bytes, limits_);
  if (!plan.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": ", plan.status().message()));
  }
  shard_of_ = std::move(*plan);
  const int n = shard_of_.empty() ? 1 : shard_of_.back() + 1;
  for (int i = 0; i < n; ++i) {
    auto writer = std::make_unique<GgufWriter>();
    if (i == 0) {
      for (const GgufKeyValue& kv : metadata_) writer->AddMetadata(kv.key, kv.value);
    }
    // gguf-split's order: it sets split.count last (a placeholder replaced
    // once the shards are counted, which moves the key to the end).
    writer->AddMetadata(kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, i));
    writer->AddMetadata(kGgufSplitTensorsCountKey,
                        GgufValue::Int(GgufType::kInt32, static_cast<int64_t>(tensors_.size())));
    writer->AddMetadata(kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, n));
    shards_.push_back(std::move(writer));
    paths_.push_back(GgufSplitPath(prefix, i, n));
  }
  for (size_t t = 0; t < tensors_.size(); ++t) {
    shards_[shard_of_[t]]->AddTensor(tensors_[t].name, tensors_[t].type, tensors_[t].ne);
  }
  for (int i = 0; i < n; ++i) MOEFLOW_RETURN_IF_ERROR(shards_[i]->Begin(paths_[i]));
  return absl::OkStatus();
}

absl::Status GgufSplitWriter::WriteTensor(absl::string_view name, absl::Span<const uint8_t> bytes) {
  if (shards_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GgufSplitWriter: WriteTensor('", name, "') before Begin"));
  }
  // The current tensor, or the next one.
  if (next_tensor_ < tensors_.size() && tensors_[next_tensor_].name != name &&
      next_tensor_ + 1 < tensors_.size() && tensors_[next_tensor_ + 1].name == name) {
    ++next_tensor_;
  }
  if (next_tensor_ >= tensors_.size() || tensors_[next_tensor_].name != name) {
    return absl::FailedPreconditionError(absl::StrCat(
        paths_[0], ": WriteTensor('", name, "') out of order: expected tensor '",
        next_tensor_ < tensors_.size() ? tensors_[next_tensor_].name : "(none)", "' next"));
  }
  return shards_[shard_of_[next_tensor_]]->WriteTensor(name, bytes);
}

absl::Status GgufSplitWriter::Finish() {
  for (std::unique_ptr<GgufWriter>& shard : shards_) MOEFLOW_RETURN_IF_ERROR(shard->Close());
  for (std::unique_ptr<GgufWriter>& shard : shards_) MOEFLOW_RETURN_IF_ERROR(shard->Commit());
  return absl::OkStatus();
}

uint64_t GgufSplitWriter::planned_size() const {
  uint64_t total = 0;
  for (const std::unique_ptr<GgufWriter>& shard : shards_) total += shard->planned_size();
  return total;
}

}  // namespace moeflow
