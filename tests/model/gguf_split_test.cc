// Split GGUF models (model/gguf_split.h): names, the gguf-split plan, a
// round trip through GgufSplitWriter opened from every shard, and one test
// per bad shard set — missing, duplicated, renamed, foreign, truncated —
// each checking the status code, that the message names the file at fault,
// and that the open leaves nothing behind.
#include "model/gguf_split.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/gguf_shard.h"

namespace moeflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Mapped regions of this process backed by `path` (from /proc/self/maps).
int MappingsOf(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  char resolved[4096];
  const std::string real = ::realpath(path.c_str(), resolved) != nullptr ? resolved : path;
  while (std::getline(maps, line)) {
    if (line.size() >= real.size() &&
        line.compare(line.size() - real.size(), real.size(), real) == 0) {
      ++n;
    }
  }
  return n;
}

struct Tensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
  std::vector<uint8_t> bytes;
};

std::vector<Tensor> SevenTensors(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Tensor> out = {
      {"token_embd.weight", GgmlType::kQ8_0, {64, 8}, {}},
      {"blk.0.attn_norm.weight", GgmlType::kF32, {64}, {}},
      {"blk.0.ffn_up_exps.weight", GgmlType::kQ4_K, {256, 4, 2}, {}},
      {"blk.0.ffn_down_exps.weight", GgmlType::kQ6_K, {256, 3, 2}, {}},
      {"blk.1.attn_norm.weight", GgmlType::kF32, {64}, {}},
      {"output_norm.weight", GgmlType::kF32, {64}, {}},
      {"output.weight", GgmlType::kF16, {64, 8}, {}},
  };
  for (Tensor& t : out) {
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    t.bytes.resize(static_cast<size_t>(*RowBytes(t.type, t.ne[0]) * rows));
    for (uint8_t& b : t.bytes) b = static_cast<uint8_t>(rng());
  }
  return out;
}

// Writes the seven tensors as shards of `prefix`; returns the shard paths.
std::vector<std::string> WriteSplit(const std::string& prefix, GgufSplitLimits limits,
                                    const std::vector<Tensor>& tensors,
                                    const std::string& name = "split-test") {
  GgufSplitWriter writer(limits);
  writer.AddMetadata("general.architecture", GgufValue::String("test"));
  writer.AddMetadata("general.name", GgufValue::String(name));
  for (const Tensor& t : tensors) writer.AddTensor(t.name, t.type, t.ne);
  absl::Status status = writer.Begin(prefix);
  EXPECT_TRUE(status.ok()) << status;
  for (const Tensor& t : tensors) {
    status = writer.WriteTensor(t.name, t.bytes);
    EXPECT_TRUE(status.ok()) << status;
  }
  status = writer.Finish();
  EXPECT_TRUE(status.ok()) << status;
  return writer.shard_paths();
}

TEST(GgufSplitTest, NamesShardsAsLlamaCppDoes) {
  EXPECT_EQ(GgufSplitPath("/m/R1-Q4_K_M", 0, 9), "/m/R1-Q4_K_M-00001-of-00009.gguf");
  EXPECT_EQ(GgufSplitPath("x", 41, 123), "x-00042-of-00123.gguf");
  EXPECT_EQ(*GgufSplitPrefix("/m/R1-00003-of-00009.gguf", 2, 9), "/m/R1");
  EXPECT_FALSE(GgufSplitPrefix("/m/R1-00003-of-00009.gguf", 3, 9).has_value());
  EXPECT_FALSE(GgufSplitPrefix("/m/R1-00003-of-00009.gguf", 2, 8).has_value());
  EXPECT_FALSE(GgufSplitPrefix("-00001-of-00002.gguf", 0, 2).has_value());  // empty prefix
}

TEST(GgufSplitTest, ParsesSplitSizeAsGgufSplit) {
  EXPECT_EQ(*ParseGgufSplitSize("1M"), 1000000u);
  EXPECT_EQ(*ParseGgufSplitSize("45G"), 45000000000u);
  for (const char* bad : {"", "M", "10", "10K", "0M", "-1G", "1.5G", "1m"}) {
    absl::StatusOr<uint64_t> size = ParseGgufSplitSize(bad);
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(size.status().message(), HasSubstr("M or G")) << bad;
  }
}

