// GGUF reader for one file: maps it and validates header, metadata and
// tensor infos.
//
// Every length and count read from the file is checked against the bytes that
// remain before it is used to allocate or index, so a hostile header can make
// Open fail but never allocate more than a small multiple of the file size.
#include "model/gguf_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "GGUF parsing assumes a little-endian host");

namespace moeflow {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32.
constexpr uint64_t kDefaultAlignment = 32;
// ggml's GGML_MAX_DIMS.
constexpr uint32_t kMaxDims = 4;
// Arrays may nest; deeper nesting than this is surely not a model file and
// would otherwise let a small file recurse deep enough to overflow the stack.
constexpr int kMaxArrayDepth = 16;
// Every metadata value becomes a GgufValue (~100 bytes), so a file of N bytes
// of u8 array elements would cost ~100 N bytes of memory. Real files hold
// about 1M values (a 256k vocabulary and its merges); cap well above that.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 24;

// What a ggml type id moeflow does not read is (ggml.h's enum ggml_type,
// llama.cpp v0.5.0), for the error that names it.
std::string UnreadGgmlTypeText(uint32_t id) {
  switch (id) {
    case 4:
    case 5:
      return "q4_2 / q4_3, removed from ggml";
    case 31:
    case 32:
    case 33:
      return "q4_0_4_4 / q4_0_4_8 / q4_0_8_8, removed from GGUF files";
    case 36:
    case 37:
    case 38:
      return "iq4_nl_4_4 / iq4_nl_4_8 / iq4_nl_8_8, removed from GGUF files";
    case 39:
      return "ggml's mxfp4, which moeflow does not read";
    case 40:
      return "ggml's nvfp4, which moeflow does not read";
    case 41:
      return "ggml's q1_0, which moeflow does not read";
    case 42:
      return "ggml's q2_0, which moeflow does not read";
    default:
      return "not a ggml type";
  }
}

// Smallest encoding of one key/value pair: empty key (u64 length), u32 type,
// one u8 value; and of one tensor info: empty name, u32 n_dims, one u64 dim,
// u32 type, u64 offset.
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

bool IsKnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

// Bytes a scalar of `type` occupies; 0 for strings and arrays.
uint64_t ScalarBytes(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

// Smallest number of bytes one value of `type` can occupy in a file.
uint64_t MinEncodedBytes(GgufType type) {
  switch (type) {
    case GgufType::kString:
      return 8;  // u64 length
    case GgufType::kArray:
      return 4 + 8;  // u32 element type + u64 count
    default:
      return ScalarBytes(type);
  }
}

std::string Text(absl::string_view text) { return std::string(text); }
template <typename F, typename = decltype(std::declval<const F&>()())>
std::string Text(const F& make_text) {
  return make_text();
}

// A bounds-checked reader over the file image. Errors name the file and the
// byte offset where the field that did not fit starts.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const std::string& file)
      : data_(data), size_(size), file_(file) {}

  uint64_t offset() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Error(uint64_t at, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_, ": ", what, " (at byte offset ", at, ")"));
  }

  // `what` describes the field, as text or as a callable that makes the text
  // (so the hot path over a vocabulary never formats messages).
  template <typename What>
  absl::Status Truncated(uint64_t need, const What& what) const {
    return Error(pos_, absl::StrCat("file is truncated: ", Text(what), " needs ", need,
                                    " bytes but only ", remaining(), " remain"));
  }

  template <typename T, typename What>
  absl::Status Read(T* out, const What& what) {
    if (remaining() < sizeof(T)) return Truncated(sizeof(T), what);
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  template <typename What>
  absl::Status ReadString(std::string* out, const What& what) {
    const uint64_t start = pos_;
    uint64_t length = 0;
    if (remaining() < sizeof(length)) {
      return Truncated(sizeof(length), absl::StrCat("the length of ", Text(what)));
    }
    MOEFLOW_RETURN_IF_ERROR(Read(&length, ""));
    if (length > remaining()) {
      return Error(start,
                   absl::StrCat("length ", length, " of ", Text(what),
                                " runs past the end of the file (", remaining(), " bytes remain)"));
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return absl::OkStatus();
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& file_;
};

template <typename T, typename What>
absl::Status ReadScalar(Cursor& in, GgufType type, const What& what, GgufValue* out) {
  T v{};
  MOEFLOW_RETURN_IF_ERROR(in.Read(&v, what));
  if constexpr (std::is_floating_point_v<T>) {
    *out = GgufValue::Float(type, v);
  } else if constexpr (std::is_signed_v<T>) {
    *out = GgufValue::Int(type, v);
  } else {
    *out = GgufValue::Uint(type, v);
  }
  return absl::OkStatus();
}

// Parses one value of `type` (already read) at the cursor. `key` names it in
// errors; `depth` counts enclosing arrays; `n_values` counts values so far.
absl::Status ParseValue(Cursor& in, GgufType type, const std::string& key, int depth,
                        uint64_t& n_values, GgufValue* out) {
  if (++n_values > kMaxMetadataValues) {
    return in.Error(in.offset(), absl::StrCat("key '", absl::CHexEscape(key), "': more than ",
                                              kMaxMetadataValues, " metadata values in the file"));
  }
  auto what = [&] {
    return absl::StrCat("the ", GgufTypeName(type), " value of key '", absl::CHexEscape(key), "'");
  };
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kBool:
      return ReadScalar<uint8_t>(in, type, what, out);
    case GgufType::kUint16:
      return ReadScalar<uint16_t>(in, type, what, out);
    case GgufType::kUint32:
      return ReadScalar<uint32_t>(in, type, what, out);
    case GgufType::kUint64:
      return ReadScalar<uint64_t>(in, type, what, out);
    case GgufType::kInt8:
      return ReadScalar<int8_t>(in, type, what, out);
    case GgufType::kInt16:
      return ReadScalar<int16_t>(in, type, what, out);
    case GgufType::kInt32:
      return ReadScalar<int32_t>(in, type, what, out);
    case GgufType::kInt64:
      return ReadScalar<int64_t>(in, type, what, out);
    case GgufType::kFloat32:
      return ReadScalar<float>(in, type, what, out);
    case GgufType::kFloat64:
      return ReadScalar<double>(in, type, what, out);
    case GgufType::kString: {
      std::string s;
      MOEFLOW_RETURN_IF_ERROR(in.ReadString(&s, what));
      *out = GgufValue::String(std::move(s));
      return absl::OkStatus();
    }
    case GgufType::kArray: {
      const uint64_t start = in.offset();
      if (depth >= kMaxArrayDepth) {
        return in.Error(start,
                        absl::StrCat("key '", absl::CHexEscape(key), "': arrays nest deeper than ",
                                     kMaxArrayDepth, " levels"));
      }
      uint32_t element_type = 0;
      MOEFLOW_RETURN_IF_ERROR(
          in.Read(&element_type, [&] { return absl::StrCat("the element type of ", what()); }));
      if (!IsKnownType(element_type)) {
        return in.Error(start, absl::StrCat("key '", absl::CHexEscape(key),
                                            "': unknown array element type ", element_type));
      }
      const GgufType elem = static_cast<GgufType>(element_type);
      const uint64_t count_offset = in.offset();
      uint64_t count = 0;
      MOEFLOW_RETURN_IF_ERROR(
          in.Read(&count, [&] { return absl::StrCat("the length of ", what()); }));
      const uint64_t min_bytes = MinEncodedBytes(elem);
      if (count > in.remaining() / min_bytes) {
        return in.Error(
            count_offset,
            absl::StrCat("key '", absl::CHexEscape(key), "': array length ", count, " of ",
                         GgufTypeName(elem), " runs past the end of the file (", in.remaining(),
                         " bytes remain, each element needs at least ", min_bytes, ")"));
      }
      std::vector<GgufValue> elements(count);
      for (uint64_t i = 0; i < count; ++i) {
        MOEFLOW_RETURN_IF_ERROR(ParseValue(in, elem, key, depth + 1, n_values, &elements[i]));
      }
      *out = GgufValue::Array(elem, std::move(elements));
      return absl::OkStatus();
    }
  }
  return in.Error(in.offset(), "unreachable value type");
}

}  // namespace

