// gpu_worker/attention_step.h: the order of a step's requests and the
// checks of a step's segments, the same for both backends — a step starts
// at layer 0 with its segments, layers follow one by one, a MoE layer's
// successor carries its routed sums, a new step start abandons a step the
// coordinator gave up on; bad pages, positions, tokens and sizes are
// refused with the field named, and nothing changes then.
#include "gpu_worker/attention_step.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

using dataflow::kRoutedSums;
using dataflow::kStepStart;
using dataflow::LayerRequest;
using dataflow::RequestHeader;
using dataflow::SegmentWire;

Deepseek2Config Config() {
  Deepseek2Config c;
  c.n_layers = 3;
  c.n_dense_layers = 1;  // layer 0 dense, 1 and 2 MoE
  c.hidden = 4;
  c.vocab_size = 10;
  c.n_experts_used = 2;
  return c;
}

AttentionStepLimits Limits() {
  AttentionStepLimits l;
  l.max_tokens = 8;
  l.max_segments = 2;
  l.n_pages = 4;
  l.page_tokens = 4;
  l.max_positions = 8;
  return l;
}

// Two sequences: 3 prompt tokens at 0.. (page 0), 1 decode token at 5 (pages 1, 2).
struct Start {
  std::vector<SegmentWire> segments = {{7, 3, 0, 1, 0}, {9, 1, 5, 2, 0}};
  std::vector<int32_t> pages = {0, 1, 2};
  std::vector<int32_t> tokens = {1, 2, 3, 4};
  RequestHeader header;
  LayerRequest request;
  Start() {
    header.op = static_cast<uint32_t>(dataflow::DataflowOp::kLayer);
    header.layer = 0;
    header.n_tokens = 4;
    header.n_segments = 2;
    header.flags = kStepStart;
    request.segments = segments;
    request.pages = pages;
    request.tokens = tokens;
  }
};

RequestHeader Layer(int layer, uint32_t flags) {
  RequestHeader h;
  h.op = static_cast<uint32_t>(dataflow::DataflowOp::kLayer);
  h.layer = layer;
  h.n_tokens = 4;
  h.k = 2;
  h.flags = flags;
  return h;
}

