// MFLG logits files: a token sequence and the logits of every position.
//
// Role in the data flow: llama.cpp's reference logits (tests/data/llamacpp,
// written by bench/dump_logits.cpp) come in this format, and moeflow writes
// its own logits in it so that the two can be compared by tests and tools.
//
// Layout (MFLG v1, little-endian): "MFLG", u32 version = 1, u32 n_tokens,
// u32 n_vocab, n_tokens × u32 token ids, n_tokens × n_vocab f32 logits (one
// row per position); 16 + 4·n + 4·n·n_vocab bytes in all.
//
// Thread-safety: plain functions. Failure: ReadLogitsFile returns NotFound
// for a missing file and InvalidArgument naming the file and what is wrong
// (magic, version, size); WriteLogitsFile returns InvalidArgument for
// inconsistent sizes and Internal/PermissionDenied for I/O errors, naming the
// path.
#ifndef MOEFLOW_MODEL_DEEPSEEK2_LOGITS_FILE_H_
#define MOEFLOW_MODEL_DEEPSEEK2_LOGITS_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moeflow {

struct LogitsFile {
  std::vector<uint32_t> tokens;
  int64_t n_vocab = 0;
  std::vector<float> logits;  // [tokens.size() × n_vocab]

  int64_t n_tokens() const { return static_cast<int64_t>(tokens.size()); }
  const float* row(int64_t i) const { return logits.data() + i * n_vocab; }
};

absl::Status WriteLogitsFile(const std::string& path, const LogitsFile& file);
absl::StatusOr<LogitsFile> ReadLogitsFile(const std::string& path);

}  // namespace moeflow

#endif  // MOEFLOW_MODEL_DEEPSEEK2_LOGITS_FILE_H_
