// Topology files: the shipped ones parse; every bad field is reported with
// its file, line and name; unknown keys are errors.
#include "coordinator/topology.h"

#include <fstream>
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
        BadCase{
            "model_path: m\ngpu_workers:\n  - {backend: rocm}\nexpert_workers: [{numa_node: 0}]\n",
            "bad.yaml:3: gpu_workers[0].backend: 'rocm' is not one of cuda, cpu"},
        BadCase{
            "model_path: m\ngpu_workers:\n  - {backend: cuda}\nexpert_workers: [{numa_node: 0}]\n",
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
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\n",
                "bad.yaml:1: expert_workers: required: a list of expert workers"},
        BadCase{"model_path: m\nexpert_workers: [{numa_node: 0}]\n",
                "bad.yaml:1: gpu_workers: required: a list of gpu workers"},
        // What the issue's probe found: each with its line and field.
        BadCase{"model_path: m\nplacement: shard\nplacement: replicate\n",
                "bad.yaml:3: placement: duplicated key (first given on line 2"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - numa_node: 0\n    threads: 2\n    threads: 4\n",
                "bad.yaml:6: expert_workers[0].threads: duplicated key (first given on line 5"},
        BadCase{"model_path: m\ngpu_workers:\n  backend: cpu\nexpert_workers: [{numa_node: 0}]\n",
                "bad.yaml:3: gpu_workers: must be a list of gpu workers (- item per line, or [a, "
                "b]), got a map"},
        BadCase{"model_path: m\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  numa_node: 0\n",
                "bad.yaml:4: expert_workers: must be a list of expert workers (- item per line, "
                "or [a, b]), got a map"},
        BadCase{"model_path: m\ngpu_workers: []\nexpert_workers: [{numa_node: 0}]\n",
                "bad.yaml:2: gpu_workers: empty"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cuda, device_ids: {a: 0}}\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:3: gpu_workers[0].device_ids: must be a list of CUDA device ordinals, "
                "got a map"},
        BadCase{"model_path: m\ngpu_workers:\n  - {backend: cpu}\n  - {backend: cpu}\n"
                "expert_workers: [{numa_node: 0}]\n",
                "bad.yaml:4: gpu_workers[1]: the coordinator drives 1 gpu worker, this topology "
                "lists 2"},
        BadCase{"model_path: m\nucx_transports: tcp\nworker_token_file: /t\n"
                "gpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                "  - {numa_node: 0, address: '127.0.0.1:50070'}\n"
                "  - {numa_node: 1, address: '127.0.0.1:50070'}\n",
                "bad.yaml:7: expert_workers[1].address: '127.0.0.1:50070' is already the address "
                "of expert_workers[0]"},
        BadCase{"model_path: m\nucx_transports: tcp\ngpu_workers: [{backend: cpu}]\n"
                "expert_workers:\n  - {numa_node: 0, address: '127.0.0.1:50070'}\n",
                "bad.yaml:5: expert_workers[0].address: a worker started by hand needs "
                "worker_token_file"},
        BadCase{"model_path: [a, b]\n", "bad.yaml:1: model_path: must be a string"},
        BadCase{"model_path: m\nmax_batch_tokens: 0\n",
                "bad.yaml:2: max_batch_tokens: 0 is outside"},
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
        BadCase{"model_path: m\nworker_token_file: ''\n", "bad.yaml:2: worker_token_file: empty"}));

// The checks against the host `moeflow launch` runs on (also with
// --validate-only): NUMA nodes it lacks, files it cannot open.
TEST(TopologyTest, HostChecksNameLineAndField) {
  TopologyHostChecks host;
  host.numa_nodes = 2;
  host.check_model_path = true;
  host.check_files = true;
  const std::string model = ::testing::TempDir() + "/host_check_model.gguf";
  { std::ofstream(model) << "GGUF"; }
  const std::string ok_text = "model_path: " + model +
                              "\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                              "  - {numa_node: 0}\n  - {numa_node: 1}\n";
  EXPECT_TRUE(ParseTopologyYaml(ok_text, "ok.yaml", host).ok());

  auto numa = ParseTopologyYaml("model_path: " + model +
                                    "\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                                    "  - {numa_node: 0}\n  - {numa_node: 3}\n",
                                "n.yaml", host);
  ASSERT_FALSE(numa.ok());
  EXPECT_NE(std::string(numa.status().message())
                .find("n.yaml:5: expert_workers[1].numa_node: 3: this host has 2 NUMA nodes (0-1"),
            std::string::npos)
      << numa.status();
  // Unchecked without host facts (a topology written for another machine).
  EXPECT_TRUE(ParseTopologyYaml("model_path: m\ngpu_workers: [{backend: cpu}]\n"
                                "expert_workers: [{numa_node: 3}]\n",
                                "n.yaml")
                  .ok());

  auto missing = ParseTopologyYaml(
      "gpu_workers: [{backend: cpu}]\nexpert_workers: [{numa_node: 0}]\n"
      "model_path: /nonexistent/model.gguf\n",
      "m.yaml", host);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message())
                .find("m.yaml:3: model_path: '/nonexistent/model.gguf': No such file"),
            std::string::npos)
      << missing.status();
  auto token = ParseTopologyYaml("model_path: " + model +
                                     "\nworker_token_file: /nonexistent/t\n"
                                     "gpu_workers: [{backend: cpu}]\n"
                                     "expert_workers: [{numa_node: 0}]\n",
                                 "t.yaml", host);
  ASSERT_FALSE(token.ok());
  EXPECT_NE(std::string(token.status().message())
                .find("t.yaml:2: worker_token_file: '/nonexistent/t': No such file"),
            std::string::npos)
      << token.status();
  // A worker started by hand (address) is on whatever host it is: its
  // numa_node is not this host's.
  auto attached = ParseTopologyYaml("model_path: " + model +
                                        "\nucx_transports: tcp\nworker_token_file: " + model +
                                        "\ngpu_workers: [{backend: cpu}]\nexpert_workers:\n"
                                        "  - {numa_node: 5, address: 'box2:50070'}\n",
                                    "a.yaml", host);
  EXPECT_TRUE(attached.ok()) << attached.status();
}

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
