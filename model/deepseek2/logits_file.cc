#include "model/deepseek2/logits_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"

namespace moeflow {
namespace {

constexpr char kMagic[4] = {'M', 'F', 'L', 'G'};
constexpr uint32_t kVersion = 1;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

absl::Status WriteLogitsFile(const std::string& path, const LogitsFile& file) {
  if (file.n_vocab <= 0 || file.n_vocab > std::numeric_limits<uint32_t>::max() ||
      file.tokens.size() > std::numeric_limits<uint32_t>::max() ||
      file.logits.size() != file.tokens.size() * static_cast<size_t>(file.n_vocab)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": inconsistent logits: ", file.tokens.size(), " tokens, n_vocab ",
                     file.n_vocab, ", ", file.logits.size(), " logits"));
  }
  std::vector<uint8_t> bytes;
  bytes.reserve(16 + 4 * file.tokens.size() + 4 * file.logits.size());
  bytes.insert(bytes.end(), kMagic, kMagic + 4);
  PutU32(bytes, kVersion);
  PutU32(bytes, static_cast<uint32_t>(file.tokens.size()));
  PutU32(bytes, static_cast<uint32_t>(file.n_vocab));
  for (uint32_t t : file.tokens) PutU32(bytes, t);
  for (float f : file.logits) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    PutU32(bytes, u);
  }
  FilePtr f(std::fopen(path.c_str(), "wb"));
  if (!f) return IoError("cannot create", path);
  if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size()) {
    return IoError("cannot write", path);
  }
  if (std::fclose(f.release()) != 0) return IoError("cannot close", path);
  return absl::OkStatus();
}

absl::StatusOr<LogitsFile> ReadLogitsFile(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no such file: ", path));
    return IoError("cannot open", path);
  }
  std::vector<uint8_t> bytes;
  uint8_t buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f.get())) > 0)
    bytes.insert(bytes.end(), buf, buf + got);
  if (std::ferror(f.get())) return IoError("cannot read", path);

  if (bytes.size() < 16 || std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not an MFLG logits file (bad magic)"));
  }
  const uint32_t version = GetU32(bytes.data() + 4);
  if (version != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": MFLG version ", version, ", only ", kVersion, " is known"));
  }
  const uint64_t n_tokens = GetU32(bytes.data() + 8);
  const uint64_t n_vocab = GetU32(bytes.data() + 12);
  const uint64_t expected = 16 + 4 * n_tokens + 4 * n_tokens * n_vocab;
  if (n_vocab == 0 || bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", bytes.size(), " bytes, but header (",
                                                   n_tokens, " tokens, n_vocab ", n_vocab,
                                                   ") needs ", expected));
  }
  LogitsFile out;
  out.n_vocab = static_cast<int64_t>(n_vocab);
  out.tokens.resize(n_tokens);
  const uint8_t* p = bytes.data() + 16;
  for (uint64_t i = 0; i < n_tokens; ++i, p += 4) out.tokens[i] = GetU32(p);
  out.logits.resize(n_tokens * n_vocab);
  for (uint64_t i = 0; i < n_tokens * n_vocab; ++i, p += 4) {
    const uint32_t u = GetU32(p);
    std::memcpy(&out.logits[i], &u, 4);
  }
  return out;
}

}  // namespace moeflow
