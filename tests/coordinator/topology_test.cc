// Topology files: the shipped ones parse; every bad field is reported with
// its file, line and name; unknown keys are errors.
#include "coordinator/topology.h"

#include <string>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

constexpr char kGood[] = R"(model_path: /m.gguf
control_address: 127.0.0.1:7000
placement: shard
ucx_transports: tcp
ucx_net_devices: lo
max_batch_tokens: 32
worker_token_file: /etc/moeflow/worker.token
gpu_workers:
  - {backend: cpu, kv_cache_tokens: 1024, threads: 2}
expert_workers:
  - {numa_node: 0, threads: 4, memory: node}
  - {numa_node: 1}
)";

TEST(TopologyTest, ParsesEveryField) {
  auto t = ParseTopologyYaml(kGood, "good.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model_path(), "/m.gguf");
  EXPECT_EQ(t->control_address(), "127.0.0.1:7000");
  EXPECT_EQ(t->placement(), proto::EXPERT_PLACEMENT_SHARD);
  EXPECT_EQ(t->ucx_transports(), "tcp");
  EXPECT_EQ(t->ucx_net_devices(), "lo");
  EXPECT_EQ(t->max_batch_tokens(), 32);
  EXPECT_EQ(t->worker_token_file(), "/etc/moeflow/worker.token");
  ASSERT_EQ(t->gpu_workers_size(), 1);
  EXPECT_EQ(t->gpu_workers(0).backend(), proto::GPU_BACKEND_CPU);
  EXPECT_EQ(t->gpu_workers(0).kv_cache_tokens(), 1024);
  EXPECT_EQ(t->gpu_workers(0).threads(), 2);
  ASSERT_EQ(t->expert_workers_size(), 2);
  EXPECT_EQ(t->expert_workers(0).threads(), 4);
  EXPECT_EQ(t->expert_workers(0).memory(), "node");
  EXPECT_EQ(t->expert_workers(1).numa_node(), 1);
  EXPECT_EQ(t->expert_workers(1).memory(), "");  // auto
}

TEST(TopologyTest, AppliesDefaults) {
  auto t = ParseTopologyYaml(
      "model_path: m.gguf\ngpu_workers:\n  - {backend: cpu}\nexpert_workers:\n  - {numa_node: 0}\n",
      "d.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->control_address(), "127.0.0.1:50051");
  EXPECT_EQ(t->placement(), proto::EXPERT_PLACEMENT_AUTO);
  EXPECT_EQ(t->ucx_transports(), "sm,self");
  EXPECT_EQ(t->max_batch_tokens(), 64);
}

TEST(TopologyTest, ShippedTopologiesParse) {
  for (const char* name :
       {"cpu-single-socket", "dual-xeon-1x4090", "dual-xeon-4x4090", "cpu-two-hosts"}) {
    auto t = LoadTopologyFile(std::string("deploy/topologies/") + name + ".yaml");
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    EXPECT_EQ(t->gpu_workers_size(), 1) << name;
  }
  auto four = LoadTopologyFile("deploy/topologies/dual-xeon-4x4090.yaml");
  ASSERT_TRUE(four.ok());
  EXPECT_EQ(four->gpu_workers(0).backend(), proto::GPU_BACKEND_CUDA);
  EXPECT_EQ(four->gpu_workers(0).device_ids_size(), 4);
  EXPECT_EQ(four->expert_workers_size(), 2);
}

struct BadCase {
  const char* yaml;
  const char* expected;  // substring of the error
};

class TopologyErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(TopologyErrorTest, NamesLineAndField) {
  auto t = ParseTopologyYaml(GetParam().yaml, "bad.yaml");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(t.status().message()).find(GetParam().expected), std::string::npos)
      << t.status().message();
}


INSTANTIATE_TEST_SUITE_P(
    Errors, TopologyErrorTest,
    ::testing::Values(
        BadCase{"model_path: m\nplacment: shard\n", "bad.yaml:2: placment: unknown key"},
        BadCase{"model_path: m\nplacement: spread\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:2: placement: 'spread' is not one of"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: rocm}\nexpert_workers: [{numa_node: 0}]\n",
                "bad.yaml:3: gpu_workers[0].backend: 'rocm' is not one of cuda, cpu"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cuda}\nexpert_workers: [{numa_node: 0}]\n",
                "gpu_workers[0].device_ids: backend cuda needs at least one device id"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cpu, kv_cache_tokens: -5}\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:3: gpu_workers[0].kv_cache_tokens: -5 is outside"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - {numa_node: 0}\n  - {numa_node: 0}\n",
                "bad.yaml:5: expert_workers[1].numa_node: 0 is already used by expert_workers[0]"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - {numa_node: zero}\n",
                "bad.yaml:4: expert_workers[0].numa_node: 'zero' is not an integer"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - {numa_node: 0, memory: huge}\n",
                "bad.yaml:4: expert_workers[0].memory: 'huge' is not one of auto, mapped, node"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - {numa_node: 0, cores: 3}\n",
                "bad.yaml:4: expert_workers[0].cores: unknown key"},
        BadCase{"model_path: m\ncontrol_address: localhost\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:2: control_address: 'localhost' is not host:port"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\n", "expert_workers: a list"},
        BadCase{"model_path: m\nexpert_workers: [{numa_node: 0}]\n", "gpu_workers: a list"},
        BadCase{"model_path: [a, b]\n", "bad.yaml:1: model_path: must be a string"},
        BadCase{"model_path: m\nmax_batch_tokens: 0\n", "bad.yaml:2: max_batch_tokens: 0 is outside"},
        BadCase{"model_path: m\n  bad indent: [\n", "bad.yaml:"},
        BadCase{"model_path: m\nucx_transports: 'sm;rm -rf'\n", "bad.yaml:2: ucx_transports"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cpu, separate_process: maybe}\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:3: gpu_workers[0].separate_process: 'maybe' is not true or false"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cuda, device_ids: [0], "
                "separate_process: true}\nexpert_workers: [{numa_node: 0}]\n",
                "gpu_workers[0].separate_process: only for backend cpu"},
        BadCase{"model_path: m\nucx_transports: tcp\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers:\n  - {numa_node: 0, host: box2}\n",
                "bad.yaml:5: expert_workers[0].address: required for a worker on host box2"},
        BadCase{"model_path: m\nucx_transports: tcp\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers:\n  - {numa_node: 0, host: box2, address: 'box2:0'}\n",
                "expert_workers[0].address: port 0"},
        BadCase{"model_path: m\nucx_transports: sm,self\nworker_token_file: /t\n"
                "gpu_workers: [{backend: cpu}]\n"
                "expert_workers:\n  - {numa_node: 0, host: box2, address: 'box2:50070'}\n",
                "bad.yaml:2: ucx_transports: 'sm,self' has no network transport"},
        BadCase{"model_path: m\nucx_transports: tcp\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers:\n  - {numa_node: 0, host: box2, address: 'box2:50070'}\n",
                "bad.yaml:5: expert_workers[0].host: a worker on host box2 needs "
                "worker_token_file"},
        BadCase{"model_path: m\nworker_token_file: ''\n",
                "bad.yaml:2: worker_token_file: empty"}));

TEST(TopologyTest, RemoteExpertWorkerAndSeparateGpuProcess) {
  auto t = ParseTopologyYaml(R"(model_path: /m.gguf
ucx_transports: tcp
worker_token_file: /etc/moeflow/worker.token
gpu_workers:
  - {backend: cpu, separate_process: true}
expert_workers:
  - {numa_node: 0}
  - {numa_node: 0, host: box2, address: 'box2:50070'}
)",
                             "remote.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->gpu_workers(0).separate_process());
  EXPECT_EQ(t->expert_workers(1).host(), "box2");
  EXPECT_EQ(t->expert_workers(1).address(), "box2:50070");
  EXPECT_TRUE(IsLocalHost(""));
  EXPECT_TRUE(IsLocalHost("127.0.0.1"));
  EXPECT_FALSE(IsLocalHost("box2"));
  EXPECT_TRUE(HasNetworkTransport("sm,self,tcp"));
  EXPECT_FALSE(HasNetworkTransport("sm,self"));
}

}  // namespace
}  // namespace moeflow
