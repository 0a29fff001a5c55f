// An allocator that aligns each allocation to `kAlign` bytes (default a
// cache line), for buffers that SIMD kernels stream with full-width loads:
// a 64-byte vector load from a 16-byte-aligned std::vector splits across two
// cache lines and costs two loads (the MLA score kernel ran at half speed).
//
// ScratchVector adds one thing: resize() leaves new elements of a trivial
// type uninitialized instead of zero-filling them, so that a scratch buffer
// reserved at load for the largest step costs resident memory only for the
// pages a step writes (zero-filling touches every page: a 512-token step's
// quantized-activation buffers are sized for F32 and mostly unused by
// quantized weights). Only for buffers every use writes before it reads.
//
// Thread-safety: as std::allocator (stateless). Failure: std::bad_alloc, as
// operator new.
#ifndef MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_
#define MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_

#include <cstddef>
#include <new>
#include <utility>
#include <vector>

namespace moeflow {

template <typename T, std::size_t kAlign = 64>
struct AlignedAllocator {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = AlignedAllocator<U, kAlign>;
  };
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U, kAlign>&) {}  // NOLINT: rebinding converts
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlign)));
  }
  void deallocate(T* p, std::size_t n) {
    ::operator delete(p, n * sizeof(T), std::align_val_t(kAlign));
  }
  template <typename U>
  bool operator==(const AlignedAllocator<U, kAlign>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const AlignedAllocator<U, kAlign>&) const {
    return false;
  }
};

// A std::vector whose data() is 64-byte aligned.
template <typename T>
using CacheAlignedVector = std::vector<T, AlignedAllocator<T, 64>>;

// AlignedAllocator whose construct() without arguments default-initializes.
template <typename T, std::size_t kAlign = 64>
struct UninitializedAllocator : AlignedAllocator<T, kAlign> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U, kAlign>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U, kAlign>&) {}  // NOLINT: rebinding
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  bool operator==(const UninitializedAllocator<U, kAlign>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const UninitializedAllocator<U, kAlign>&) const {
    return false;
  }
};

// A 64-byte-aligned std::vector whose resize() does not zero-fill (above).
template <typename T>
using ScratchVector = std::vector<T, UninitializedAllocator<T, 64>>;

}  // namespace moeflow

#endif  // MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_
