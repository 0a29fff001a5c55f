// GgufWriter's errors (model/gguf.h): duplicate keys and tensors, bad shapes,
// values that do not fit their type, a conflicting alignment, tensors out of
// order or size, calls before Begin, a missing directory and a failed write,
// each naming the key, tensor or path at fault and leaving no file behind.
#include <signal.h>
#include <sys/resource.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "tests/model/test_files.h"

namespace moeflow {
namespace {

using model_testing::FileExists;
using model_testing::TempPath;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Writer errors.

TEST(GgufWriterTest, RejectsDuplicateKey) {
  GgufWriter writer;
  writer.AddMetadata("k", GgufValue::String("a"));
  writer.AddMetadata("k", GgufValue::String("b"));
  const std::string path = TempPath("dup_key.gguf");
  absl::Status status = writer.Begin(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("duplicate metadata key 'k'"));
  EXPECT_FALSE(FileExists(path + ".tmp"));
}

TEST(GgufWriterTest, RejectsDuplicateTensor) {
  GgufWriter writer;
  writer.AddTensor("w", GgmlType::kF32, {4});
  writer.AddTensor("w", GgmlType::kF32, {4});
  absl::Status status = writer.Begin(TempPath("dup_tensor.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("duplicate tensor 'w'"));
}

TEST(GgufWriterTest, RejectsShapeErrorsNamingTensor) {
  struct Case {
    GgmlType type;
    std::vector<int64_t> ne;
    const char* expected;
  };
  for (const Case& c : std::vector<Case>{{GgmlType::kQ4_K, {128, 2}, "block size 256"},
                                         {GgmlType::kF32, {}, "0 dimensions"},
                                         {GgmlType::kF32, {1, 1, 1, 1, 1}, "5 dimensions"},
                                         {GgmlType::kF32, {4, 0}, "ne[1] = 0"},
                                         {GgmlType::kF32, {4, -1}, "ne[1] = -1"}}) {
    GgufWriter writer;
    writer.AddTensor("bad.weight", c.type, c.ne);
    absl::Status status = writer.Begin(TempPath("bad_shape.gguf"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("tensor 'bad.weight'"));
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
}

TEST(GgufWriterTest, RejectsMismatchedArrayElement) {
  GgufWriter writer;
  writer.AddMetadata("arr", GgufValue::Array(GgufType::kInt32, {GgufValue::String("x")}));
  absl::Status status = writer.Begin(TempPath("bad_array.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'arr': element 0 is a string"));
}

TEST(GgufWriterTest, RejectsValueOutOfRange) {
  GgufWriter writer;
  writer.AddMetadata("small", GgufValue::Uint(GgufType::kUint8, 300));
  absl::Status status = writer.Begin(TempPath("out_of_range.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'small': value 300 does not fit in u8"));
}

TEST(GgufWriterTest, RejectsConflictingAlignmentKey) {
  GgufWriter writer(3, 64);
  writer.AddMetadata("general.alignment", GgufValue::Uint(GgufType::kUint32, 32));
  absl::Status status = writer.Begin(TempPath("conflict.gguf"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("general.alignment"));
}

TEST(GgufWriterTest, WriteTensorChecksOrderAndSize) {
  GgufWriter writer;
  writer.AddTensor("first", GgmlType::kF32, {4});
  writer.AddTensor("second", GgmlType::kF32, {4});
  const std::string path = TempPath("order.gguf");
  ASSERT_TRUE(writer.Begin(path).ok());
  const std::vector<uint8_t> bytes(16, 1);
  absl::Status status = writer.WriteTensor("second", bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("expected tensor 'first'"));
  const std::vector<uint8_t> too_many(17, 1);
  status = writer.WriteTensor("first", too_many);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor 'first'"));
  EXPECT_THAT(status.message(), HasSubstr("takes 16 bytes"));
  ASSERT_TRUE(writer.WriteTensor("first", bytes).ok());
  status = writer.Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("tensor 'second'"));
  ASSERT_TRUE(writer.WriteTensor("second", bytes).ok());
  status = writer.WriteTensor("third", bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_TRUE(FileExists(path));
}

TEST(GgufWriterTest, WriteTensorBeforeBeginFails) {
  GgufWriter writer;
  writer.AddTensor("w", GgmlType::kF32, {4});
  const std::vector<uint8_t> bytes(16, 1);
  EXPECT_EQ(writer.WriteTensor("w", bytes).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.Finish().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(GgufWriterTest, DestructorRemovesUnfinishedTmpFile) {
  const std::string path = TempPath("unfinished.gguf");
  {
    GgufWriter writer;
    writer.AddTensor("w", GgmlType::kF32, {4});
    ASSERT_TRUE(writer.Begin(path).ok());
    EXPECT_TRUE(FileExists(path + ".tmp"));
  }
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_FALSE(FileExists(path));
}

TEST(GgufWriterTest, BeginReportsMissingDirectoryNamingPath) {
  GgufWriter writer;
  absl::Status status = writer.Begin("/nonexistent/dir/out.gguf");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/dir/out.gguf.tmp"));
}

TEST(GgufWriterTest, ReportsWriteErrorNamingPath) {
  // A file size limit makes write() fail with EFBIG, as a full disk would
  // with ENOSPC.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction old_action;
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  const std::string path = TempPath("too_big.gguf");
  absl::Status status;
  {
    GgufWriter writer;
    writer.AddTensor("big", GgmlType::kF32, {1 << 20});
    ASSERT_TRUE(writer.Begin(path).ok());
    struct rlimit small = old_limit;
    small.rlim_cur = 1 << 20;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const std::vector<uint8_t> bytes(4 << 20, 1);
    status = writer.WriteTensor("big", bytes);
    if (status.ok()) status = writer.Finish();
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    // Later calls fail cleanly rather than writing a corrupt file.
    EXPECT_EQ(writer.Finish().code(), absl::StatusCode::kFailedPrecondition);
  }
  sigaction(SIGXFSZ, &old_action, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr(path + ".tmp"));
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_FALSE(FileExists(path));
}

}  // namespace
}  // namespace moeflow