TEST(GgufSplitTest, PlansByTensorCountAndBySize) {
  const std::vector<uint64_t> bytes = {100, 32, 64, 1, 200, 33, 5};
  EXPECT_THAT(*PlanGgufSplit(bytes, {0, 3}), ElementsAre(0, 0, 0, 1, 1, 1, 2));
  EXPECT_THAT(*PlanGgufSplit(bytes, {0, 7}), ElementsAre(0, 0, 0, 0, 0, 0, 0));
  // Padded to 32: 128, 32, 64, 32, 224, 64, 32. A shard takes tensors while
  // the padded sum stays <= 256; a tensor above the limit gets its own shard.
  EXPECT_THAT(*PlanGgufSplit(bytes, {256, 0}), ElementsAre(0, 0, 0, 0, 1, 2, 2));
  EXPECT_THAT(*PlanGgufSplit(bytes, {130, 0}), ElementsAre(0, 1, 1, 1, 2, 3, 3));
  absl::StatusOr<std::vector<int>> too_big = PlanGgufSplit(bytes, {64, 0});
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_big.status().message(), HasSubstr("first tensor alone"));
  EXPECT_EQ(PlanGgufSplit(bytes, {256, 3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanGgufSplit(bytes, {0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

class GgufSplitSetTest : public testing::Test {
 protected:
  void SetUp() override {
    tensors_ = SevenTensors(7);
    prefix_ = TempDir() + "/" + testing::UnitTest::GetInstance()->current_test_info()->name();
    paths_ = WriteSplit(prefix_, {0, 3}, tensors_);
    ASSERT_EQ(paths_.size(), 3u);
  }

  absl::Status OpenError(const std::string& path) {
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
    EXPECT_FALSE(file.ok()) << path << " opened";
    for (const std::string& p : paths_) EXPECT_EQ(MappingsOf(p), 0) << p << " still mapped";
    return file.status();
  }

  std::vector<Tensor> tensors_;
  std::string prefix_;
  std::vector<std::string> paths_;
};

TEST_F(GgufSplitSetTest, OpensTheWholeModelFromAnyShard) {
  EXPECT_EQ(paths_[1], prefix_ + "-00002-of-00003.gguf");
  for (const std::string& path : paths_) {
    SCOPED_TRACE(path);
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    const GgufFile& f = **file;
    ASSERT_EQ(f.shard_count(), 3);
    EXPECT_EQ(f.path(), paths_[0]);
    EXPECT_EQ(*f.GetString("general.name"), "split-test");
    EXPECT_EQ(*f.GetInt(kGgufSplitCountKey), 3);
    uint64_t bytes = 0;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(f.shard(i).path(), paths_[i]);
      bytes += f.shard(i).file_size();
    }
    EXPECT_EQ(f.file_size(), bytes);
    ASSERT_EQ(f.tensors().size(), tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const GgufTensorInfo& t = f.tensors()[i];
      EXPECT_EQ(t.name, tensors_[i].name);
      EXPECT_EQ(t.shard, static_cast<int>(i / 3));
      EXPECT_EQ(f.FindTensor(t.name), &t);
      ASSERT_EQ(t.n_bytes, tensors_[i].bytes.size());
      EXPECT_EQ(std::memcmp(f.TensorData(t), tensors_[i].bytes.data(), t.n_bytes), 0) << t.name;
    }
    // Offsets restart in each shard.
    EXPECT_EQ(f.tensors()[3].offset, 0u);
    EXPECT_EQ(f.tensors()[6].offset, 0u);
  }
  // Model keys on the first shard only, the split keys on every one.
  auto second = GgufShard::Open(paths_[1]);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ((*second)->metadata().size(), 3u);
  EXPECT_EQ((*second)->metadata().entries()[0].key, kGgufSplitNoKey);
  EXPECT_EQ((*second)->metadata().entries()[2].key, kGgufSplitCountKey);
  EXPECT_EQ(*(*second)->metadata().GetInt(kGgufSplitNoKey), 1);
  EXPECT_EQ(*(*second)->metadata().GetInt(kGgufSplitTensorsCountKey), 7);
}

TEST_F(GgufSplitSetTest, MapsOnlyTheShardsWhoseTensorsItReads) {
  GgufOpenOptions options;
  options.reads_tensor = [](const GgufTensorInfo& t) {
    return t.name.find("_exps.") != std::string::npos;
  };
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(paths_[2], options);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_TRUE(f.shard(0).mapped());   // blk.0.ffn_up_exps
  EXPECT_TRUE(f.shard(1).mapped());   // blk.0.ffn_down_exps
  EXPECT_FALSE(f.shard(2).mapped());  // output only
  EXPECT_EQ(MappingsOf(paths_[2]), 0);
  EXPECT_GE(MappingsOf(paths_[1]), 1);
  // Metadata and the tensor table of an unmapped shard are still there.
  EXPECT_EQ(*f.GetString("general.name"), "split-test");
  EXPECT_NE(f.FindTensor("output.weight"), nullptr);
  const GgufTensorInfo* down = f.FindTensor("blk.0.ffn_down_exps.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(std::memcmp(f.TensorData(*down), tensors_[3].bytes.data(), down->n_bytes), 0);
  f.ReleasePages(f.TensorData(*down), down->n_bytes);
  EXPECT_EQ(std::memcmp(f.TensorData(*down), tensors_[3].bytes.data(), down->n_bytes), 0);
}

TEST_F(GgufSplitSetTest, MissingShardIsNotFoundNamingIt) {
  ASSERT_EQ(std::remove(paths_[1].c_str()), 0);
  for (const std::string& path : {paths_[0], paths_[2]}) {
    absl::Status status = OpenError(path);
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
    EXPECT_THAT(status.message(), HasSubstr(paths_[1]));
    EXPECT_THAT(status.message(), HasSubstr("shard 2 of 3"));
    EXPECT_THAT(status.message(), HasSubstr("is missing"));
  }
}

TEST_F(GgufSplitSetTest, DuplicatedShardIsRejectedNamingIt) {
  // Shard 2 replaced by a copy of shard 3.
  WriteAll(paths_[1], ReadAll(paths_[2]));
  absl::Status status = OpenError(paths_[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(paths_[1]));
  EXPECT_THAT(status.message(), HasSubstr("split.no = 2 says it is shard 3 of 3"));
  EXPECT_THAT(status.message(), HasSubstr("duplicated or renamed"));
}

TEST_F(GgufSplitSetTest, SameFileTwiceIsRejected) {
  // A hard link in place of shard 3, pointing at shard 1, is caught by its
  // split.no; a link to the very same file is named as such.
  ASSERT_EQ(std::remove(paths_[2].c_str()), 0);
  ASSERT_EQ(::symlink(paths_[0].c_str(), paths_[2].c_str()), 0);
  absl::Status status = OpenError(paths_[1]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(paths_[2]));
}

TEST_F(GgufSplitSetTest, ShardOfAnotherSplitCountIsForeign) {
  // The same model split in 2, its second shard renamed into this set.
  const std::string other = TempDir() + "/other_two";
  std::vector<std::string> two = WriteSplit(other, {0, 4}, tensors_);
  ASSERT_EQ(two.size(), 2u);
  WriteAll(paths_[2], ReadAll(two[1]));
  absl::Status status = OpenError(paths_[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(paths_[2]));
  EXPECT_THAT(status.message(), HasSubstr("split.count = 2 but the set has 3 shards"));
}

// Shard 2 of 3 of another split of the same model: tensors 2-4 instead of
// 3-5, as a split at other boundaries would give.
void WriteOtherSecondShard(const std::string& path, const std::vector<Tensor>& tensors, int first,
                           int last) {
  GgufWriter writer;
  writer.AddMetadata(kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 1));
  writer.AddMetadata(kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 3));
  writer.AddMetadata(kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 7));
  for (int i = first; i <= last; ++i)
    writer.AddTensor(tensors[i].name, tensors[i].type, tensors[i].ne);
  ASSERT_TRUE(writer.Begin(path).ok());
  for (int i = first; i <= last; ++i) {
    ASSERT_TRUE(writer.WriteTensor(tensors[i].name, tensors[i].bytes).ok());
  }
  ASSERT_TRUE(writer.Finish().ok());
}

TEST_F(GgufSplitSetTest, ShardOfADifferentSplitOfTheSameCountIsForeign) {
  WriteOtherSecondShard(paths_[1], tensors_, 2, 4);
  absl::Status status = OpenError(paths_[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("tensor 'blk.0.ffn_up_exps.weight' is in both"));
  EXPECT_THAT(status.message(), HasSubstr(paths_[1]));
  // Tensors 4-5 only: the count no longer adds up.
  WriteOtherSecondShard(paths_[1], tensors_, 4, 5);
  status = OpenError(paths_[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("hold 6 tensors but split.tensors.count = 7"));
}

TEST_F(GgufSplitSetTest, ShardWhoseKeysDisagreeIsForeign) {
  // A shard of another model that repeats a model key with another value.
  GgufWriter writer;
  writer.AddMetadata(kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 1));
  writer.AddMetadata(kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 3));
  writer.AddMetadata(kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 7));
  writer.AddMetadata("general.name", GgufValue::String("another-model"));
  for (int i = 3; i < 6; ++i) writer.AddTensor(tensors_[i].name, tensors_[i].type, tensors_[i].ne);
  ASSERT_TRUE(writer.Begin(paths_[1]).ok());
  for (int i = 3; i < 6; ++i)
    ASSERT_TRUE(writer.WriteTensor(tensors_[i].name, tensors_[i].bytes).ok());
  ASSERT_TRUE(writer.Finish().ok());
  absl::Status status = OpenError(paths_[2]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(paths_[1]));
  EXPECT_THAT(status.message(), HasSubstr("'general.name' = \"another-model\""));
}

TEST_F(GgufSplitSetTest, TruncatedShardIsRejectedNamingIt) {
  std::vector<uint8_t> bytes = ReadAll(paths_[1]);
  bytes.resize(bytes.size() - 100);
  WriteAll(paths_[1], bytes);
  for (const std::string& path : paths_) {
    absl::Status status = OpenError(path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(paths_[1]));
    EXPECT_THAT(status.message(), HasSubstr("extends past the end of the file"));
  }
}

TEST_F(GgufSplitSetTest, ShardWithTheWrongNameIsRejected) {
  const std::string renamed = TempDir() + "/renamed.gguf";
  ASSERT_EQ(std::rename(paths_[1].c_str(), renamed.c_str()), 0);
  absl::Status status = OpenError(renamed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(renamed));
  EXPECT_THAT(status.message(), HasSubstr("does not end in -00002-of-00003.gguf"));
  EXPECT_EQ(MappingsOf(renamed), 0);
}

TEST(GgufSplitWriterTest, OneShardWhenEverythingFits) {
  const std::vector<Tensor> tensors = SevenTensors(3);
  const std::string prefix = TempDir() + "/one_shard";
  std::vector<std::string> paths = WriteSplit(prefix, {1000000, 0}, tensors);
  ASSERT_EQ(paths.size(), 1u);
  EXPECT_EQ(paths[0], prefix + "-00001-of-00001.gguf");
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(paths[0]);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->shard_count(), 1);
  EXPECT_EQ(*(*file)->GetInt(kGgufSplitCountKey), 1);
  EXPECT_EQ((*file)->tensors().size(), 7u);
}

TEST(GgufSplitWriterTest, UnfinishedWriteLeavesNoShard) {
  const std::vector<Tensor> tensors = SevenTensors(4);
  const std::string prefix = TempDir() + "/unfinished";
  std::vector<std::string> paths;
  {
    GgufSplitWriter writer({0, 2});
    for (const Tensor& t : tensors) writer.AddTensor(t.name, t.type, t.ne);
    ASSERT_TRUE(writer.Begin(prefix).ok());
    paths = writer.shard_paths();
    ASSERT_EQ(paths.size(), 4u);
    for (int i = 0; i < 6; ++i)
      ASSERT_TRUE(writer.WriteTensor(tensors[i].name, tensors[i].bytes).ok());
    absl::Status status = writer.Finish();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_THAT(status.message(), HasSubstr("output.weight"));
    // Out of order is refused too.
    EXPECT_EQ(writer.WriteTensor(tensors[2].name, tensors[2].bytes).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  for (const std::string& p : paths) {
    EXPECT_FALSE(Exists(p)) << p;
    EXPECT_FALSE(Exists(p + ".tmp")) << p;
  }
}

TEST(GgufSplitTest, PlainFileWithSplitCountOneChecksItsTensorCount) {
  const std::string path = TempDir() + "/count_one.gguf";
  GgufWriter writer;
  writer.AddMetadata(kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 0));
  writer.AddMetadata(kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 1));
  writer.AddMetadata(kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 2));
  writer.AddTensor("a", GgmlType::kF32, {4});
  ASSERT_TRUE(writer.Begin(path).ok());
  ASSERT_TRUE(writer.WriteTensor("a", std::vector<uint8_t>(16, 1)).ok());
  ASSERT_TRUE(writer.Finish().ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("split.tensors.count = 2 but the file has 1"));
}

TEST(GgufSplitTest, RejectsBadSplitKeys) {
  struct Case {
    std::vector<GgufKeyValue> keys;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{{kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 0)}}, "only some of the split keys"},
      {{{kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 3)},
        {kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 3)},
        {kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 1)}},
       "split.no = 3 is not in [0, split.count = 3)"},
      {{{kGgufSplitNoKey, GgufValue::Uint(GgufType::kUint16, 0)},
        {kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 0)},
        {kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 1)}},
       "split.count = 0 is not in [1, 65535]"},
      {{{kGgufSplitNoKey, GgufValue::String("0")},
        {kGgufSplitCountKey, GgufValue::Uint(GgufType::kUint16, 2)},
        {kGgufSplitTensorsCountKey, GgufValue::Int(GgufType::kInt32, 1)}},
       "'split.no' is a string"},
  };
  for (const Case& c : cases) {
    GgufMetadata m("keys.gguf");
    for (const GgufKeyValue& kv : c.keys) m.Add(kv);
    absl::StatusOr<GgufSplitKeys> keys = ReadGgufSplitKeys(m);
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(keys.status().message(), HasSubstr(c.message));
    EXPECT_THAT(keys.status().message(), HasSubstr("keys.gguf"));
  }
}

