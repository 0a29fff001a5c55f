// End to end with real processes: `moeflow launch` (coordinator + CPU-backend
// gpu_worker + 2 cpu_expert_workers on a simulated 2-NUMA hwloc topology)
// must give the single-process topology's logits (coordinator/local_logits.h): bit-identical for
// placement replicate and shard, within 1e-4 (top-1 equal) for slice.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "coordinator/local_logits.h"
#include "gtest/gtest.h"
#include "model/deepseek2/config.h"
#include "model/gguf.h"
#include "model/model_generator.h"
#include "proto/worker.grpc.pb.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

using testing::LaunchProcess;
using testing::LaunchSpec;

std::vector<int32_t> Sequence64(const std::string& model_dir) {
  std::ifstream in("tests/data/llamacpp/" + model_dir + "/sequences.txt");
  std::string line;
  std::getline(in, line);
  std::getline(in, line);  // the 64-token sequence
  std::vector<int32_t> tokens;
  for (absl::string_view p : absl::StrSplit(line, ',', absl::SkipWhitespace())) {
    int32_t t = 0;
    if (absl::SimpleAtoi(p, &t)) tokens.push_back(t);
  }
  return tokens;
}

std::vector<float> EngineLogits(const std::string& model, const std::vector<int32_t>& tokens) {
  auto logits = LocalLogits(model, tokens);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

struct Case {
  const char* model_dir;
  const char* quant;
  const char* placement;
  bool exact;
};

class LaunchLogitsTest : public ::testing::TestWithParam<Case> {};

// `model` under launch with `placement` over `tls` gives the engine's logits
// on `tokens` (bit for bit when `exact`). `before_stop` (if set) runs on the
// still-serving launch after the check.
void ExpectLaunchMatchesEngineOn(const std::string& model, const std::vector<int32_t>& tokens,
                                 const Case& c, const std::string& tls, LaunchSpec spec,
                                 const std::function<void(LaunchProcess&)>& before_stop) {
  ASSERT_EQ(tokens.size(), 64u);
  const std::vector<float> expected = EngineLogits(model, tokens);
  ASSERT_FALSE(expected.empty());

  spec.model_path = model;
  spec.placement = c.placement;
  spec.ucx_transports = tls;
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));

  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  proto::ComputeLogitsRequest request;
  for (int32_t t : tokens) request.add_tokens(t);
  proto::ComputeLogitsResponse response;
  grpc::Status s = launch.stub().ComputeLogits(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(response.logits().size(), expected.size() * sizeof(float));
  std::vector<float> got(expected.size());
  std::memcpy(got.data(), response.logits().data(), response.logits().size());
  const int64_t vocab = response.n_vocab();
  if (c.exact) {
    EXPECT_EQ(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)), 0)
        << "logits differ from the single-process engine's";
  }
  float max_diff = 0.f;
  for (size_t i = 0; i < got.size(); ++i)
    max_diff = std::max(max_diff, std::fabs(got[i] - expected[i]));
  EXPECT_LT(max_diff, 1e-4f);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* g = got.data() + t * vocab;
    const float* e = expected.data() + t * vocab;
    EXPECT_EQ(std::max_element(g, g + vocab) - g, std::max_element(e, e + vocab) - e)
        << "top-1 differs at position " << t;
  }
  if (before_stop) before_stop(launch);
  // A clean stop: SIGTERM -> exit 0.
  const int status = launch.Stop(10000);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

void ExpectLaunchMatchesEngine(const Case& c, const std::string& tls,
                               LaunchSpec spec = LaunchSpec(),
                               const std::function<void(LaunchProcess&)>& before_stop = nullptr) {
  const std::string model = std::string("tests/data/llamacpp/") + c.model_dir + "/" + c.model_dir +
                            "." + c.quant + ".gguf";
  ExpectLaunchMatchesEngineOn(model, Sequence64(c.model_dir), c, tls, std::move(spec), before_stop);
}

