#include "kernels/cpu/weight_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/knobs.h"

namespace moeflow {

bool AdviseHugePages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  const uintptr_t begin =
      (reinterpret_cast<uintptr_t>(data) + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePageBytes - 1);
  if (begin >= end) return false;
  return ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#else
  (void)data;
  (void)bytes;
  return false;
#endif
}

absl::StatusOr<WeightBuffer> WeightBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("WeightBuffer::Allocate: 0 bytes");
  const size_t rounded = (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  // One huge page more than needed, so that an aligned start fits inside.
  const size_t mapping_bytes = rounded + kHugePageBytes;
  void* p =
      ::mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("weight memory: mmap of ", mapping_bytes,
                                                     " bytes failed: ", std::strerror(errno)));
  }
  WeightBuffer b;
  b.mapping_ = p;
  b.mapping_bytes_ = mapping_bytes;
  b.data_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kHugePageBytes - 1) &
                                       ~(kHugePageBytes - 1));
  b.size_ = bytes;
  b.huge_pages_ = HugePagesEnabled() && AdviseHugePages(b.data_, rounded);
  return b;
}

void WeightBuffer::Release() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  data_ = nullptr;
  mapping_bytes_ = 0;
  size_ = 0;
  huge_pages_ = false;
}

WeightBuffer::~WeightBuffer() { Release(); }

WeightBuffer::WeightBuffer(WeightBuffer&& other) noexcept { *this = std::move(other); }

WeightBuffer& WeightBuffer::operator=(WeightBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    size_ = std::exchange(other.size_, 0);
    huge_pages_ = std::exchange(other.huge_pages_, false);
  }
  return *this;
}

bool HugePagesEnabled() {
  static const bool on = KnobBool(Knob::kHugePages);
  return on;
}

std::string CopyWouldNotFit(int64_t bytes) {
  const int64_t available = AvailableMemoryBytes();
  if (available < 0 || bytes <= available / 10 * 8) return "";
  return absl::StrFormat("copying %.2f GiB would take more than 80 %% of the %.2f GiB available",
                         static_cast<double>(bytes) / (1 << 30),
                         static_cast<double>(available) / (1 << 30));
}

int64_t AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

}  // namespace moeflow
