// GGUF reader validation (model/gguf.h): paths that are not GGUF files
// (missing, a directory, a FIFO, empty) and one image built byte by byte per
// kind of bad file, each checking the status code and that the message names
// the file and the fault.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/test_files.h"

namespace moeflow {
namespace {

using model_testing::TempPath;
using ::testing::HasSubstr;

TEST(GgufValidationTest, OpenReturnsNotFoundForMissingPath) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open("/nonexistent/dir/x.gguf");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/dir/x.gguf"));
}

TEST(GgufValidationTest, OpenRejectsDirectory) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(TempPath(""));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

TEST(GgufValidationTest, OpenRejectsFifoWithoutBlocking) {
  const std::string path = TempPath("fifo.gguf");
  ::unlink(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
  ::unlink(path.c_str());
}

TEST(GgufValidationTest, OpenRejectsEmptyFileAsTruncated) {
  const std::string path = TempPath("empty.gguf");
  std::ofstream(path).close();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("truncated"));
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

// ---------------------------------------------------------------------------
// Bad files, built byte by byte.

class Image {
 public:
  Image& U8(uint8_t v) { return Put(v); }
  Image& U32(uint32_t v) { return Put(v); }
  Image& U64(uint64_t v) { return Put(v); }
  Image& Str(const std::string& s) {
    U64(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  Image& Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bytes.insert(bytes.end(), {'G', 'G', 'U', 'F'});
    return U32(version).U64(n_tensors).U64(n_kv);
  }
  Image& KeyU32(const std::string& key, uint32_t v) { return Str(key).U32(4).U32(v); }
  Image& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    Str(name).U32(ne.size());
    for (uint64_t n : ne) U64(n);
    return U32(type).U64(offset);
  }
  Image& PadTo(size_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
    return *this;
  }
  Image& Zeros(size_t n) {
    bytes.resize(bytes.size() + n, 0);
    return *this;
  }

  absl::Status Parse() const { return GgufFile::FromBytes(bytes, "bad.gguf").status(); }

  std::vector<uint8_t> bytes;

 private:
  template <typename T>
  Image& Put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return *this;
  }
};

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ8_0 = 8;

void ExpectInvalid(const absl::Status& status, const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("bad.gguf")) << status;
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(part)) << status;
  }
}

TEST(GgufValidationTest, AcceptsMinimalValidImage) {
  Image image;
  image.Header(3, 1, 1).KeyU32("k", 1).Tensor("t", {4}, kF32, 0).PadTo(32).Zeros(16);
  EXPECT_TRUE(image.Parse().ok()) << image.Parse();
}

TEST(GgufValidationTest, RejectsBadMagic) {
  Image image;
  image.Header(3, 0, 0);
  image.bytes[0] = 'X';
  ExpectInvalid(image.Parse(), {"bad magic", "offset 0"});
}

TEST(GgufValidationTest, RejectsTruncatedHeader) {
  Image image;
  image.Header(3, 0, 0);
  image.bytes.resize(12);
  ExpectInvalid(image.Parse(), {"truncated", "tensor count", "offset 8"});
  image.bytes.resize(2);
  ExpectInvalid(image.Parse(), {"truncated", "magic", "offset 0"});
}

TEST(GgufValidationTest, RejectsVersion1) {
  Image image;
  image.Header(1, 0, 0);
  ExpectInvalid(image.Parse(), {"GGUF v1 is not supported", "offset 4"});
}

TEST(GgufValidationTest, RejectsUnknownVersion) {
  Image image;
  image.Header(4, 0, 0);
  ExpectInvalid(image.Parse(), {"unsupported GGUF version 4"});
  Image big_endian;
  big_endian.Header(0x03000000, 0, 0);
  ExpectInvalid(big_endian.Parse(), {"big-endian"});
}

