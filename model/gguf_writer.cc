// GGUF writer: header, metadata and tensor infos in one go, then tensor bytes
// streamed through a buffer, each tensor padded with zeros to the alignment
// (also the last one, as llama.cpp's writers do).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "model/gguf.h"

namespace moeflow {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" as a little-endian u32.
constexpr uint64_t kDefaultAlignment = 32;
constexpr size_t kBufferBytes = size_t{4} << 20;
constexpr uint32_t kMaxDims = 4;  // ggml's GGML_MAX_DIMS.
// ggml's GGML_MAX_NAME (64) includes the terminating NUL; llama.cpp rejects
// longer names.
constexpr size_t kMaxTensorName = 63;
constexpr int kMaxArrayDepth = 16;  // as the reader accepts

absl::Status ErrnoStatus(int err, absl::string_view what, const std::string& path) {
  const std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

class Serializer {
 public:
  std::vector<uint8_t>& bytes() { return out_; }

  template <typename T>
  void Put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }

 private:
  std::vector<uint8_t> out_;
};

// Checks that `v` can be encoded as its type (values in range, arrays
// homogeneous) and appends its encoding (without the type tag).
absl::Status PutValue(const GgufValue& v, const std::string& key, int depth, Serializer& out) {
  auto out_of_range = [&](auto value) {
    return absl::InvalidArgumentError(absl::StrCat("metadata key '", absl::CHexEscape(key),
                                                   "': value ", value, " does not fit in ",
                                                   GgufTypeName(v.type())));
  };
  auto put_uint = [&](auto tag) -> absl::Status {
    using T = decltype(tag);
    if (v.as_uint() > std::numeric_limits<T>::max()) return out_of_range(v.as_uint());
    out.Put<T>(static_cast<T>(v.as_uint()));
    return absl::OkStatus();
  };
  auto put_int = [&](auto tag) -> absl::Status {
    using T = decltype(tag);
    if (v.as_int() > std::numeric_limits<T>::max() || v.as_int() < std::numeric_limits<T>::min()) {
      return out_of_range(v.as_int());
    }
    out.Put<T>(static_cast<T>(v.as_int()));
    return absl::OkStatus();
  };
  switch (v.type()) {
    case GgufType::kUint8:
    case GgufType::kBool:
      return put_uint(uint8_t{});
    case GgufType::kUint16:
      return put_uint(uint16_t{});
    case GgufType::kUint32:
      return put_uint(uint32_t{});
    case GgufType::kUint64:
      return put_uint(uint64_t{});
    case GgufType::kInt8:
      return put_int(int8_t{});
    case GgufType::kInt16:
      return put_int(int16_t{});
    case GgufType::kInt32:
      return put_int(int32_t{});
    case GgufType::kInt64:
      return put_int(int64_t{});
    case GgufType::kFloat32:
      out.Put<float>(static_cast<float>(v.as_float()));
      return absl::OkStatus();
    case GgufType::kFloat64:
      out.Put<double>(v.as_float());
      return absl::OkStatus();
    case GgufType::kString:
      out.PutString(v.as_string());
      return absl::OkStatus();
    case GgufType::kArray: {
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError(absl::StrCat("metadata key '", absl::CHexEscape(key),
                                                       "': arrays nest deeper than ",
                                                       kMaxArrayDepth, " levels"));
      }
      if (static_cast<uint32_t>(v.element_type()) > static_cast<uint32_t>(GgufType::kFloat64)) {
        return absl::InvalidArgumentError(absl::StrCat("metadata key '", absl::CHexEscape(key),
                                                       "': unknown element type ",
                                                       static_cast<uint32_t>(v.element_type())));
      }
      out.Put<uint32_t>(static_cast<uint32_t>(v.element_type()));
      out.Put<uint64_t>(v.as_array().size());
      for (size_t i = 0; i < v.as_array().size(); ++i) {
        const GgufValue& e = v.as_array()[i];
        if (e.type() != v.element_type()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "metadata key '", absl::CHexEscape(key), "': element ", i, " is a ",
              GgufTypeName(e.type()), " in an array of ", GgufTypeName(v.element_type())));
        }
        MOEFLOW_RETURN_IF_ERROR(PutValue(e, key, depth + 1, out));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("metadata key '", absl::CHexEscape(key),
                                                 "': unknown value type ",
                                                 static_cast<uint32_t>(v.type())));
}

}  // namespace

