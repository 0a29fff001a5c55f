// The run-time knobs (base/knobs.h) reach every worker in its Configure, so
// a worker started by hand on another host computes with the coordinator's
// values, not its own environment's: the Configure values win over the
// worker's environment, a bad or unknown one is refused naming it, and a
// launch attached to such a worker hands it the launcher's values.
#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proto/control.grpc.pb.h"
#include "proto/worker.grpc.pb.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

using testing::HandStartedWorker;
using testing::LaunchProcess;
using testing::LaunchSpec;
using testing::WorkerStub;

constexpr char kModel[] = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";

proto::ConfigureRequest ExpertConfigure() {
  proto::ConfigureRequest request;
  request.set_model_path(kModel);
  request.set_role(proto::WORKER_ROLE_CPU_EXPERT);
  request.set_numa_node(-1);
  request.set_max_batch_tokens(16);
  return request;
}

grpc::Status Configure(const HandStartedWorker& worker, proto::WorkerService::Stub& stub,
                       const proto::ConfigureRequest& request) {
  grpc::ClientContext ctx;
  worker.Authorize(ctx);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::ConfigureResponse response;
  return stub.Configure(&ctx, request, &response);
}

proto::HealthResponse Health(const HandStartedWorker& worker, proto::WorkerService::Stub& stub) {
  grpc::ClientContext ctx;
  worker.Authorize(ctx);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::HealthResponse response;
  EXPECT_TRUE(stub.Health(&ctx, proto::HealthRequest(), &response).ok());
  return response;
}

TEST(WorkerKnobsTest, ConfigureValuesWinOverTheWorkersEnvironmentAndBadOnesAreRefused) {
  HandStartedWorker worker("127.0.0.1:0", {"env", "MOEFLOW_REPACK=1", "MOEFLOW_YIELD_US=10"});
  ASSERT_TRUE(worker.ok()) << worker.error();
  auto stub = WorkerStub("127.0.0.1:" + std::to_string(worker.port()));
  EXPECT_EQ(Health(worker, *stub).knobs().at("repack"), "1");  // its environment's, for now

  proto::ConfigureRequest request = ExpertConfigure();
  (*request.mutable_knobs())["repack"] = "maybe";
  grpc::Status s = Configure(worker, *stub, request);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("knobs: knob repack: 'maybe' is neither 0 nor 1"),
            std::string::npos)
      << s.error_message();
  request.mutable_knobs()->clear();
  (*request.mutable_knobs())["no_such_knob"] = "1";
  s = Configure(worker, *stub, request);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("knob 'no_such_knob': unknown"), std::string::npos)
      << s.error_message();

  request.mutable_knobs()->clear();
  (*request.mutable_knobs())["repack"] = "0";
  (*request.mutable_knobs())["yield_us"] = "250";
  s = Configure(worker, *stub, request);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const proto::HealthResponse health = Health(worker, *stub);
  EXPECT_EQ(health.knobs().at("repack"), "0");
  EXPECT_EQ(health.knobs().at("yield_us"), "250");
}

TEST(WorkerKnobsTest, LaunchHandsItsKnobsToAnAttachedWorker) {
  // The worker's own environment says repack on; the launcher says off.
  HandStartedWorker worker("127.0.0.1:0", {"env", "MOEFLOW_REPACK=1"});
  ASSERT_TRUE(worker.ok()) << worker.error();
  LaunchSpec spec;
  spec.model_path = kModel;
  spec.expert_workers = 1;
  spec.ucx_transports = "tcp";
  spec.expert_addresses = {"127.0.0.1:" + std::to_string(worker.port())};
  spec.extra_flags = {"--knob", "repack=0"};
  spec.worker_token_file = worker.token_file();
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  auto stub = WorkerStub("127.0.0.1:" + std::to_string(worker.port()));
  EXPECT_EQ(Health(worker, *stub).knobs().at("repack"), "0");
}

}  // namespace
}  // namespace moeflow
