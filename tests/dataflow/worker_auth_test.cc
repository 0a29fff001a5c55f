// The workers' gRPC service authenticates its caller (coordinator/
// bearer_auth.h): a worker with a token answers calls without it, or with
// another one, UNAUTHENTICATED; it refuses to listen without a token on any
// address (loopback too), and refuses a malformed token file; the workers
// the launcher starts get a random token it keeps to itself, so a call to
// their port from outside is refused too.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proto/worker.grpc.pb.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

using testing::WorkerStub;
using testing::WriteTempFile;

// Runs the worker binary with `args` (after environment assignments `env`)
// to its exit, or 10 s.
testing::CommandExit RunWorker(const std::string& args, const std::string& env = "") {
  return testing::RunToExit(absl::StrCat(env, env.empty() ? "" : " ", "timeout 10 ",
                                         testing::Runfile("cpu_expert_worker/cpu_expert_worker"),
                                         " ", args));
}

grpc::StatusCode HealthCode(proto::WorkerService::Stub& stub, const std::string& authorization) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  proto::HealthResponse response;
  return stub.Health(&ctx, proto::HealthRequest(), &response).error_code();
}

TEST(WorkerAuthTest, NonLoopbackListenWithoutTokenIsRefused) {
  const testing::CommandExit e = RunWorker("--listen=0.0.0.0:0");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("refusing to listen on 0.0.0.0:0 without a token"),
            std::string::npos)
      << e.stderr_text;
}

// Loopback is no exception: another local user could Shutdown it.
TEST(WorkerAuthTest, LoopbackListenWithoutTokenIsRefused) {
  for (const char* listen : {"--listen=127.0.0.1:0", ""}) {
    const testing::CommandExit e = RunWorker(listen);
    EXPECT_EQ(e.code, 2) << listen;
    EXPECT_NE(e.stderr_text.find("refusing to listen on 127.0.0.1:0 without a token"),
              std::string::npos)
        << e.stderr_text;
    EXPECT_NE(e.stderr_text.find("--token_file=PATH"), std::string::npos) << e.stderr_text;
  }
  const testing::CommandExit gpu = testing::RunToExit(absl::StrCat(
      "timeout 10 ", testing::Runfile("gpu_worker/gpu_worker"), " --listen=127.0.0.1:0"));
  EXPECT_EQ(gpu.code, 2);
  EXPECT_NE(gpu.stderr_text.find("gpu_worker: refusing to listen on 127.0.0.1:0 without a token"),
            std::string::npos)
      << gpu.stderr_text;
}

TEST(WorkerAuthTest, MalformedOrMissingTokenFileIsRefused) {
  testing::CommandExit e =
      RunWorker(absl::StrCat("--token_file=", WriteTempFile("short_token", "abc\n")));
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("a token must have 8 to 4096 characters (has 3)"), std::string::npos)
      << e.stderr_text;
  e = RunWorker(absl::StrCat("--token_file=", WriteTempFile("empty_token", "  \n")));
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("the token file is empty"), std::string::npos) << e.stderr_text;
  e = RunWorker("--token_file=/nonexistent/moeflow-token");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("/nonexistent/moeflow-token: cannot read the token file"),
            std::string::npos)
      << e.stderr_text;
  // The launcher's environment variable is checked the same way.
  e = RunWorker("", "MOEFLOW_WORKER_TOKEN='two words'");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("MOEFLOW_WORKER_TOKEN: a token may hold printable ASCII"),
            std::string::npos)
      << e.stderr_text;
  e = RunWorker("--token_file=/nonexistent/moeflow-token");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("/nonexistent/moeflow-token: cannot read the token file"),
            std::string::npos)
      << e.stderr_text;
}

TEST(WorkerAuthTest, CallsWithoutTheTokenAreUnauthenticated) {
  const std::string token_file = WriteTempFile("token", "  correct-horse-battery\n");
  testing::HandStartedWorker worker("0.0.0.0:0", {}, {"--token_file=" + token_file});
  ASSERT_TRUE(worker.ok()) << worker.error();
  auto stub = WorkerStub(absl::StrCat("127.0.0.1:", worker.port()));
  EXPECT_EQ(HealthCode(*stub, ""), grpc::UNAUTHENTICATED);
  EXPECT_EQ(HealthCode(*stub, "Bearer correct-horse-batterx"), grpc::UNAUTHENTICATED);
  EXPECT_EQ(HealthCode(*stub, "Bearer correct-horse-battery "), grpc::UNAUTHENTICATED);
  EXPECT_EQ(HealthCode(*stub, "Bearer correct-horse-battery"), grpc::OK);
  // Every method checks, not only Health.
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  proto::WorkerShutdownResponse response;
  EXPECT_EQ(stub->Shutdown(&ctx, proto::WorkerShutdownRequest(), &response).error_code(),
            grpc::UNAUTHENTICATED);
  EXPECT_EQ(HealthCode(*stub, "Bearer correct-horse-battery"), grpc::OK);
}

// The launcher's own workers carry a random token: their ports (shown by
// Status) refuse a caller that is not the coordinator, while the launch
// itself serves.
TEST(WorkerAuthTest, LaunchedWorkersRefuseOtherCallers) {
  testing::LaunchSpec spec;
  spec.model_path = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";
  spec.gpu_separate_process = true;
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  proto::StatusResponse status;
  ASSERT_TRUE(launch.stub().Status(&ctx, {}, &status).ok());
  int checked = 0;
  for (const proto::WorkerStatus& w : status.workers()) {
    if (w.grpc_address().empty()) continue;  // in the coordinator's process
    auto stub = WorkerStub(w.grpc_address());
    EXPECT_EQ(HealthCode(*stub, ""), grpc::UNAUTHENTICATED) << w.worker_name();
    ++checked;
  }
  EXPECT_EQ(checked, 3) << "gpu worker and two expert workers";
  EXPECT_EQ(launch.Stop(10000), 0);
}

}  // namespace
}  // namespace moeflow