TEST(GgufValidationTest, RejectsKeyLengthPastEndOfFile) {
  Image image;
  image.Header(3, 0, 1).U64(1000).Zeros(20);
  ExpectInvalid(image.Parse(), {"length 1000", "metadata key #0", "past the end", "offset 24"});
}

TEST(GgufValidationTest, RejectsStringValueLengthPastEndOfFile) {
  Image image;
  image.Header(3, 0, 1).Str("name").U32(8).U64(UINT64_MAX).Zeros(8);
  ExpectInvalid(image.Parse(), {"string value of key 'name'", "past the end", "offset 40"});
}

TEST(GgufValidationTest, RejectsArrayLengthPastEndOfFile) {
  Image image;
  // 5 u32 elements claimed, 16 bytes present.
  image.Header(3, 0, 1).Str("arr").U32(9).U32(4).U64(5).Zeros(16);
  ExpectInvalid(image.Parse(), {"key 'arr'", "array length 5", "past the end", "offset 43"});
}

TEST(GgufValidationTest, RejectsHugeArrayLengthWithoutAllocating) {
  Image image;
  image.Header(3, 0, 1).Str("arr").U32(9).U32(9).U64(uint64_t{1} << 60).Zeros(64);
  ExpectInvalid(image.Parse(), {"key 'arr'", "array length", "past the end"});
}

TEST(GgufValidationTest, RejectsUnknownValueType) {
  Image image;
  image.Header(3, 0, 1).Str("k").U32(13).U32(0);
  ExpectInvalid(image.Parse(), {"key 'k'", "unknown value type 13", "offset 33"});
}

TEST(GgufValidationTest, RejectsUnknownArrayElementType) {
  Image image;
  image.Header(3, 0, 1).Str("k").U32(9).U32(77).U64(0);
  ExpectInvalid(image.Parse(), {"key 'k'", "unknown array element type 77"});
}

TEST(GgufValidationTest, RejectsDeeplyNestedArrays) {
  Image image;
  image.Header(3, 0, 1).Str("deep").U32(9);
  for (int i = 0; i < 100; ++i) image.U32(9).U64(1);
  image.U32(0).U64(0);
  ExpectInvalid(image.Parse(), {"key 'deep'", "nest deeper than 16"});
}

TEST(GgufValidationTest, AcceptsNestingUpToTheLimit) {
  Image image;
  image.Header(3, 0, 1).Str("deep").U32(9);
  for (int i = 0; i < 15; ++i) image.U32(9).U64(1);
  image.U32(0).U64(1).U8(7);
  EXPECT_TRUE(image.Parse().ok()) << image.Parse();
}

TEST(GgufValidationTest, RejectsDuplicateKeys) {
  Image image;
  image.Header(3, 0, 2).KeyU32("dup", 1).KeyU32("dup", 2);
  ExpectInvalid(image.Parse(), {"duplicate metadata key 'dup'", "offset 43"});
}

TEST(GgufValidationTest, RejectsHugeKeyValueCount) {
  Image image;
  image.Header(3, 0, uint64_t{1} << 62).KeyU32("k", 1);
  ExpectInvalid(image.Parse(), {"key/value count", "cannot fit", "offset 16"});
}

TEST(GgufValidationTest, RejectsHugeTensorCount) {
  Image image;
  image.Header(3, 1000, 0).Tensor("t", {4}, kF32, 0).PadTo(32).Zeros(16);
  ExpectInvalid(image.Parse(), {"tensor count 1000", "cannot fit", "offset 8"});
}

TEST(GgufValidationTest, RejectsBadAlignment) {
  for (uint32_t alignment : {0u, 3u, 48u}) {
    Image image;
    image.Header(3, 0, 1).KeyU32("general.alignment", alignment);
    ExpectInvalid(image.Parse(), {"general.alignment", "power of two"});
  }
  Image wrong_type;
  wrong_type.Header(3, 0, 1).Str("general.alignment").U32(10).U64(64);
  ExpectInvalid(wrong_type.Parse(), {"general.alignment", "u64", "expected u32"});
}

