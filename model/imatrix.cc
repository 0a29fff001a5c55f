#include "model/imatrix.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/check.h"
#include "model/gguf.h"

namespace moeflow {
namespace {

constexpr absl::string_view kSums = ".in_sum2";
constexpr absl::string_view kCounts = ".counts";

// A little-endian reader over the legacy file's bytes.
class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  bool Read(void* out, size_t n) {
    if (bytes_.size() - pos_ < n) return false;
    std::memcpy(out, bytes_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool ReadInt(int32_t& v) { return Read(&v, sizeof(v)); }
  size_t pos() const { return pos_; }
  bool at_end() const { return pos_ == bytes_.size(); }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<ImportanceMatrix> ImportanceMatrix::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open the imatrix file"));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
  ImportanceMatrix m;
  m.path_ = path;
  if (absl::StartsWith(bytes, "GGUF")) {
    bytes.clear();
    MOEFLOW_RETURN_IF_ERROR(m.ReadGguf());
  } else {
    m.legacy_ = true;
    MOEFLOW_RETURN_IF_ERROR(m.ReadLegacy(bytes));
  }
  // llama-quantize refuses a matrix with a non-finite value.
  for (const auto& [name, values] : m.entries_) {
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": entry ", name, " value ", i, " is not finite (", values[i], ")"));
      }
    }
  }
  return m;
}

absl::Status ImportanceMatrix::ReadGguf() {
  MOEFLOW_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path_));
  // llama-quantize: "missing imatrix metadata" unless all three keys exist.
  for (const char* key : {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"}) {
    if (file->Find(key) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": missing imatrix metadata (no key ", key, ")"));
    }
  }
  MOEFLOW_ASSIGN_OR_RETURN(datasets_, file->GetStringArray("imatrix.datasets"));
  MOEFLOW_ASSIGN_OR_RETURN(chunk_count_, file->GetInt("imatrix.chunk_count"));
  MOEFLOW_ASSIGN_OR_RETURN(chunk_size_, file->GetInt("imatrix.chunk_size"));
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> parts;
  for (const GgufTensorInfo& t : file->tensors()) {
    absl::string_view name = t.name;
    if (absl::ConsumeSuffix(&name, kSums)) {
      parts[std::string(name)].first = &t;
    } else if (absl::ConsumeSuffix(&name, kCounts)) {
      parts[std::string(name)].second = &t;
    }
  }
  if (parts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": no imatrix entries (no tensor named *", kSums, ")"));
  }
  for (const auto& [name, pair] : parts) {
    const GgufTensorInfo* sums = pair.first;
    const GgufTensorInfo* counts = pair.second;
    if (sums == nullptr || counts == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": entry ", name, " has ",
                                                     sums == nullptr ? kCounts : kSums, " but no ",
                                                     sums == nullptr ? kSums : kCounts));
    }
    for (const GgufTensorInfo* t : {sums, counts}) {
      if (t->type != GgmlType::kF32) {
        return absl::InvalidArgumentError(
            absl::StrCat(path_, ": tensor ", t->name, " is ", Traits(t->type).name, ", not f32"));
      }
    }
    const int64_t n_mat = counts->n_elements;
    if (n_mat < 1 || sums->n_elements % n_mat != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": entry ", name, ": ", sums->n_elements, " sums do not split into ",
                       n_mat, " matrices (", counts->name, " has ", n_mat, " counts)"));
    }
    const int64_t ne0 = sums->n_elements / n_mat;
    const float* s = reinterpret_cast<const float*>(file->TensorData(*sums));
    const float* c = reinterpret_cast<const float*>(file->TensorData(*counts));
    std::vector<float> values(sums->n_elements);
    for (int64_t j = 0; j < n_mat; ++j) {
      // common_imatrix_load rounds the counts to integers (std::lround).
      const float count = static_cast<float>(std::lround(c[j]));
      for (int64_t i = 0; i < ne0; ++i) {
        values[j * ne0 + i] = count > 0.f ? s[j * ne0 + i] / count : 1.f;
      }
    }
    entries_[name] = std::move(values);
  }
  return absl::OkStatus();
}

absl::Status ImportanceMatrix::ReadLegacy(const std::string& bytes) {
  Reader r(bytes);
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": not an imatrix file (neither GGUF nor the legacy format): ", what,
                     " at byte ", r.pos()));
  };
  int32_t n_entries = 0;
  if (!r.ReadInt(n_entries)) return bad("no entry count");
  if (n_entries < 1) return bad(absl::StrCat("entry count ", n_entries));
  for (int32_t i = 0; i < n_entries; ++i) {
    int32_t len = 0;
    if (!r.ReadInt(len) || len < 1 || static_cast<size_t>(len) > bytes.size()) {
      return bad(absl::StrCat("entry ", i, ": bad name length ", len));
    }
    std::string name(static_cast<size_t>(len), '\0');
    if (!r.Read(name.data(), name.size())) return bad(absl::StrCat("entry ", i, ": name cut off"));
    name = std::string(name.c_str());  // as llama.cpp: up to the first NUL
    int32_t ncall = 0, nval = 0;
    if (!r.ReadInt(ncall) || !r.ReadInt(nval) || nval < 1) {
      return bad(absl::StrCat("entry ", i, " (", name, "): bad call or value count"));
    }
    std::vector<float> values(static_cast<size_t>(nval));
    if (static_cast<uint64_t>(nval) * 4 > bytes.size() ||
        !r.Read(values.data(), values.size() * sizeof(float))) {
      return bad(absl::StrCat("entry ", i, " (", name, "): ", nval, " values cut off"));
    }
    // llama-quantize: values / ncall (the file holds mean * ncall).
    if (ncall > 0) {
      for (float& v : values) v /= static_cast<float>(ncall);
    }
    entries_[name] = std::move(values);
  }
  // The optional trailer: chunk count and dataset name.
  int32_t n_chunks = 0;
  if (!r.at_end() && r.ReadInt(n_chunks)) {
    chunk_count_ = n_chunks;
    int32_t len = 0;
    if (r.ReadInt(len) && len > 0 && static_cast<size_t>(len) <= bytes.size()) {
      std::string dataset(static_cast<size_t>(len), '\0');
      if (r.Read(dataset.data(), dataset.size())) datasets_.push_back(dataset.c_str());
    }
  }
  return absl::OkStatus();
}

const std::vector<float>* ImportanceMatrix::Find(absl::string_view tensor_name) const {
  auto it = entries_.find(tensor_name);
  return it == entries_.end() ? nullptr : &it->second;
}

absl::StatusOr<const float*> ImportanceMatrix::ForTensor(absl::string_view name,
                                                         const std::vector<int64_t>& ne) const {
  const std::vector<float>* entry = Find(name);
  if (entry == nullptr || ne.empty()) return nullptr;
  const int64_t want = ne[0] * (ne.size() > 2 ? ne[2] : 1);
  if (static_cast<int64_t>(entry->size()) == want) return entry->data();
  if (name == "token_embd.weight") return nullptr;  // llama-quantize ignores it
  return absl::InvalidArgumentError(absl::StrCat(
      path_, ": imatrix entry ", name, " has ", entry->size(), " values, the tensor needs ", want,
      " (ne0 ", ne[0], " x ", ne.size() > 2 ? ne[2] : 1, " matrices)"));
}

std::vector<std::string> ImportanceMatrix::names() const {
  std::vector<std::string> out;
  for (const auto& [name, values] : entries_) out.push_back(name);
  return out;
}

}  // namespace moeflow