TEST(AttentionStepTest, AStepRunsEveryLayerInOrderWithTheRoutedSumsOfEachMoeLayer) {
  AttentionStep step(Config(), Limits());
  Start start;
  ASSERT_TRUE(step.BeginLayer(start.header, start.request).ok());
  ASSERT_EQ(step.segments().size(), 2u);
  EXPECT_EQ(step.segments()[1].first, 3);
  EXPECT_EQ(step.pages(step.segments()[1]).size(), 2u);
  std::vector<int32_t> positions, slots;
  step.PositionsAndSlots(&positions, &slots);
  EXPECT_EQ(positions, (std::vector<int32_t>{0, 1, 2, 5}));
  EXPECT_EQ(slots, (std::vector<int32_t>{0, 1, 2, 2 * 4 + 1}));  // position 5: page 2, slot 1
  EXPECT_EQ(step.OutputRows(false), (std::vector<int64_t>{2, 3}));
  step.FinishLayer();
  EXPECT_EQ(step.pending_moe_layer(), -1);  // layer 0 is dense

  const std::vector<float> sums(4 * 4, 1.f);
  LayerRequest with_sums;
  with_sums.routed_sums = sums;
  // Layer 1 after a dense layer: no routed sums allowed.
  EXPECT_EQ(step.BeginLayer(Layer(1, kRoutedSums), with_sums).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(step.BeginLayer(Layer(1, 0), LayerRequest()).ok());
  step.FinishLayer();
  EXPECT_EQ(step.pending_moe_layer(), 1);
  // Layer 2 after MoE layer 1: its sums are required, of n × hidden floats.
  const absl::Status missing = step.BeginLayer(Layer(2, 0), LayerRequest());
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(missing.message()).find("layer 1 is a MoE layer"), std::string::npos)
      << missing;
  LayerRequest short_sums;
  short_sums.routed_sums = absl::MakeConstSpan(sums).subspan(0, 5);
  EXPECT_EQ(step.BeginLayer(Layer(2, kRoutedSums), short_sums).code(),
            absl::StatusCode::kInvalidArgument);
  // Skipping a layer is out of order.
  EXPECT_EQ(step.BeginLayer(Layer(3, kRoutedSums), with_sums).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(step.BeginLayer(Layer(2, kRoutedSums), with_sums).ok());
  step.FinishLayer();
  RequestHeader output;
  output.op = static_cast<uint32_t>(dataflow::DataflowOp::kOutput);
  output.n_tokens = 4;
  EXPECT_EQ(step.BeginOutput(output, {}).code(), absl::StatusCode::kFailedPrecondition);
  output.flags = kRoutedSums;
  ASSERT_TRUE(step.BeginOutput(output, sums).ok());
  step.End();
  EXPECT_FALSE(step.active());
  // Without a running step only a step start is taken.
  EXPECT_EQ(step.BeginLayer(Layer(1, 0), LayerRequest()).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(AttentionStepTest, AStepStartAbandonsTheStepRunning) {
  AttentionStep step(Config(), Limits());
  Start start;
  ASSERT_TRUE(step.BeginLayer(start.header, start.request).ok());
  step.FinishLayer();
  ASSERT_TRUE(step.BeginLayer(Layer(1, 0), LayerRequest()).ok());
  // The coordinator gave up on that step (a worker failed): a new one starts.
  Start again;
  again.segments = {{7, 2, 0, 1, 0}};
  again.tokens = {5, 6};
  again.pages = {3};
  again.header.n_tokens = 2;
  again.header.n_segments = 1;
  again.request.segments = again.segments;
  again.request.tokens = again.tokens;
  again.request.pages = again.pages;
  ASSERT_TRUE(step.BeginLayer(again.header, again.request).ok());
  EXPECT_EQ(step.n_tokens(), 2);
  EXPECT_EQ(step.layer(), 0);
  EXPECT_EQ(step.pages(), (std::vector<int32_t>{3}));
}

TEST(AttentionStepTest, BadStepsAreRefusedNamingTheFieldAndChangeNothing) {
  struct Case {
    const char* what;
    void (*edit)(Start&);
    const char* message;
  };
  const Case cases[] = {
      {"page outside the cache", [](Start& s) { s.pages[1] = 4; },
       "page 4 is outside the 4 pages of the KV cache"},
      {"pages short of the positions", [](Start& s) { s.segments[1].n_pages = 1; },
       "sequence 9 has 1 pages of 4 positions for 6 positions"},
      {"position past the context", [](Start& s) { s.segments[1].start_pos = 8; },
       "sequence 9 positions 8..8 are outside the 8 one sequence may hold"},
      {"token outside the vocabulary", [](Start& s) { s.tokens[2] = 10; },
       "token id 10 at index 2 is out of range [0, 10)"},
      {"too many tokens", [](Start& s) { s.header.n_tokens = 9; }, "n_tokens 9 is outside [1, 8]"},
      {"not at layer 0", [](Start& s) { s.header.layer = 1; }, "a step starts at layer 0, not 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    AttentionStep step(Config(), Limits());
    Start good;
    ASSERT_TRUE(step.BeginLayer(good.header, good.request).ok());
    step.End();
    Start bad;
    c.edit(bad);
    bad.request.segments = bad.segments;
    bad.request.pages = bad.pages;
    bad.request.tokens = bad.tokens;
    const absl::Status s = step.BeginLayer(bad.header, bad.request);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find(c.message), std::string::npos) << s;
    EXPECT_FALSE(step.active());
    EXPECT_EQ(step.tokens(), (std::vector<int32_t>{1, 2, 3, 4}));  // the earlier step's, kept
  }
}

}  // namespace
}  // namespace moeflow