// tests/data/llamacpp/tiny-v3-split: llama-gguf-split --split-max-tensors 20
// of tiny-v3.q4_k_m.gguf. GgufSplitWriter cuts the same file into the same
// bytes, and the reader opens the set from every shard.
constexpr char kSplitFixture[] = "tests/data/llamacpp/tiny-v3-split/tiny-v3-split.q4_k_m";
constexpr char kWholeFixture[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q4_k_m.gguf";

TEST(GgufSplitFixtureTest, WritesTheShardsLlamaGgufSplitWrote) {
  auto whole = GgufFile::Open(kWholeFixture);
  ASSERT_TRUE(whole.ok()) << whole.status();
  GgufSplitWriter writer({0, 20});
  for (const GgufKeyValue& kv : (*whole)->metadata()) writer.AddMetadata(kv.key, kv.value);
  for (const GgufTensorInfo& t : (*whole)->tensors()) writer.AddTensor(t.name, t.type, t.ne);
  const std::string prefix = TempDir() + "/resplit";
  ASSERT_TRUE(writer.Begin(prefix).ok());
  for (const GgufTensorInfo& t : (*whole)->tensors()) {
    ASSERT_TRUE(
        writer.WriteTensor(t.name, absl::MakeConstSpan((*whole)->TensorData(t), t.n_bytes)).ok());
  }
  ASSERT_TRUE(writer.Finish().ok());
  ASSERT_EQ(writer.shard_paths().size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const std::vector<uint8_t> ours = ReadAll(writer.shard_paths()[i]);
    const std::vector<uint8_t> theirs = ReadAll(GgufSplitPath(kSplitFixture, i, 4));
    ASSERT_FALSE(theirs.empty()) << GgufSplitPath(kSplitFixture, i, 4);
    EXPECT_TRUE(ours == theirs) << "shard " << i + 1 << " differs";
  }
}

TEST(GgufSplitFixtureTest, OpensLlamaGgufSplitsShardsFromAnyOfThem) {
  auto whole = GgufFile::Open(kWholeFixture);
  ASSERT_TRUE(whole.ok()) << whole.status();
  for (int i = 0; i < 4; ++i) {
    auto split = GgufFile::Open(GgufSplitPath(kSplitFixture, i, 4));
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_EQ((*split)->shard_count(), 4);
    ASSERT_EQ((*split)->tensors().size(), (*whole)->tensors().size());
    for (const GgufTensorInfo& t : (*whole)->tensors()) {
      const GgufTensorInfo* s = (*split)->FindTensor(t.name);
      ASSERT_NE(s, nullptr) << t.name;
      ASSERT_EQ(s->n_bytes, t.n_bytes);
      EXPECT_EQ(std::memcmp((*split)->TensorData(*s), (*whole)->TensorData(t), t.n_bytes), 0)
          << t.name;
    }
    for (const GgufKeyValue& kv : (*whole)->metadata()) {
      const GgufValue* v = (*split)->Find(kv.key);
      ASSERT_NE(v, nullptr) << kv.key;
      EXPECT_TRUE(v->SameAs(kv.value)) << kv.key;
    }
  }
}

}  // namespace
}  // namespace moeflow