TEST_P(LaunchLogitsTest, MatchesSingleProcessEngine) {
  ExpectLaunchMatchesEngine(GetParam(), "sm,self");
}

// The same data plane over UCX tcp (loopback; the test environment sets
// UCX_NET_DEVICES=lo), as expert workers on another host would use it.
// One expert worker holds every (token, expert) pair, so the coordinator
// asks it for kExpertsCombine replies (the weighted sum per token, computed
// on the worker): still bit-identical, and the replies are n rows, not n · k.
TEST(LaunchLogitsCombinedRepliesTest, OneExpertWorkerSumsItsPairsBitIdentically) {
  LaunchSpec spec;
  spec.expert_workers = 1;
  for (const char* quant : {"q4_k_m", "q8_0"}) {
    SCOPED_TRACE(quant);
    const std::string model = std::string("tests/data/llamacpp/tiny-v2/tiny-v2.") + quant + ".gguf";
    auto file = GgufFile::Open(model);
    ASSERT_TRUE(file.ok()) << file.status();
    auto parsed = Deepseek2Config::FromGguf(**file);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    const Deepseek2Config config = *parsed;
    ExpectLaunchMatchesEngine(
        Case{"tiny-v2", quant, "replicate", true}, "sm,self", spec, [&](LaunchProcess& launch) {
          grpc::ClientContext ctx;
          ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
          proto::MetricsResponse metrics;
          ASSERT_TRUE(launch.stub().Metrics(&ctx, proto::MetricsRequest(), &metrics).ok());
          int checked = 0;
          for (const proto::WorkerLayerMetrics& w : metrics.workers()) {
            if (w.worker_name() != "coordinator") continue;
            for (const proto::LayerStats& l : w.layers()) {
              if (!config.is_moe_layer(l.layer())) continue;
              // One 64-token step: 64 rows of hidden floats and the reply
              // header (per-pair replies would be k times as many rows).
              EXPECT_EQ(l.bytes_received(), 16 + 64 * config.hidden * 4) << "layer " << l.layer();
              ++checked;
            }
          }
          EXPECT_EQ(checked, config.n_layers - config.n_dense_layers);
        });
  }
}

// The files people have (issue 16): a split model given by a shard that is
// not the first (each expert worker maps only the shards with routed
// experts), and the older MLA layout (attn_kv_b; the gpu worker derives
// attn_k_b / attn_v_b at load): the single-process engine's logits, bit for
// bit, with the experts sharded over two workers.
TEST(LaunchLogitsFileLayoutsTest, SplitModelAndKvBFileMatchSingleProcessEngine) {
  const std::vector<int32_t> tokens = Sequence64("tiny-v3");
  ExpectLaunchMatchesEngineOn(
      "tests/data/llamacpp/tiny-v3-split/tiny-v3-split.q4_k_m-00002-of-00004.gguf", tokens,
      Case{"tiny-v3-split", "q4_k_m", "shard", true}, "sm,self", LaunchSpec(), nullptr);
  for (const char* quant : {"f32", "q8_0"}) {
    SCOPED_TRACE(quant);
    ExpectLaunchMatchesEngineOn(
        std::string("tests/data/llamacpp/tiny-v3-kvb/tiny-v3-kvb.") + quant + ".gguf", tokens,
        Case{"tiny-v3-kvb", quant, "shard", true}, "sm,self", LaunchSpec(), nullptr);
  }
}

