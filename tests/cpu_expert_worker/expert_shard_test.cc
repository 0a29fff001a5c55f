// ExpertShard (cpu_expert_worker's compute) in process, on the tiny-v2
// fixture: a kExpertsCombine request returns, per row, the weighted sum of
// the per-pair outputs the plain request returns, and the malformed requests
// are refused with INVALID_ARGUMENT before anything is sent; on a split
// model it maps only the shards that hold routed experts.
#include "cpu_expert_worker/expert_shard.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dataflow/wire.h"
#include "gtest/gtest.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "model/gguf_shard.h"
#include "proto/worker.pb.h"

namespace moeflow {
namespace {

using dataflow::RequestHeader;

class BufferReplyWriter final : public dataflow::ReplyWriter {
 public:
  explicit BufferReplyWriter(size_t capacity) : buffer_(capacity / sizeof(float) + 1) {}
  uint8_t* Payload() override { return reinterpret_cast<uint8_t*>(buffer_.data()); }
  absl::Status Send(size_t payload_bytes) override {
    ++sends_;
    sent_bytes_ = payload_bytes;
    return absl::OkStatus();
  }
  const float* data() const { return buffer_.data(); }
  int sends() const { return sends_; }
  size_t sent_bytes() const { return sent_bytes_; }

 private:
  std::vector<float> buffer_;
  int sends_ = 0;
  size_t sent_bytes_ = 0;
};

// Configures and loads `shard` (every expert) on `model_path`.
void LoadShard(const std::string& model_path, ExpertShard& shard) {
  proto::ConfigureRequest request;
  request.set_model_path(model_path);
  request.set_role(proto::WORKER_ROLE_CPU_EXPERT);
  request.set_max_batch_tokens(8);
  request.set_worker_name("expert-test");
  ASSERT_TRUE(shard.Configure(request).ok());
  const absl::Status loaded = shard.Load([](const proto::LoadProgress&) {});
  ASSERT_TRUE(loaded.ok()) << loaded;
}

class ExpertShardTest : public ::testing::Test {
 protected:
  virtual std::string ModelPath() const { return "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf"; }

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(LoadShard(ModelPath(), shard_));
    auto file = GgufFile::Open(ModelPath());
    ASSERT_TRUE(file.ok()) << file.status();
    auto config = Deepseek2Config::FromGguf(**file);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
  }

  // A kExperts payload (dataflow/wire.h): rows × hidden random activations,
  // then row_of_pair, expert_of_pair and (combine) weight_of_pair for k
  // distinct experts per row; *row_of_pair / *expert_of_pair (may be null)
  // get where those sections start.
  std::vector<uint8_t> Payload(int rows, int k, bool with_weights, uint32_t seed = 1,
                               int32_t** row_of_pair_out = nullptr,
                               int32_t** expert_of_pair_out = nullptr) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int64_t h = config_.hidden;
    const int pairs = rows * k;
    std::vector<uint8_t> bytes(dataflow::MaxExpertsRequestBytes(rows, pairs, h));
    dataflow::WireWriter out(absl::MakeSpan(bytes));
    float* x = out.Add<float>(static_cast<size_t>(rows * h));
    for (int64_t i = 0; i < rows * h; ++i) x[i] = u(rng);
    int32_t* row_of_pair = out.Add<int32_t>(static_cast<size_t>(pairs));
    int32_t* expert_of_pair = out.Add<int32_t>(static_cast<size_t>(pairs));
    for (int p = 0; p < pairs; ++p) {
      row_of_pair[p] = p / k;
      expert_of_pair[p] = static_cast<int32_t>((p / k * 3 + (p % k)) % config_.n_experts);
    }
    if (with_weights) {
      float* w = out.Add<float>(static_cast<size_t>(pairs));
      for (int p = 0; p < pairs; ++p) w[p] = 0.25f + 0.5f * std::fabs(u(rng));
    }
    bytes.resize(out.size());
    // The sections point into `bytes`, whose storage resize() keeps.
    if (row_of_pair_out != nullptr) *row_of_pair_out = row_of_pair;
    if (expert_of_pair_out != nullptr) *expert_of_pair_out = expert_of_pair;
    return bytes;
  }