GgufWriter::GgufWriter(uint32_t version, uint64_t alignment)
    : version_(version), alignment_(alignment) {}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  } else if (closed_) {
    ::unlink(tmp_path_.c_str());  // closed but never committed
  }
}

void GgufWriter::AddMetadata(std::string key, GgufValue value) {
  metadata_.push_back(GgufKeyValue{std::move(key), std::move(value)});
}

void GgufWriter::AddTensor(std::string name, GgmlType type, std::vector<int64_t> ne) {
  tensors_.push_back(PendingTensor{std::move(name), type, std::move(ne)});
}

absl::Status GgufWriter::Begin(const std::string& path) {
  if (!path_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": GgufWriter::Begin called twice (first for ", path_, ")"));
  }
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (version_ != 2 && version_ != 3) {
    return bad(absl::StrCat("cannot write GGUF version ", version_, " (only 2 and 3)"));
  }
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0 ||
      alignment_ > std::numeric_limits<uint32_t>::max()) {
    return bad(absl::StrCat("alignment ", alignment_, " is not a power of two that fits in u32"));
  }

  // Metadata: no duplicates; general.alignment, if given, must agree.
  absl::flat_hash_set<std::string> keys;
  bool has_alignment_key = false;
  for (const GgufKeyValue& kv : metadata_) {
    if (!keys.insert(kv.key).second) {
      return bad(absl::StrCat("duplicate metadata key '", absl::CHexEscape(kv.key), "'"));
    }
    if (kv.key == "general.alignment") {
      if (kv.value.type() != GgufType::kUint32 || kv.value.as_uint() != alignment_) {
        return bad(absl::StrCat("metadata key 'general.alignment' = ", kv.value.DebugString(), " (",
                                GgufTypeName(kv.value.type()),
                                ") disagrees with the writer's alignment ", alignment_, " (u32)"));
      }
      has_alignment_key = true;
    }
  }
  if (!has_alignment_key && alignment_ != kDefaultAlignment) {
    metadata_.push_back(
        GgufKeyValue{"general.alignment", GgufValue::Uint(GgufType::kUint32, alignment_)});
  }

  // Tensors: valid shapes, unique names; offsets in declaration order.
  absl::flat_hash_set<std::string> names;
  uint64_t data_bytes = 0;
  for (PendingTensor& t : tensors_) {
    const std::string label = absl::StrCat("tensor '", absl::CHexEscape(t.name), "'");
    if (!names.insert(t.name).second) return bad(absl::StrCat("duplicate ", label));
    if (t.name.size() > kMaxTensorName) {
      return bad(absl::StrCat(label, ": name is longer than ", kMaxTensorName, " bytes"));
    }
    if (t.ne.empty() || t.ne.size() > kMaxDims) {
      return bad(
          absl::StrCat(label, ": ", t.ne.size(), " dimensions (expected 1 to ", kMaxDims, ")"));
    }
    if (!FindGgmlType(static_cast<uint32_t>(t.type)).has_value()) {
      return bad(absl::StrCat(label, ": unknown ggml type ", static_cast<uint32_t>(t.type)));
    }
    int64_t n_elements = 1;
    for (size_t d = 0; d < t.ne.size(); ++d) {
      if (t.ne[d] <= 0) {
        return bad(absl::StrCat(label, ": dimension ne[", d, "] = ", t.ne[d], " is not positive"));
      }
      if (__builtin_mul_overflow(n_elements, t.ne[d], &n_elements)) {
        return bad(absl::StrCat(label, ": element count overflows int64"));
      }
    }
    absl::StatusOr<int64_t> row_bytes = RowBytes(t.type, t.ne[0]);
    if (!row_bytes.ok()) return bad(absl::StrCat(label, ": ", row_bytes.status().message()));
    int64_t n_bytes = 0;
    if (__builtin_mul_overflow(*row_bytes, n_elements / t.ne[0], &n_bytes)) {
      return bad(absl::StrCat(label, ": byte size overflows int64"));
    }
    t.offset = data_bytes;
    t.n_bytes = static_cast<uint64_t>(n_bytes);
    data_bytes += AlignUp(t.n_bytes, alignment_);
  }

  // Header, metadata and tensor infos.
  Serializer header;
  header.Put<uint32_t>(kGgufMagic);
  header.Put<uint32_t>(version_);
  header.Put<uint64_t>(tensors_.size());
  header.Put<uint64_t>(metadata_.size());
  for (const GgufKeyValue& kv : metadata_) {
    header.PutString(kv.key);
    header.Put<uint32_t>(static_cast<uint32_t>(kv.value.type()));
    absl::Status status = PutValue(kv.value, kv.key, 0, header);
    if (!status.ok()) return bad(status.message());
  }
  for (const PendingTensor& t : tensors_) {
    header.PutString(t.name);
    header.Put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t ne : t.ne) header.Put<uint64_t>(static_cast<uint64_t>(ne));
    header.Put<uint32_t>(static_cast<uint32_t>(t.type));
    header.Put<uint64_t>(t.offset);
  }
  const uint64_t data_offset = AlignUp(header.bytes().size(), alignment_);
  header.bytes().resize(data_offset, 0);
  planned_size_ = data_offset + data_bytes;

  path_ = path;
  tmp_path_ = path + ".tmp";
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoStatus(errno, "cannot create", tmp_path_);
  buffer_.clear();
  buffer_.reserve(kBufferBytes);
  position_ = 0;
  next_tensor_ = 0;
  written_in_tensor_ = 0;
  return WriteBytes(header.bytes().data(), header.bytes().size());
}

