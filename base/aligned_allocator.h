// An allocator that aligns each allocation to `kAlign` bytes (default a
// cache line), for buffers that SIMD kernels stream with full-width loads:
// a 64-byte vector load from a 16-byte-aligned std::vector splits across two
// cache lines and costs two loads (the MLA score kernel ran at half speed).
//
// Thread-safety: as std::allocator (stateless). Failure: std::bad_alloc, as
// operator new.
#ifndef MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_
#define MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_

#include <cstddef>
#include <new>
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

}  // namespace moeflow

#endif  // MOEFLOW_BASE_ALIGNED_ALLOCATOR_H_