// The real shapes' structure at tiny widths (model/model_presets.h): tiny-k2
// (Kimi-K2: 64 heads, 384 routed experts, top-8, one group) and tiny-v3.1
// (DeepSeek-V3.1: 128 heads, 256 experts in 8 groups, 4 used), each with its
// dense layers + 2 MoE layers, Q8_0, the experts sharded 192 / 192 and
// 128 / 128 over two workers: the single-process engine's logits, bit for bit.
TEST(LaunchLogitsShapesTest, KimiK2AndV31ShardedMatchSingleProcessEngine) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  for (const auto& [preset, n_experts] :
       std::vector<std::pair<std::string, int64_t>>{{"tiny-k2", 384}, {"tiny-v3.1", 256}}) {
    SCOPED_TRACE(preset);
    ModelGeneratorOptions options;
    options.preset = preset;
    options.type = "q8_0";
    options.seed = 5;
    options.force = true;
    options.out_path =
        absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/launch-", preset, ".q8_0.gguf");
    absl::StatusOr<GeneratedModel> model = GenerateModel(options);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_EQ(model->config.n_experts, n_experts);
    ExpectLaunchMatchesEngineOn(model->path, Sequence64("tiny-v3"),
                                Case{preset.c_str(), "q8_0", "shard", true}, "sm,self",
                                LaunchSpec(), nullptr);
  }
}

TEST(LaunchLogitsTcpTest, ShardOverTcpMatchesSingleProcessEngine) {
  ExpectLaunchMatchesEngine(Case{"tiny-v3", "q8_0", "shard", true}, "tcp");
}

// The CPU-backend gpu worker in a process of its own (the path a CUDA gpu
// worker takes: attention and router replies over UCX) gives the same logits
// as the default, where it runs inside the coordinator.
TEST(LaunchLogitsSeparateGpuProcessTest, MatchesSingleProcessEngine) {
  LaunchSpec spec;
  spec.gpu_separate_process = true;
  ExpectLaunchMatchesEngine(Case{"tiny-v3", "q8_0", "shard", true}, "sm,self", spec);
  ExpectLaunchMatchesEngine(Case{"tiny-v2", "q8_0", "slice", false}, "sm,self", spec);
}

// The shared experts computed while the expert workers compute the routed
// ones (on) or after their replies (off; what auto picks when the pools
// would share the cores): the same bit-identical logits either way.
TEST(LaunchLogitsOverlapTest, SharedExpertsOverlappedOrNotMatchSingleProcessEngine) {
  for (const char* mode : {"on", "off"}) {
    SCOPED_TRACE(mode);
    LaunchSpec spec;
    spec.extra_flags = {std::string("--overlap_shared_experts=") + mode};
    ExpectLaunchMatchesEngine(Case{"tiny-v2", "q8_0", "shard", true}, "sm,self", spec);
  }
}

// The held experts copied into (node-bound) memory of each worker instead of
// mapped from the file: the same bytes, so the same bit-identical logits.
TEST(LaunchLogitsNodeMemoryTest, ExpertsCopiedToNodeMemoryMatchSingleProcessEngine) {
  for (const char* placement : {"replicate", "shard"}) {
    SCOPED_TRACE(placement);
    LaunchSpec spec;
    spec.expert_memory = "node";
    ExpectLaunchMatchesEngine(Case{"tiny-v2", "q4_k_m", placement, true}, "sm,self", spec);
  }
}

// A worker configured by another client than the coordinator (whose
// topology parser already refuses bad values) answers a bad expert_memory
// with INVALID_ARGUMENT naming the field and the value.
proto::ConfigureRequest ExpertConfigure(int numa_node, const std::string& expert_memory) {
  proto::ConfigureRequest request;
  request.set_model_path("tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf");
  request.set_role(proto::WORKER_ROLE_CPU_EXPERT);
  request.set_numa_node(numa_node);
  request.set_max_batch_tokens(16);
  request.set_expert_memory(expert_memory);
  return request;
}

TEST(ExpertWorkerConfigureTest, UnknownExpertMemoryIsInvalidArgument) {
  testing::HandStartedWorker worker;
  ASSERT_TRUE(worker.ok()) << worker.error();
  auto stub = testing::WorkerStub(absl::StrCat("127.0.0.1:", worker.port()));
  const proto::ConfigureRequest request = ExpertConfigure(0, "huge");
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  worker.Authorize(ctx);
  proto::ConfigureResponse response;
  const grpc::Status s = stub->Configure(&ctx, request, &response);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("expert_memory: 'huge' is not one of auto, mapped, node"),
            std::string::npos)
      << s.error_message();
}

