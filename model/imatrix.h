// Importance matrices as llama.cpp's llama-imatrix writes them, read the way
// llama-quantize --imatrix reads them.
//
// Role in the data flow: `moeflow mkmodel --imatrix FILE` (model_generator.h)
// loads the matrix once and hands each tensor's entry to ggml's
// importance-weighted quantizers (kernels/cpu/quants.h QuantizeRows); a
// routed-expert tensor {ne0, ne1, n_expert} uses slice e (ne0 values) for
// expert e's rows.
//
// Formats (both are what llama-imatrix v0.5.0 writes):
//   - GGUF (the default): general.type = "imatrix", the keys
//     imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size, and per
//     weight tensor W the F32 tensors W.in_sum2 {ne0, n_mat} (sums of squared
//     activations) and W.counts {1, n_mat} (tokens seen per matrix). The
//     importance is in_sum2 / counts per matrix, 1 where the count is 0.
//   - legacy .dat (--output-format dat): int32 n_entries, then per entry
//     int32 name length, the name, int32 ncall, int32 nval, nval float32
//     (mean squared activation times ncall); optionally int32 chunk count,
//     int32 dataset-name length and the name. The importance is the values /
//     ncall (as stored when ncall is 0).
// A file starting with "GGUF" is read as GGUF, anything else as legacy, as
// llama.cpp's common_imatrix_load falls back to the legacy reader.
//
// Thread-safety: an ImportanceMatrix is immutable after Load; const methods
// may be called from any thread. Failure: Load returns NotFound for a missing
// file and InvalidArgument naming the file and what is wrong (the entry, the
// offset, a missing W.counts, a non-F32 tensor, missing GGUF metadata, a
// non-finite value); ForTensor returns InvalidArgument naming the tensor and
// both sizes when an entry does not fit it.
#ifndef MOEFLOW_MODEL_IMATRIX_H_
#define MOEFLOW_MODEL_IMATRIX_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow {

class ImportanceMatrix {
 public:
  static absl::StatusOr<ImportanceMatrix> Load(const std::string& path);

  // The importance of the weight tensor `tensor_name` (n_mat * ne0 values,
  // matrix-major), normalized as llama-quantize does; null if none.
  const std::vector<float>* Find(absl::string_view tensor_name) const;

  // The entry for tensor `name` of ggml shape `ne`, as llama-quantize takes
  // it: null when there is none (or, for token_embd.weight, when its size
  // does not fit: llama-quantize ignores that one), an error when its size is
  // not ne[0] * ne[2] (ne[2] = 1 for a 2-D tensor).
  absl::StatusOr<const float*> ForTensor(absl::string_view name,
                                         const std::vector<int64_t>& ne) const;

  const std::string& path() const { return path_; }
  bool legacy() const { return legacy_; }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  const std::vector<std::string>& datasets() const { return datasets_; }
  int64_t chunk_count() const { return chunk_count_; }
  int64_t chunk_size() const { return chunk_size_; }  // 0 in the legacy format
  std::vector<std::string> names() const;

 private:
  std::string path_;
  bool legacy_ = false;
  std::map<std::string, std::vector<float>, std::less<>> entries_;
  std::vector<std::string> datasets_;
  int64_t chunk_count_ = 0;
  int64_t chunk_size_ = 0;

  absl::Status ReadGguf();
  absl::Status ReadLegacy(const std::string& bytes);
};

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_IMATRIX_H_
