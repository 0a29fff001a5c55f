#include "base/aligned_allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

// Resident pages of [data, data + bytes) as mincore reports them.
int64_t ResidentPages(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  std::vector<unsigned char> in_core((end - begin) / page);
  EXPECT_EQ(::mincore(reinterpret_cast<void*>(begin), end - begin, in_core.data()), 0);
  int64_t n = 0;
  for (unsigned char c : in_core) n += c & 1;
  return n;
}

TEST(AlignedAllocatorTest, CacheAlignedVectorIsAlignedAndZeroFilled) {
  CacheAlignedVector<float> v(1001);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u);
  for (float x : v) EXPECT_EQ(x, 0.f);
}

TEST(AlignedAllocatorTest, ScratchVectorResizeLeavesNewPagesUntouched) {
  constexpr size_t kBytes = size_t{64} << 20;  // far above malloc's mmap threshold
  ScratchVector<uint8_t> scratch;
  scratch.resize(kBytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(scratch.data()) % 64, 0u);
  const int64_t pages = static_cast<int64_t>(kBytes / static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
  EXPECT_LT(ResidentPages(scratch.data(), kBytes), pages / 100);
  // What is written stays, across a growth too.
  for (size_t i = 0; i < 4096; ++i) scratch[i] = static_cast<uint8_t>(i * 7);
  scratch.resize(kBytes + 4096);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(scratch[i], static_cast<uint8_t>(i * 7)) << i;
}

}  // namespace
}  // namespace moeflow
