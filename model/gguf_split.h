// Split GGUF models: one model in several files ("shards"), as llama.cpp's
// `llama-gguf-split --split` and gguf-py's GGUFWriter write them.
//
// Role in the data flow: GgufFile::Open (gguf.h) calls OpenGgufShards, so
// every process that opens a model — given any one shard's path — finds,
// maps and validates the whole set; `moeflow mkmodel --split-max-size /
// --split-max-tensors` writes one with GgufSplitWriter.
//
// The format (llama.cpp's LLM_KV_SPLIT_* keys and llama_split_path):
//   - shard i of n (from 0) is named PREFIX-%05d-of-%05d.gguf with i+1, n;
//   - every shard holds split.no = i (u16), split.count = n (u16) and
//     split.tensors.count = all tensors of the model (i32);
//   - the first shard holds every model key (written first, the split keys
//     appended after them: split.no, split.tensors.count, split.count), the
//     others only the split keys; tensors keep
//     the model's order, each in exactly one shard, offsets relative to its
//     own file's data section.
// gguf-split puts tensor i in a new shard when i % max_tensors == 0
// (i > 0), or when the shard's tensor bytes (each padded to 32) would pass
// max_size (a first tensor alone above it is an error).
//
// Thread-safety: free functions are thread-safe; a GgufSplitWriter is not.
// Failure: OpenGgufShards returns NotFound for a missing shard, naming the
// file it looked for and the shard number, and InvalidArgument for a shard
// set that does not fit together — a shard of another split (split.count or
// split.tensors.count or a shared key differs), one renamed or duplicated
// (its split.no is not the one its name says), a tensor in two shards, a
// tensor count that does not add up — or a truncated or malformed shard
// (GgufShard's errors), each naming the file at fault. Nothing stays mapped
// after an error.
#ifndef MOEFLOW_MODEL_GGUF_SPLIT_H_
#define MOEFLOW_MODEL_GGUF_SPLIT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/gguf.h"
#include "model/gguf_shard.h"

namespace moeflow {

inline constexpr char kGgufSplitNoKey[] = "split.no";
inline constexpr char kGgufSplitCountKey[] = "split.count";
inline constexpr char kGgufSplitTensorsCountKey[] = "split.tensors.count";

// "PREFIX-00002-of-00009.gguf" for split_no 1 of 9.
std::string GgufSplitPath(absl::string_view prefix, int split_no, int split_count);
// PREFIX when `path` is GgufSplitPath(PREFIX, split_no, split_count) with a
// non-empty PREFIX; nullopt otherwise (llama_split_prefix).
std::optional<std::string> GgufSplitPrefix(absl::string_view path, int split_no, int split_count);

// A file's split keys. `present` is false when it has none of them (a plain
// file). InvalidArgument (naming the file and key) for a wrong type, a count
// < 1 or > 65535, split.no outside [0, count), or some keys without the others.
struct GgufSplitKeys {
  bool present = false;
  int no = 0;
  int count = 1;
  int64_t tensors_count = 0;
};
absl::StatusOr<GgufSplitKeys> ReadGgufSplitKeys(const GgufMetadata& metadata);

// Opens the model `path` belongs to: the file alone when it has no split
// keys (or split.count 1), else every shard of its set, in split.no order,
// each validated and the set checked as above. Tensors get their shard
// index. `reads_tensor` (may be empty: all) says which tensors this process
// will read; shards that hold none of them are validated and then unmapped.
absl::StatusOr<std::vector<std::unique_ptr<GgufShard>>> OpenGgufShards(
    const std::string& path, const std::function<bool(const GgufTensorInfo&)>& reads_tensor);

// ---------------------------------------------------------------------------
// Writing.

struct GgufSplitLimits {
  uint64_t max_bytes = 0;   // 0: no size limit (gguf-split --split-max-size)
  int64_t max_tensors = 0;  // 0: no count limit (gguf-split --split-max-tensors)
  bool enabled() const { return max_bytes > 0 || max_tensors > 0; }
};

// "--split-max-size" as gguf-split reads it: a positive integer followed by
// M (10^6 bytes) or G (10^9 bytes). InvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseGgufSplitSize(absl::string_view text);

// The shard (from 0) of each tensor, given each tensor's data bytes, by
// gguf-split's rule (above). Exactly one of the limits must be set, as
// gguf-split splits by one of them. InvalidArgument when both or neither
// are set, or when the first tensor alone exceeds max_bytes (gguf-split
// refuses that too).
absl::StatusOr<std::vector<int>> PlanGgufSplit(absl::Span<const uint64_t> tensor_bytes,
                                               const GgufSplitLimits& limits);

// Writes a model as shards, with GgufWriter's interface: metadata and
// tensors declared first, Begin(prefix) writes every shard's header (to
// NAME.tmp), WriteTensor streams each tensor into its shard in declaration
// order, Finish renames all shards into place at once, so a failed or
// interrupted write leaves no shard under a final name. `prefix` is the
// path without "-00001-of-0000N.gguf". Errors: GgufWriter's, naming the shard.
class GgufSplitWriter {
 public:
  explicit GgufSplitWriter(GgufSplitLimits limits);

  void AddMetadata(std::string key, GgufValue value);
  void AddTensor(std::string name, GgmlType type, std::vector<int64_t> ne);

  absl::Status Begin(const std::string& prefix);
  absl::Status WriteTensor(absl::string_view name, absl::Span<const uint8_t> bytes);
  absl::Status Finish();

  // Valid after Begin: each shard's final path, and all shards' bytes.
  const std::vector<std::string>& shard_paths() const { return paths_; }
  uint64_t planned_size() const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
  };
  GgufSplitLimits limits_;
  std::vector<GgufKeyValue> metadata_;
  std::vector<Tensor> tensors_;
  std::vector<int> shard_of_;
  std::vector<std::unique_ptr<GgufWriter>> shards_;
  std::vector<std::string> paths_;
  size_t next_tensor_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_GGUF_SPLIT_H_
