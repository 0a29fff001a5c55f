// kernels/cpu/weight_memory: WeightBuffer's alignment, contents and moves,
// the huge-page advice, MemAvailable, and MOEFLOW_HUGEPAGES (the BUILD
// targets run this file unset, 0, 1 and with a value it does not know).
#include "kernels/cpu/weight_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

// Whether this kernel lets madvise(MADV_HUGEPAGE) through at all.
bool ThpAvailable() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  return std::getline(in, line) && line.find("[never]") == std::string::npos;
}

TEST(WeightMemoryTest, SwitchIsObeyedAndBadValuesAreReported) {
  const char* env = std::getenv("MOEFLOW_HUGEPAGES");
  const std::string v = env == nullptr ? "" : env;
  testing::internal::CaptureStderr();
  const bool on = HugePagesEnabled();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(on, v != "0");
  if (env == nullptr || v == "0" || v == "1") {
    EXPECT_EQ(err, "");
  } else {
    EXPECT_NE(err.find("MOEFLOW_HUGEPAGES='" + v + "' is neither 0 nor 1"), std::string::npos)
        << err;
  }
  // Read once: a second call says nothing more.
  testing::internal::CaptureStderr();
  EXPECT_EQ(HugePagesEnabled(), on);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(WeightMemoryTest, BuffersAreAlignedWritableAndMove) {
  for (const size_t bytes : {size_t{1}, size_t{4096}, kHugePageBytes, 3 * kHugePageBytes + 17}) {
    absl::StatusOr<WeightBuffer> b = WeightBuffer::Allocate(bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_NE(b->data(), nullptr);
    EXPECT_EQ(b->size(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % kHugePageBytes, 0u);
    std::memset(b->data(), 0x5A, bytes);
    EXPECT_EQ(b->data()[bytes - 1], 0x5A);
    if (!HugePagesEnabled()) {
      EXPECT_FALSE(b->huge_pages());
    } else if (ThpAvailable()) {
      EXPECT_TRUE(b->huge_pages()) << bytes;
    }
    uint8_t* data = b->data();
    WeightBuffer moved = std::move(*b);
    EXPECT_EQ(moved.data(), data);
    EXPECT_EQ(moved.size(), bytes);
    EXPECT_EQ(b->data(), nullptr);
    EXPECT_EQ(b->size(), 0u);
    WeightBuffer assigned;
    assigned = std::move(moved);
    EXPECT_EQ(assigned.data(), data);
    EXPECT_EQ(assigned.data()[0], 0x5A);
  }
}

TEST(WeightMemoryTest, ZeroBytesAreRefused) {
  absl::StatusOr<WeightBuffer> b = WeightBuffer::Allocate(0);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightMemoryTest, ImpossibleSizesAreResourceExhausted) {
  // More than any address space: mmap refuses it, Allocate says so.
  absl::StatusOr<WeightBuffer> b = WeightBuffer::Allocate(size_t{1} << 62);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
}

TEST(WeightMemoryTest, AdviceNeedsAWholeAlignedHugePage) {
  void* p = ::mmap(nullptr, 3 * kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  // Less than one aligned huge page inside the range: nothing to advise.
  EXPECT_FALSE(AdviseHugePages(static_cast<uint8_t*>(p) + 1, kHugePageBytes));
  if (ThpAvailable()) {
    EXPECT_TRUE(AdviseHugePages(p, 3 * kHugePageBytes));
  }
  ::munmap(p, 3 * kHugePageBytes);
}

TEST(WeightMemoryTest, AvailableMemoryIsReadFromProc) {
  const int64_t available = AvailableMemoryBytes();
  std::ifstream in("/proc/meminfo");
  if (!in) GTEST_SKIP() << "no /proc/meminfo";
  EXPECT_GT(available, int64_t{1} << 20);
}

TEST(WeightMemoryTest, CopiesOverEightyPercentOfAvailableMemoryDoNotFit) {
  EXPECT_EQ(CopyWouldNotFit(0), "");
  EXPECT_EQ(CopyWouldNotFit(4096), "");
  const int64_t available = AvailableMemoryBytes();
  if (available < 0) GTEST_SKIP() << "no MemAvailable";
  const std::string why = CopyWouldNotFit(int64_t{1} << 60);
  EXPECT_NE(why.find("copying 1073741824.00 GiB would take more than 80 % of the "),
            std::string::npos)
      << why;
}

}  // namespace
}  // namespace moeflow