absl::StatusOr<std::unique_ptr<GgufShard>> GgufShard::Open(const std::string& path) {
  // O_NONBLOCK: a FIFO must not block Open; it is rejected below as not a
  // regular file. (No effect on regular files.)
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat(path, ": fstat failed: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<GgufShard> file(new GgufShard());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  file->device_ = static_cast<uint64_t>(st.st_dev);
  file->inode_ = static_cast<uint64_t>(st.st_ino);
  if (file->size_ > 0) {
    void* base = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat(path, ": mmap of ", file->size_, " bytes failed: ", std::strerror(err)));
    }
    file->base_ = static_cast<const uint8_t*>(base);
    file->mapped_ = true;
  }
  ::close(fd);  // The mapping keeps the file alive.
  MOEFLOW_RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufShard>> GgufShard::FromBytes(absl::Span<const uint8_t> bytes,
                                                                std::string name) {
  std::unique_ptr<GgufShard> file(new GgufShard());
  file->path_ = std::move(name);
  file->owned_.assign(bytes.begin(), bytes.end());
  file->base_ = file->owned_.data();
  file->size_ = file->owned_.size();
  MOEFLOW_RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufShard::~GgufShard() { Unmap(); }

absl::Status GgufShard::Parse() {
  static const uint8_t kEmpty[1] = {0};
  Cursor in(base_ != nullptr ? base_ : kEmpty, size_, path_);

  // Header.
  uint32_t magic = 0;
  MOEFLOW_RETURN_IF_ERROR(in.Read(&magic, "the header's magic"));
  if (magic != kGgufMagic) {
    return in.Error(
        0,
        absl::StrCat("bad magic \"",
                     absl::CHexEscape(absl::string_view(reinterpret_cast<const char*>(base_), 4)),
                     "\", expected \"GGUF\": not a GGUF file"));
  }
  MOEFLOW_RETURN_IF_ERROR(in.Read(&version_, "the header's version"));
  if (version_ == 1) {
    return in.Error(4, "GGUF v1 is not supported (it used 32-bit counts); convert the file to v3");
  }
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 &&
        (__builtin_bswap32(version_) == 2 || __builtin_bswap32(version_) == 3)) {
      return in.Error(4, absl::StrCat("big-endian GGUF (version ", __builtin_bswap32(version_),
                                      ") is not supported"));
    }
    return in.Error(4, absl::StrCat("unsupported GGUF version ", version_, " (expected 2 or 3)"));
  }
  uint64_t tensor_count = 0;
  uint64_t kv_count = 0;
  MOEFLOW_RETURN_IF_ERROR(in.Read(&tensor_count, "the header's tensor count"));
  MOEFLOW_RETURN_IF_ERROR(in.Read(&kv_count, "the header's metadata key/value count"));
  // Check both counts against the bytes left before reserving anything.
  if (kv_count > in.remaining() / kMinKeyValueBytes) {
    return in.Error(16, absl::StrCat("metadata key/value count ", kv_count,
                                     " cannot fit in the remaining ", in.remaining(), " bytes"));
  }
  if (tensor_count > (in.remaining() - kv_count * kMinKeyValueBytes) / kMinTensorInfoBytes) {
    return in.Error(8, absl::StrCat("tensor count ", tensor_count, " cannot fit in the remaining ",
                                    in.remaining(), " bytes"));
  }

  // Metadata.
  metadata_ = GgufMetadata(path_);
  metadata_.Reserve(kv_count);
  uint64_t n_values = 0;
  for (uint64_t i = 0; i < kv_count; ++i) {
    const uint64_t kv_offset = in.offset();
    GgufKeyValue kv;
    MOEFLOW_RETURN_IF_ERROR(in.ReadString(&kv.key, absl::StrCat("metadata key #", i)));
    const std::string escaped_key = absl::CHexEscape(kv.key);
    if (metadata_.contains(kv.key)) {
      return in.Error(kv_offset, absl::StrCat("duplicate metadata key '", escaped_key, "'"));
    }
    const uint64_t type_offset = in.offset();
    uint32_t type = 0;
    MOEFLOW_RETURN_IF_ERROR(
        in.Read(&type, absl::StrCat("the value type of key '", escaped_key, "'")));
    if (!IsKnownType(type)) {
      return in.Error(type_offset,
                      absl::StrCat("key '", escaped_key, "': unknown value type ", type));
    }
    MOEFLOW_RETURN_IF_ERROR(
        ParseValue(in, static_cast<GgufType>(type), kv.key, 0, n_values, &kv.value));
    metadata_.Add(std::move(kv));
  }

  alignment_ = kDefaultAlignment;
  if (const GgufValue* a = metadata_.Find("general.alignment"); a != nullptr) {
    if (a->type() != GgufType::kUint32) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": key 'general.alignment' is a ",
                                                     a->TypeDescription(), ", expected u32"));
    }
    const uint64_t v = a->as_uint();
    if (v == 0 || (v & (v - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": key 'general.alignment' is ", v,
                                                     ", expected a nonzero power of two"));
    }
    alignment_ = v;
  }

  // Tensor infos.
  tensors_.reserve(tensor_count);
  absl::flat_hash_set<std::string> names;
  names.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    const uint64_t info_offset = in.offset();
    GgufTensorInfo t;
    MOEFLOW_RETURN_IF_ERROR(in.ReadString(&t.name, absl::StrCat("the name of tensor #", i)));
    const std::string label = absl::StrCat("tensor '", absl::CHexEscape(t.name), "'");
    if (names.contains(t.name)) {
      return in.Error(info_offset, absl::StrCat("duplicate ", label));
    }
    const uint64_t dims_offset = in.offset();
    uint32_t n_dims = 0;
    MOEFLOW_RETURN_IF_ERROR(in.Read(&n_dims, absl::StrCat("the n_dims of ", label)));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return in.Error(dims_offset, absl::StrCat(label, ": n_dims ", n_dims,
                                                " is out of range (expected 1 to ", kMaxDims, ")"));
    }
    t.ne.resize(n_dims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim_offset = in.offset();
      uint64_t ne = 0;
      MOEFLOW_RETURN_IF_ERROR(in.Read(&ne, absl::StrCat("dimension ", d, " of ", label)));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return in.Error(dim_offset, absl::StrCat(label, ": dimension ne[", d, "] = ",
                                                 static_cast<int64_t>(ne), " is not positive"));
      }
      t.ne[d] = static_cast<int64_t>(ne);
      if (__builtin_mul_overflow(n_elements, t.ne[d], &n_elements)) {
        return in.Error(dim_offset, absl::StrCat(label, ": element count of shape ",
                                                 t.ShapeString(), " overflows int64"));
      }
    }
    t.n_elements = n_elements;
    const uint64_t type_offset = in.offset();
    uint32_t type_id = 0;
    MOEFLOW_RETURN_IF_ERROR(in.Read(&type_id, absl::StrCat("the ggml type of ", label)));
    const std::optional<GgmlTypeTraits> traits = FindGgmlType(type_id);
    if (!traits.has_value()) {
      return in.Error(type_offset, absl::StrCat(label, ": unknown ggml type ", type_id, " (",
                                                UnreadGgmlTypeText(type_id), ")"));
    }
    t.type = traits->type;
    if (t.ne[0] % traits->block_size != 0) {
      return in.Error(dims_offset,
                      absl::StrCat(label, ": row of ", t.ne[0], " elements is not a multiple of ",
                                   traits->name, "'s block size ", traits->block_size));
    }
    int64_t row_bytes = 0;
    int64_t n_bytes = 0;
    if (__builtin_mul_overflow(t.ne[0] / traits->block_size, traits->type_size, &row_bytes) ||
        __builtin_mul_overflow(row_bytes, t.rows(), &n_bytes)) {
      return in.Error(dims_offset, absl::StrCat(label, ": byte size of shape ", t.ShapeString(),
                                                " overflows int64"));
    }
    t.n_bytes = static_cast<uint64_t>(n_bytes);
    const uint64_t offset_offset = in.offset();
    MOEFLOW_RETURN_IF_ERROR(in.Read(&t.offset, absl::StrCat("the data offset of ", label)));
    if (t.offset % alignment_ != 0) {
      return in.Error(offset_offset,
                      absl::StrCat(label, ": data offset ", t.offset,
                                   " is not a multiple of the alignment ", alignment_));
    }
    names.insert(t.name);
    tensors_.push_back(std::move(t));
  }

  // Tensor data starts at the next multiple of the alignment.
  const uint64_t end_of_infos = in.offset();
  const uint64_t padding = (alignment_ - end_of_infos % alignment_) % alignment_;
  if (padding > size_ - end_of_infos) {
    if (!tensors_.empty()) {
      return in.Error(end_of_infos,
                      absl::StrCat("file is truncated: the data section should start at ",
                                   end_of_infos + padding, " (alignment ", alignment_,
                                   ") but the file has ", size_, " bytes"));
    }
    data_offset_ = size_;  // No tensors: a file may end without padding.
  } else {
    data_offset_ = end_of_infos + padding;
  }
  const uint64_t data_bytes = size_ - data_offset_;

  // Every tensor inside the file, none overlapping.
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const GgufTensorInfo& t : tensors_) {
    if (t.offset > data_bytes || t.n_bytes > data_bytes - t.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor '", absl::CHexEscape(t.name), "' (", Traits(t.type).name,
                       " ", t.ShapeString(), ", ", t.n_bytes, " bytes at data offset ", t.offset,
                       ") extends past the end of the file (data section of ", data_bytes,
                       " bytes at byte offset ", data_offset_, ")"));
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& prev = *by_offset[i - 1];
    const GgufTensorInfo& next = *by_offset[i];
    if (prev.offset + prev.n_bytes > next.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor '", absl::CHexEscape(prev.name), "' (data offset ",
                       prev.offset, ", ", prev.n_bytes, " bytes) overlaps tensor '",
                       absl::CHexEscape(next.name), "' (data offset ", next.offset, ")"));
    }
  }
  return absl::OkStatus();
}