// memory "node" for a NUMA node hwloc does not see: Load fails with
// FAILED_PRECONDITION naming the node, instead of copying anywhere.
TEST(ExpertWorkerConfigureTest, NodeMemoryOnAMissingNodeFailsLoad) {
  testing::HandStartedWorker worker;
  ASSERT_TRUE(worker.ok()) << worker.error();
  auto stub = testing::WorkerStub(absl::StrCat("127.0.0.1:", worker.port()));
  const proto::ConfigureRequest request = ExpertConfigure(900, "node");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    worker.Authorize(ctx);
    proto::ConfigureResponse response;
    const grpc::Status s = stub->Configure(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  worker.Authorize(ctx);
  auto load = stub->Load(&ctx, proto::LoadRequest());
  proto::LoadProgress progress;
  while (load->Read(&progress)) {
  }
  const grpc::Status s = load->Finish();
  EXPECT_EQ(s.error_code(), grpc::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("expert_memory node: numa_node 900 is not one of the"),
            std::string::npos)
      << s.error_message();
}

// An expert worker "on another host": started by hand (as one would on the
// other box, listening on every address, so with a token file) and attached
// to by address (the topology names the same token file), over UCX tcp on
// loopback, beside a worker the launcher starts itself. Logits bit-identical
// to the engine's.
TEST(LaunchRemoteExpertWorkerTest, AttachedWorkerOverTcpMatchesSingleProcessEngine) {
  const std::string token_file =
      testing::WriteTempFile("worker_token", "tcp-remote-worker-secret\n");
  testing::HandStartedWorker remote("0.0.0.0:0", {}, {"--token_file=" + token_file});
  ASSERT_TRUE(remote.ok()) << remote.error();
  LaunchSpec spec;
  spec.worker_token_file = token_file;
  spec.expert_addresses = {absl::StrCat("127.0.0.1:", remote.port())};
  ExpectLaunchMatchesEngine(Case{"tiny-v2", "q8_0", "shard", true}, "tcp", spec);
}

// Bound to a non-loopback address, the control service wants the token.
TEST(LaunchControlTokenTest, NonLoopbackControlRequiresToken) {
  LaunchSpec spec;
  spec.model_path = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";
  spec.control_address = "0.0.0.0:0";
  spec.extra_flags = {"--control_token=s3cret"};
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    proto::StatusResponse status;
    EXPECT_EQ(launch.stub().Status(&ctx, {}, &status).error_code(), grpc::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    ctx.AddMetadata("authorization", "Bearer s3cret");
    proto::StatusResponse status;
    grpc::Status s = launch.stub().Status(&ctx, {}, &status);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
}

// With --control_tls_cert / --control_tls_key the control service speaks
// TLS only: a client trusting the certificate gets through (gRPC and
// moeflowctl --tls_ca), a plaintext one does not.
std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int RunCommand(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(LaunchControlTlsTest, TlsClientsGetThroughPlaintextOnesDoNot) {
  const std::string cert = "tests/data/tls/control.crt";
  const std::string key = "tests/data/tls/control.key";
  LaunchSpec spec;
  spec.model_path = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";
  spec.extra_flags = {"--control_tls_cert=" + cert, "--control_tls_key=" + key};
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();

  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(cert);
  ASSERT_NE(tls.pem_root_certs.find("BEGIN CERTIFICATE"), std::string::npos);
  auto stub = proto::ControlService::NewStub(
      grpc::CreateChannel(launch.address(), grpc::SslCredentials(tls)));
  grpc::Status s;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  proto::StatusResponse status;
  do {  // until the workers are up, so the status says what it knows
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    s = stub->Status(&ctx, {}, &status);
    ASSERT_TRUE(s.ok()) << s.error_message();
    if (status.state() == proto::COORDINATOR_STATE_SERVING) break;
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < deadline);
  EXPECT_EQ(status.state(), proto::COORDINATOR_STATE_SERVING);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    proto::StatusResponse plain;
    EXPECT_FALSE(launch.stub().Status(&ctx, {}, &plain).ok());
  }
  const std::string ctl = "cli/moeflowctl --addr " + launch.address() + " --timeout_ms 10000";
  EXPECT_EQ(RunCommand(ctl + " --tls_ca " + cert + " status"), 0);
  EXPECT_EQ(RunCommand(ctl + " status"), 1);                            // plaintext: the call fails
  EXPECT_EQ(RunCommand(ctl + " --tls_ca /nonexistent.pem status"), 2);  // unreadable: usage
}

TEST(LaunchControlTlsTest, CertificateWithoutKeyIsAUsageError) {
  const std::string topology = std::string(std::getenv("TEST_TMPDIR")) + "/tls_topology.yaml";
  std::ofstream(topology) << "model_path: tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf\n"
                             "control_address: 127.0.0.1:0\n"
                             "gpu_workers:\n  - backend: cpu\n    kv_cache_tokens: 512\n"
                             "expert_workers:\n  - numa_node: 0\n";
  EXPECT_EQ(RunCommand("cli/moeflow launch --validate_only "
                       "--control_tls_cert=tests/data/tls/control.crt " +
                       topology),
            2);
  EXPECT_EQ(RunCommand("cli/moeflow launch --validate_only --control_tls_cert=/nonexistent.crt "
                       "--control_tls_key=tests/data/tls/control.key " +
                       topology),
            2);
  EXPECT_EQ(
      RunCommand("cli/moeflow launch --validate_only --control_tls_cert=tests/data/tls/control.crt "
                 "--control_tls_key=tests/data/tls/control.key " +
                 topology),
      0);
}

INSTANTIATE_TEST_SUITE_P(Placements, LaunchLogitsTest,
                         ::testing::Values(Case{"tiny-v2", "q8_0", "replicate", true},
                                           Case{"tiny-v2", "q8_0", "shard", true},
                                           Case{"tiny-v2", "q4_k_m", "shard", true},
                                           Case{"tiny-v2", "f32", "slice", false},
                                           Case{"tiny-v2", "q8_0", "slice", false},
                                           Case{"tiny-v3", "q8_0", "replicate", true},
                                           Case{"tiny-v3", "q4_k_m", "replicate", true},
                                           Case{"tiny-v3", "q8_0", "shard", true},
                                           Case{"tiny-v3", "f32", "slice", false},
                                           Case{"tiny-v3", "q8_0", "slice", false}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string name = std::string(info.param.model_dir) + "_" +
                                              info.param.quant + "_" + info.param.placement;
                           for (char& ch : name) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

// Prefill longer than max_batch_tokens runs in chunks; the KV cache carries
// across them.
TEST(LaunchLogitsChunkedTest, ChunkedPrefillMatchesEngineChunkByChunk) {
  const std::string model = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";
  const std::vector<int32_t> tokens = Sequence64("tiny-v2");
  LocalLogitsOptions options;
  options.max_batch_tokens = 16;
  auto chunked = LocalLogits(model, tokens, options);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  const std::vector<float> expected = *chunked;
  LaunchSpec spec;
  spec.model_path = model;
  spec.placement = "shard";
  spec.max_batch_tokens = 16;
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  proto::ComputeLogitsRequest request;
  for (int32_t t : tokens) request.add_tokens(t);
  proto::ComputeLogitsResponse response;
  grpc::Status s = launch.stub().ComputeLogits(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(response.logits().size(), expected.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(response.logits().data(), expected.data(), response.logits().size()), 0);
}

}  // namespace
}  // namespace moeflow
