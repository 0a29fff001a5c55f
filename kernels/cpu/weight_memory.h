// Memory for the weights the CPU kernels stream: anonymous, 2 MiB-aligned
// and advised for transparent huge pages.
//
// Role in the data flow: a GGUF file is mapped with 4 KiB pages. Decode
// streams hundreds of MiB per token through the matmul kernels, and with
// 4 KiB pages every 4 KiB of a weight stream costs a TLB miss (a page walk,
// nested under a hypervisor). At load, the engine (engine/engine.h:
// MoveWeightsToOwnMemory), the gpu worker's CPU backend and each
// cpu_expert_worker (through NodeBuffer, kernels/cpu/numa.h) copy the
// matrices they multiply into one WeightBuffer per component (matrices at
// 4 KiB boundaries, not each rounded to 2 MiB) and release the file's pages
// expert by expert, so the process's resident memory stays about the
// file's size (Q4_K_M pp512 peak 1.05x, Q8_0 1.01x on 2026-12-07,
// docs/cpu_speed.md). Measured on
// v2-lite 8 layers (Zen 3 VM, 2 threads, interleaved against
// MOEFLOW_HUGEPAGES=0): Q4_K_M decode +5.3 % (6 rounds, 0.99-1.13 each; the
// routed experts' and the output head's phases ~11 % shorter), prefill
// +1.7 %; Q8_0 decode +8.0 % (4 rounds, 1.03-1.14), prefill +2.0 %.
//
// The switch: MOEFLOW_HUGEPAGES=0 keeps the weights in the file mapping and
// advises no memory for huge pages (read once; 1, the default, copies and
// advises; any other value is reported on stderr and keeps the default).
// Callers also keep the mapping when the copy would not fit in the memory
// the kernel says is available (a model larger than RAM still runs from the
// page cache, as before).
//
// Thread-safety: WeightBuffer is a move-only value; the functions are
// thread-safe. Failure: Allocate returns RESOURCE_EXHAUSTED when the kernel
// refuses the memory; a refused huge-page advice (THP disabled, an old
// kernel) is not an error: the buffer then has 4 KiB pages (huge_pages()
// says so).
#ifndef MOEFLOW_KERNELS_CPU_WEIGHT_MEMORY_H_
#define MOEFLOW_KERNELS_CPU_WEIGHT_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace moeflow {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// The bytes a matrix of `bytes` takes in a WeightBuffer that packs several:
// rounded up to a 4 KiB boundary (rounding each to whole huge pages would
// waste ~1 MiB per matrix).
inline constexpr int64_t PackedMatrixBytes(int64_t bytes) {
  constexpr int64_t kAlign = 4096;
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

// Advises [data, data + bytes) for transparent huge pages (MADV_HUGEPAGE on
// the 2 MiB-aligned part). Returns whether the kernel accepted the advice.
bool AdviseHugePages(void* data, size_t bytes);

class WeightBuffer {
 public:
  WeightBuffer() = default;
  // `bytes` > 0, mapped in whole huge pages, advised for them when
  // HugePagesEnabled().
  static absl::StatusOr<WeightBuffer> Allocate(size_t bytes);
  ~WeightBuffer();
  WeightBuffer(WeightBuffer&& other) noexcept;
  WeightBuffer& operator=(WeightBuffer&& other) noexcept;
  WeightBuffer(const WeightBuffer&) = delete;
  WeightBuffer& operator=(const WeightBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }  // as asked for
  bool huge_pages() const { return huge_pages_; }

 private:
  void Release();

  uint8_t* data_ = nullptr;
  void* mapping_ = nullptr;  // what munmap gets (data_ is aligned inside it)
  size_t mapping_bytes_ = 0;
  size_t size_ = 0;
  bool huge_pages_ = false;
};

// MOEFLOW_HUGEPAGES (see above): whether weights are copied into
// WeightBuffers and memory is advised for huge pages.
bool HugePagesEnabled();

// MemAvailable of /proc/meminfo in bytes, or -1 when it cannot be read.
int64_t AvailableMemoryBytes();

// The callers' rule for copying `bytes` of weights: empty when the copy
// fits (at most 80 % of AvailableMemoryBytes(), or that cannot be read),
// else why not, in one phrase ("copying 3.10 GiB would take more than 80 %
// of the 2.00 GiB available").
std::string CopyWouldNotFit(int64_t bytes);

}  // namespace moeflow

#endif  // MOEFLOW_KERNELS_CPU_WEIGHT_MEMORY_H_
