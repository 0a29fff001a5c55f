// The protobuf toolchain (Debian protoc via bazel/proto.bzl) produces working
// C++ for moeflow's contracts: a topology survives text and binary round trips.
#include "proto/topology.pb.h"

#include <string>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace moeflow {
namespace {

TEST(TopologyProtoTest, RoundTripsThroughTextAndBinary) {
  const std::string text = R"pb(
    model_path: "models/v3.gguf"
    placement: EXPERT_PLACEMENT_SLICE
    gpu_workers { device_ids: [ 0, 1 ] backend: GPU_BACKEND_CUDA kv_cache_tokens: 32768 }
    expert_workers { numa_node: 0 threads: 32 }
    expert_workers { numa_node: 1 threads: 32 host: "box2" }
    ucx_transports: "sm,self"
  )pb";
  proto::Topology topology;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &topology));
  EXPECT_EQ(topology.gpu_workers(0).device_ids_size(), 2);
  EXPECT_EQ(topology.expert_workers(1).host(), "box2");

  proto::Topology copy;
  ASSERT_TRUE(copy.ParseFromString(topology.SerializeAsString()));
  EXPECT_EQ(copy.placement(), proto::EXPERT_PLACEMENT_SLICE);
  EXPECT_EQ(copy.expert_workers(1).threads(), 32);
  EXPECT_EQ(copy.gpu_workers(0).kv_cache_tokens(), 32768);
}

TEST(TopologyProtoTest, RejectsUnknownFieldInText) {
  proto::Topology topology;
  EXPECT_FALSE(google::protobuf::TextFormat::ParseFromString("gpus: 4", &topology));
}

}  // namespace
}  // namespace moeflow
