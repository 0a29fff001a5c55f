// gpu_worker's CUDA backend end to end on the tiny llama.cpp fixtures: the
// test drives it as the coordinator does (kEmbed, kLayer per layer with the
// routed experts computed here by the reference, kOutput) and compares the
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

class BufferReply : public dataflow::ReplyWriter {
 public:
  explicit BufferReply(const std::vector<size_t>& sizes) {
    for (size_t s : sizes) parts_.emplace_back(s);
    sent_.assign(sizes.size(), 0);
  }
  uint8_t* Payload(int part) override { return parts_[part].data(); }
  absl::Status Send(int part, size_t bytes) override {
    sent_[part] = bytes;
    return absl::OkStatus();
  }
  const float* floats(int part) const {
    return reinterpret_cast<const float*>(parts_[part].data());
  }
  size_t sent(int part) const { return sent_[part]; }

 private:
  std::vector<std::vector<uint8_t>> parts_;
  std::vector<size_t> sent_;
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
  const int64_t n = static_cast<int64_t>(prompt.size()), h = c.hidden;
  BufferReply reply(backend.ReplyPartBytes());
  proto::LayerStats stats;
  dataflow::RequestHeader header;
  header.n_tokens = static_cast<int32_t>(n);
  header.op = static_cast<uint32_t>(dataflow::DataflowOp::kEmbed);
  ASSERT_TRUE(backend
                  .Handle(header,
                          {reinterpret_cast<const uint8_t*>(prompt.data()), prompt.size() * 4},
                          reply, stats)
                  .ok());
  std::vector<float> x(reply.floats(0), reply.floats(0) + n * h);
  const Deepseek2Weights& w = (*reference)->weights();
  for (int64_t il = 0; il < c.n_layers; ++il) {
    header.op = static_cast<uint32_t>(dataflow::DataflowOp::kLayer);
    header.layer = static_cast<int32_t>(il);
    header.start_pos = 0;
    header.k = static_cast<int32_t>(c.n_experts_used);
    const absl::Status s = backend.Handle(
        header, {reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4}, reply, stats);
    ASSERT_TRUE(s.ok()) << "layer " << il << ": " << s;
    if (!c.is_moe_layer(il)) {
      std::copy(reply.floats(0), reply.floats(0) + n * h, x.begin());
      continue;
    }
    const int64_t k = header.k;
    const float* ffn_inp = reply.floats(0);
    const float* x_norm = ffn_inp + n * h;
    const int32_t* ids = reinterpret_cast<const int32_t*>(x_norm + n * h);
    const float* weights = reinterpret_cast<const float*>(ids + n * k);
    std::vector<float> routed(n * h);
    RoutedExperts(c, w.layers[il]).Forward(x_norm, n, ids, weights, k, routed.data());
    Combine(ffn_inp, routed.data(), c.n_shared_experts > 0 ? reply.floats(1) : nullptr, n, h,
            x.data());
  }
  header.op = static_cast<uint32_t>(dataflow::DataflowOp::kOutput);
  ASSERT_TRUE(
      backend
          .Handle(header, {reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4}, reply, stats)
          .ok());
  const float* got = reply.floats(0);
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