  RequestHeader Header(int rows, int k, uint32_t flags) const {
    RequestHeader header;
    header.op = static_cast<uint32_t>(dataflow::DataflowOp::kExperts);
    header.layer = static_cast<int32_t>(config_.n_dense_layers);
    header.n_rows = rows;
    header.n_pairs = rows * k;
    header.k = k;
    header.flags = flags;
    return header;
  }

  absl::Status Handle(const RequestHeader& header, const std::vector<uint8_t>& payload,
                      BufferReplyWriter& writer) {
    return Handle(shard_, header, payload, writer);
  }
  static absl::Status Handle(ExpertShard& shard, const RequestHeader& header,
                             const std::vector<uint8_t>& payload, BufferReplyWriter& writer) {
    proto::LayerStats stats;
    return shard.Handle(header, absl::MakeConstSpan(payload), writer, stats);
  }

  ExpertShard shard_;
  Deepseek2Config config_;
};

TEST_F(ExpertShardTest, CombinedReplyIsTheWeightedSumOfThePerPairOutputs) {
  const int rows = 5, k = static_cast<int>(config_.n_experts_used);
  const int64_t h = config_.hidden;
  const std::vector<uint8_t> combined_payload = Payload(rows, k, true);
  // The same activations and pairs without the weights.
  const std::vector<uint8_t> plain_payload = Payload(rows, k, false);
  const size_t weights_bytes = dataflow::SectionBytes<float>(static_cast<size_t>(rows * k));
  ASSERT_EQ(plain_payload.size() + weights_bytes, combined_payload.size());
  const float* weights =
      reinterpret_cast<const float*>(combined_payload.data() + plain_payload.size());

  BufferReplyWriter plain(shard_.MaxReplyBytes());
  ASSERT_TRUE(Handle(Header(rows, k, 0), plain_payload, plain).ok());
  ASSERT_EQ(plain.sent_bytes(), static_cast<size_t>(rows * k * h) * 4);
  BufferReplyWriter combined(shard_.MaxReplyBytes());
  ASSERT_TRUE(Handle(Header(rows, k, dataflow::kExpertsCombine), combined_payload, combined).ok());
  ASSERT_EQ(combined.sent_bytes(), static_cast<size_t>(rows * h) * 4);

  float max_abs = 0.f;
  for (int r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < h; ++i) {
      double sum = 0;
      for (int j = 0; j < k; ++j) {
        sum += static_cast<double>(weights[r * k + j]) * plain.data()[(r * k + j) * h + i];
      }
      max_abs = std::max(max_abs, std::fabs(static_cast<float>(sum)));
      EXPECT_NEAR(combined.data()[r * h + i], sum, 1e-5 * (1.0 + std::fabs(sum)))
          << "row " << r << " column " << i;
    }
  }
  EXPECT_GT(max_abs, 0.f);  // the experts did produce something
}