absl::Status GgufWriter::WriteTensor(absl::string_view name, absl::Span<const uint8_t> bytes) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_.empty() ? std::string("GgufWriter") : path_, ": WriteTensor('", name,
                     "') without an open file (Begin not called, failed, or Finish done)"));
  }
  if (next_tensor_ >= tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": WriteTensor('", name, "') after all ", tensors_.size(), " tensors were written"));
  }
  const PendingTensor& t = tensors_[next_tensor_];
  if (name != t.name) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": WriteTensor('", name,
                                                      "') out of order: expected tensor '", t.name,
                                                      "' (#", next_tensor_, ") next"));
  }
  if (bytes.size() > t.n_bytes - written_in_tensor_) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", t.name, "' (", Traits(t.type).name, ") takes ", t.n_bytes,
                     " bytes; ", written_in_tensor_, " written, ", bytes.size(), " more given"));
  }
  MOEFLOW_RETURN_IF_ERROR(WriteBytes(bytes.data(), bytes.size()));
  written_in_tensor_ += bytes.size();
  if (written_in_tensor_ == t.n_bytes) {
    static const uint8_t kZeros[256] = {};
    uint64_t padding = AlignUp(t.n_bytes, alignment_) - t.n_bytes;
    while (padding > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(padding, sizeof(kZeros)));
      MOEFLOW_RETURN_IF_ERROR(WriteBytes(kZeros, n));
      padding -= n;
    }
    ++next_tensor_;
    written_in_tensor_ = 0;
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::Finish() {
  MOEFLOW_RETURN_IF_ERROR(Close());
  return Commit();
}

absl::Status GgufWriter::Close() {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_.empty() ? std::string("GgufWriter") : path_,
        ": Finish without an open file (Begin not called, failed, or Finish already done)"));
  }
  if (next_tensor_ < tensors_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": Finish with tensor '", tensors_[next_tensor_].name, "' (#",
                     next_tensor_, " of ", tensors_.size(), ") not completely written"));
  }
  MOEFLOW_RETURN_IF_ERROR(Flush());
  MOEFLOW_CHECK(position_ == planned_size_);
  if (::fsync(fd_) != 0) return ErrnoStatus(errno, "fsync failed", tmp_path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoStatus(err, "close failed", tmp_path_);
  }
  closed_ = true;
  return absl::OkStatus();
}

absl::Status GgufWriter::Commit() {
  if (!closed_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_.empty() ? std::string("GgufWriter") : path_,
                     ": Commit without a closed file (Close not called, failed, or Commit done)"));
  }
  closed_ = false;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoStatus(err, absl::StrCat("cannot rename ", tmp_path_, " to"), path_);
  }
  // Make the rename itself durable.
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path_.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::Flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      // The file is unusable now: drop it so later calls fail cleanly.
      buffer_.clear();
      ::close(fd_);
      fd_ = -1;
      ::unlink(tmp_path_.c_str());
      return ErrnoStatus(err, absl::StrCat("write failed at byte offset ", position_ + done),
                         tmp_path_);
    }
    done += static_cast<size_t>(n);
  }
  position_ += done;
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status GgufWriter::WriteBytes(const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const size_t room = kBufferBytes - buffer_.size();
    const size_t take = std::min(room, n);
    buffer_.insert(buffer_.end(), p, p + take);
    p += take;
    n -= take;
    if (buffer_.size() == kBufferBytes) MOEFLOW_RETURN_IF_ERROR(Flush());
  }
  return absl::OkStatus();
}

}  // namespace moeflow