const uint8_t* GgufShard::TensorData(const GgufTensorInfo& tensor) const {
  MOEFLOW_CHECK(mapped());  // a shard this process chose not to map (GgufOpenOptions)
  return base_ + data_offset_ + tensor.offset;
}

bool GgufShard::Contains(const uint8_t* data) const {
  return base_ != nullptr && data >= base_ && data < base_ + size_;
}

void GgufShard::Unmap() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(base_), size_);
  mapped_ = false;
  base_ = nullptr;
  owned_.clear();
  owned_.shrink_to_fit();
}

void GgufShard::ReleasePages(const uint8_t* data, uint64_t n_bytes) const {
  if (!mapped_ || data == nullptr || n_bytes == 0) return;
  // Only whole pages inside both the range and the mapping: a page shared
  // with a neighbouring tensor that is still in use stays resident.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t map_begin = reinterpret_cast<uintptr_t>(base_);
  const uintptr_t map_end = map_begin + size_;
  uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  uintptr_t end = begin + n_bytes;
  if (end < begin) return;
  begin = std::max(begin, map_begin);
  end = std::min(end, map_end);
  begin = (begin + page - 1) / page * page;
  // The mapping's last partial page belongs to nothing else: release it too.
  end = end == map_end ? (end + page - 1) / page * page : end / page * page;
  if (begin >= end) return;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace moeflow