TEST_F(ExpertShardTest, MalformedRequestsAreRefusedBeforeAnythingIsSent) {
  const int rows = 2, k = static_cast<int>(config_.n_experts_used);
  struct BadCase {
    const char* what;
    RequestHeader header;
    std::vector<uint8_t> payload;
    const char* message;
  };
  std::vector<BadCase> cases;
  cases.push_back(
      {"unknown flag", Header(rows, k, 2), Payload(rows, k, false), "unknown flags 0x2"});
  cases.push_back({"combine without weights", Header(rows, k, dataflow::kExpertsCombine),
                   Payload(rows, k, false), "ends inside section weight_of_pair"});
  cases.push_back({"weights without combine", Header(rows, k, 0), Payload(rows, k, true),
                   "kExperts request: payload of"});
  {
    RequestHeader header = Header(rows, k, dataflow::kExpertsCombine);
    header.k = k + 1;  // n_pairs is then not n_rows × k
    cases.push_back({"pairs not rows × k", header, Payload(rows, k, true), "is not n_rows 2 × k"});
  }
  {
    int32_t* row_of_pair = nullptr;
    std::vector<uint8_t> payload = Payload(rows, k, true, 1, &row_of_pair);
    std::swap(row_of_pair[0], row_of_pair[rows * k - 1]);  // rows out of order
    cases.push_back({"row out of order", Header(rows, k, dataflow::kExpertsCombine), payload,
                     "kExperts combine: pair 0 names row 1, expected 0"});
  }
  {
    int32_t* expert_of_pair = nullptr;
    std::vector<uint8_t> payload = Payload(rows, k, false, 1, nullptr, &expert_of_pair);
    expert_of_pair[1] = static_cast<int32_t>(config_.n_experts);
    cases.push_back({"expert id past the model", Header(rows, k, 0), payload, "is out of range"});
  }
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    BufferReplyWriter writer(shard_.MaxReplyBytes());
    const absl::Status s = Handle(c.header, c.payload, writer);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(c.message), absl::string_view::npos) << s;
    EXPECT_EQ(writer.sends(), 0);
  }
}

// A split model (tiny-v3-split: llama-gguf-split of tiny-v3.q4_k_m.gguf,
// 20 tensors a shard) given by its first shard, which holds no routed
// expert: the worker maps only shards 2-4 (blk.1-3's ffn_*_exps), and its
// replies are those of a worker on the whole file, bit for bit.
class SplitModelExpertShardTest : public ExpertShardTest {
 protected:
  std::string ModelPath() const override {
    return "tests/data/llamacpp/tiny-v3-split/tiny-v3-split.q4_k_m-00001-of-00004.gguf";
  }
};

TEST_F(SplitModelExpertShardTest, MapsOnlyTheShardsWithExpertsAndRepliesAsTheWholeFile) {
  const GgufFile* file = shard_.file();
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(file->shard_count(), 4);
  EXPECT_FALSE(file->shard(0).mapped()) << file->shard(0).path();
  for (int i = 1; i < 4; ++i) EXPECT_TRUE(file->shard(i).mapped()) << file->shard(i).path();

  ExpertShard whole;
  ASSERT_NO_FATAL_FAILURE(LoadShard("tests/data/llamacpp/tiny-v3/tiny-v3.q4_k_m.gguf", whole));
  ASSERT_EQ(whole.file()->shard_count(), 1);
  EXPECT_EQ(shard_.ShardBytes(), whole.ShardBytes());
  const int rows = 3, k = static_cast<int>(config_.n_experts_used);
  const std::vector<uint8_t> payload = Payload(rows, k, false, /*seed=*/7);
  for (int64_t il = config_.n_dense_layers; il < config_.n_layers; ++il) {
    SCOPED_TRACE(il);
    RequestHeader header = Header(rows, k, 0);
    header.layer = static_cast<int32_t>(il);
    BufferReplyWriter from_split(shard_.MaxReplyBytes());
    BufferReplyWriter from_whole(whole.MaxReplyBytes());
    ASSERT_TRUE(Handle(shard_, header, payload, from_split).ok());
    ASSERT_TRUE(Handle(whole, header, payload, from_whole).ok());
    ASSERT_EQ(from_split.sent_bytes(), static_cast<size_t>(rows * k * config_.hidden) * 4);
    ASSERT_EQ(from_split.sent_bytes(), from_whole.sent_bytes());
    EXPECT_EQ(std::memcmp(from_split.data(), from_whole.data(), from_split.sent_bytes()), 0);
    float max_abs = 0.f;
    for (size_t i = 0; i < from_split.sent_bytes() / 4; ++i) {
      max_abs = std::max(max_abs, std::fabs(from_split.data()[i]));
    }
    EXPECT_GT(max_abs, 0.f);
  }
}

}  // namespace
}  // namespace moeflow
