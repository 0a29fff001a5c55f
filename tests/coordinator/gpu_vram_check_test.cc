// The coordinator refuses a topology whose GPU worker cannot hold its share
// of the model (gpu_workers[i].vram_gib, model/memory_plan.h PlanGpuMemory),
// before it starts any process; vram_gib is parsed and validated from YAML.
#include <cstdio>
#include <memory>
#include <string>

#include "coordinator/coordinator.h"
#include "coordinator/topology.h"
#include "gtest/gtest.h"

namespace moeflow {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v2/tiny-v2.f32.gguf";

// Coordinator::Start on `topology` with worker binaries that do not exist:
// for refusals that must come before any process starts.
absl::StatusOr<std::unique_ptr<Coordinator>> StartWithoutWorkers(const proto::Topology& topology) {
  CoordinatorOptions options;
  options.topology = topology;
  options.gpu_worker_binary = "/nonexistent/gpu_worker";
  options.expert_worker_binary = "/nonexistent/cpu_expert_worker";
  return Coordinator::Start(options);
}

std::string Yaml(const std::string& gpu_worker) {
  return std::string("model_path: ") + kModel + "\ngpu_workers:\n  - " + gpu_worker +
         "\nexpert_workers:\n  - {numa_node: 0}\n";
}

TEST(GpuVramCheckTest, ParsesVramGib) {
  auto t = ParseTopologyYaml(Yaml("{backend: cuda, device_ids: [0, 1], vram_gib: 23.6}"), "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_DOUBLE_EQ(t->gpu_workers(0).vram_gib(), 23.6);
  auto unset = ParseTopologyYaml(Yaml("{backend: cuda, device_ids: [0]}"), "t.yaml");
  ASSERT_TRUE(unset.ok()) << unset.status();
  EXPECT_EQ(unset->gpu_workers(0).vram_gib(), 0.0);
}

TEST(GpuVramCheckTest, RejectsBadVramGib) {
  for (const char* bad : {"-1", "lots", "[24]"}) {
    auto t = ParseTopologyYaml(
        Yaml(std::string("{backend: cuda, device_ids: [0], vram_gib: ") + bad + "}"), "t.yaml");
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("t.yaml:3: gpu_workers[0].vram_gib"), std::string::npos)
        << t.status();
  }
}

// tiny-v2 needs about 0.5 GiB per card (mostly the workspace's fixed
// cuBLAS + runtime reserve): 0.25 GiB cards must be refused, naming the
// first card (ordinal 3), its need and the capacity.
TEST(GpuVramCheckTest, StartRefusesCardsTooSmallForTheirShare) {
  auto t = ParseTopologyYaml(
      Yaml("{backend: cuda, device_ids: [3, 1], kv_cache_tokens: 512, vram_gib: 0.25}"), "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  auto c = StartWithoutWorkers(*t);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  const std::string m(c.status().message());
  std::printf("refusal: %s\n", m.c_str());
  EXPECT_NE(m.find("gpu_workers[0] device 3: needs "), std::string::npos) << m;
  EXPECT_NE(m.find("1/2 tensor-parallel share"), std::string::npos) << m;
  EXPECT_NE(m.find("for 512 tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("but has 256.0 MiB (vram_gib)"), std::string::npos) << m;
}

// An unreadable worker_token_file is refused before any process starts,
// naming the field and the path.
TEST(CoordinatorStartTest, UnreadableWorkerTokenFileIsRefused) {
  auto t = ParseTopologyYaml(std::string("model_path: ") + kModel +
                                 "\nworker_token_file: /nonexistent/worker.token\n"
                                 "gpu_workers:\n  - {backend: cpu}\nexpert_workers:\n"
                                 "  - {numa_node: 0}\n",
                             "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  auto c = StartWithoutWorkers(*t);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound) << c.status();
  EXPECT_NE(std::string(c.status().message())
                .find("worker_token_file: /nonexistent/worker.token: cannot read the token file"),
            std::string::npos)
      << c.status();
}

}  // namespace
}  // namespace moeflow