TEST(GgufValidationTest, HonoursCustomAlignment) {
  Image image;
  image.Header(3, 1, 1).KeyU32("general.alignment", 64).Tensor("t", {4}, kF32, 0).PadTo(64);
  const size_t header = image.bytes.size();
  image.Zeros(16);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(image.bytes, "ok.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->alignment(), 64u);
  EXPECT_EQ((*file)->data_offset(), header);
}

TEST(GgufValidationTest, RejectsUnknownGgmlType) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, 4, 0).PadTo(32).Zeros(16);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "unknown ggml type 4 (q4_2 / q4_3, removed from ggml)", "offset 45"});
}

TEST(GgufValidationTest, RejectsZeroDims) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "n_dims 0", "offset 33"});
}

TEST(GgufValidationTest, RejectsMoreThanFourDims) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {1, 1, 1, 1, 1}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "n_dims 5"});
}

TEST(GgufValidationTest, RejectsZeroDimension) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4, 0}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "ne[1] = 0", "not positive", "offset 45"});
}

TEST(GgufValidationTest, RejectsNegativeDimension) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {static_cast<uint64_t>(-4)}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "ne[0] = -4", "not positive"});
}

TEST(GgufValidationTest, RejectsDimsWhoseProductOverflows) {
  Image image;
  image.Header(3, 1, 0)
      .Tensor("w", {uint64_t{1} << 32, uint64_t{1} << 32}, kF32, 0)
      .PadTo(32)
      .Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "overflows int64"});
}

TEST(GgufValidationTest, RejectsByteSizeThatOverflows) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {uint64_t{1} << 62}, kF32, 0).PadTo(32).Zeros(32);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "byte size", "overflows"});
}

TEST(GgufValidationTest, RejectsRowNotMultipleOfBlockSize) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {48, 2}, kQ8_0, 0).PadTo(32).Zeros(128);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "row of 48", "block size 32"});
}

TEST(GgufValidationTest, RejectsUnalignedTensorOffset) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, kF32, 8).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "data offset 8", "alignment 32", "offset 49"});
}

TEST(GgufValidationTest, RejectsTensorPastEndOfFile) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {16}, kF32, 32).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"tensor 'w'", "past the end of the file", "data offset 32"});
  Image huge_offset;
  huge_offset.Header(3, 1, 0).Tensor("w", {16}, kF32, UINT64_MAX - 31).PadTo(32).Zeros(64);
  ExpectInvalid(huge_offset.Parse(), {"tensor 'w'", "past the end of the file"});
}

TEST(GgufValidationTest, RejectsTruncatedDataSection) {
  Image image;
  image.Header(3, 1, 0).Tensor("w", {4}, kF32, 0);
  ExpectInvalid(image.Parse(), {"truncated", "data section"});
}

TEST(GgufValidationTest, RejectsOverlappingTensors) {
  Image image;
  image.Header(3, 2, 0).Tensor("a", {16}, kF32, 32).Tensor("b", {16}, kF32, 0).PadTo(32).Zeros(96);
  ExpectInvalid(image.Parse(), {"tensor 'b'", "overlaps tensor 'a'"});
}

TEST(GgufValidationTest, RejectsDuplicateTensorNames) {
  Image image;
  image.Header(3, 2, 0).Tensor("w", {8}, kF32, 0).Tensor("w", {8}, kF32, 32).PadTo(32).Zeros(64);
  ExpectInvalid(image.Parse(), {"duplicate tensor 'w'", "offset 57"});
}

TEST(GgufValidationTest, RejectsTruncatedTensorInfo) {
  Image image;
  image.Header(3, 1, 0).Str("w").U32(4).U64(4).U64(4).U64(4);
  image.Zeros(3);
  ExpectInvalid(image.Parse(), {"truncated", "dimension 3 of tensor 'w'", "offset 61"});
}

}  // namespace
}  // namespace moeflow
