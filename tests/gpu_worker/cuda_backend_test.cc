// gpu_worker's CUDA backend end to end on the tiny llama.cpp fixtures: the
// coordinator's layer driver runs a step over it (the step's kLayer requests
// with the routed experts computed here by the reference, kOutput), on pages
// of its paged cache out of order, and the test compares the
// logits with the float32 reference (Deepseek2Reference): top-1 equal where
// the reference's margin is clear, max |Δ| within BF16/int8 weight error.
// The reference logits are computed everywhere; without a CUDA device the
// backend part skips and only the refusal at Configure is checked.
#include "gpu_worker/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/check.h"
#include "coordinator/layer_driver.h"
#include "coordinator/placement.h"
#include "dataflow/in_process_client.h"
#include "gtest/gtest.h"
#include "model/deepseek2/reference.h"
#include "model/deepseek2/weights.h"

namespace moeflow {
namespace {

std::string NoDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device";
  return "";
}

// The routed experts of the float32 reference, as an expert worker's
// compute (the kExpertsCombine requests of a one-worker plan).
class ReferenceExperts final : public dataflow::WorkerCompute {
 public:
  ReferenceExperts(const Deepseek2Config& config, const Deepseek2Weights& weights, int64_t rows)
      : config_(config), weights_(weights), rows_(rows) {}
  absl::Status Configure(const proto::ConfigureRequest&) override { return absl::OkStatus(); }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>&) override {
    return absl::OkStatus();
  }
  size_t MaxRequestBytes() const override {
    return dataflow::MaxExpertsRequestBytes(rows_, rows_ * config_.n_experts_used, config_.hidden);
  }
  size_t MaxReplyBytes() const override {
    return dataflow::SectionBytes<float>(
        static_cast<size_t>(rows_ * config_.n_experts_used * config_.hidden));
  }
  absl::Status Handle(const dataflow::RequestHeader& header, absl::Span<const uint8_t> payload,
                      dataflow::ReplyWriter& reply, proto::LayerStats&) override {
    MOEFLOW_ASSIGN_OR_RETURN(const dataflow::ExpertsRequest r,
                             dataflow::ParseExpertsRequest(header, payload, config_.hidden));
    if ((header.flags & dataflow::kExpertsCombine) == 0) {
      return absl::UnimplementedError("the test's experts sum every pair (one worker)");
    }
    RoutedExperts(config_, weights_.layers[static_cast<size_t>(header.layer)])
        .Forward(r.rows.data(), header.n_rows, r.expert_of_pair.data(), r.weight_of_pair.data(),
                 header.k, reinterpret_cast<float*>(reply.Payload()));
    return reply.Send(
        dataflow::SectionBytes<float>(static_cast<size_t>(header.n_rows * config_.hidden)));
  }
  int64_t ShardBytes() const override { return 0; }

 private:
  const Deepseek2Config config_;
  const Deepseek2Weights& weights_;
  const int64_t rows_;
};

proto::ConfigureRequest Request(const std::string& model) {
  proto::ConfigureRequest r;
  r.set_role(proto::WORKER_ROLE_GPU);
  r.set_backend("cuda");
  r.set_model_path(model);
  r.set_max_batch_tokens(16);
  r.set_kv_cache_tokens(256);
  return r;
}

TEST(CudaBackendTest, ConfigureRefusesWithoutADevice) {
  const std::string reason = NoDeviceReason();
  if (reason.empty()) GTEST_SKIP() << "a CUDA device is present";
  CudaGpuWorkerBackend backend;
  const absl::Status s = backend.Configure(Request("tests/data/llamacpp/tiny-v2/tiny-v2.f32.gguf"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("no usable CUDA device"), std::string::npos) << s;
}

class CudaBackendDeviceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaBackendDeviceTest, LogitsMatchReference) {
  const std::string path = "tests/data/llamacpp/" + GetParam();
  auto reference = Deepseek2Reference::Open(path);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const Deepseek2Config& c = (*reference)->config();
  const std::vector<int32_t> prompt = {1, 17, 401, 9, 300, 1000, 5};
  auto want = (*reference)->Forward(prompt, 0);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(want->size(), prompt.size() * c.vocab_size);
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;

  CudaGpuWorkerBackend backend;
  ASSERT_TRUE(backend.Configure(Request(path)).ok());
  ASSERT_TRUE(backend.Load([](const proto::LoadProgress&) {}).ok());
  // The coordinator's layer driver over the backend and the reference's
  // experts, both in process: the protocol of every topology.
  const int64_t n = static_cast<int64_t>(prompt.size());
  ReferenceExperts experts(c, (*reference)->weights(), 16);
  dataflow::InProcessClient attention_client("gpu0", &backend, false);
  dataflow::InProcessClient experts_client("expert0", &experts, false);
  const ExpertPlan plan = MakeExpertPlan(c, proto::EXPERT_PLACEMENT_REPLICATE, 1);
  LayerDriverOptions options;
  options.max_tokens = 16;
  LayerDriver driver(c, &plan, options);
  const std::vector<int32_t> pages = {3, 0};  // any pages of the cache
  const StepSegment segment{0, prompt, 0, pages};
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  const absl::Status s =
      driver.Step({&attention_client, {&experts_client}}, {segment}, c.n_experts_used,
                  /*all_logits=*/true, absl::MakeSpan(logits), nullptr);
  ASSERT_TRUE(s.ok()) << s;
  const float* got = logits.data();
  const int64_t vocab = c.vocab_size;
  float max_ref = 0, max_diff = 0;
  for (int64_t i = 0; i < n * vocab; ++i) {
    max_ref = std::max(max_ref, std::fabs((*want)[i]));
    max_diff = std::max(max_diff, std::fabs(got[i] - (*want)[i]));
  }
  // BF16 / int8 weights: a few 2^-8 relative errors compounded over the layers.
  EXPECT_LE(max_diff, 0.05f * max_ref) << "max |Δ| " << max_diff << " of max |logit| " << max_ref;
  for (int64_t t = 0; t < n; ++t) {
    const float* ref = want->data() + t * vocab;
    std::vector<int64_t> order(vocab);
    for (int64_t i = 0; i < vocab; ++i) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                      [&](int64_t a, int64_t b) { return ref[a] > ref[b]; });
    if (ref[order[0]] - ref[order[1]] < 0.2f) continue;  // no clear top-1
    const float* g = got + t * vocab;
    EXPECT_EQ(std::max_element(g, g + vocab) - g, order[0]) << "token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaBackendDeviceTest,
                         ::testing::Values("tiny-v2/tiny-v2.f32.gguf", "tiny-v2/tiny-v2.q8_0.gguf",
                                           "tiny-v3/tiny-v3.f32.gguf",
                                           "tiny-v3/tiny-v3.q4_k_m.gguf"),
                         [](const auto& info) {
                           std::string name = info.param.substr(info.param.find('/') + 1);
                           for (char& ch : name) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace moeflow
