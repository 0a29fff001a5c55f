// `moeflow launch` with http_address: /health tells a load balancer why the
// server does not serve — 503 "degraded" while an expert worker is down,
// 503 "draining" after moeflowctl drain (new requests 503 with
// Retry-After), 200 again after moeflowctl undrain (and requests serve).
#include <signal.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/dataflow/launch_process.h"
#include "tests/server/http_test_client.h"

namespace moeflow {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";

std::string CompletionBody() {
  return nlohmann::json({{"model", "tiny-v3.q8_0"}, {"prompt", "Hello"}, {"max_tokens", 4}}).dump();
}

// Polls /health until its status is `want` (true) or 20 s pass.
bool WaitHealth(int port, int want, server::testing::ParsedResponse* last) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    *last = server::testing::Get(port, "/health");
    if (last->status == want) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

TEST(LaunchHealthTest, DegradedWhileAnExpertWorkerIsDown) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.http_address = "127.0.0.1:0";
  spec.extra_flags = {"--restart_workers=false"};
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  server::testing::ParsedResponse health;
  ASSERT_TRUE(WaitHealth(launch.http_port(), 200, &health)) << health.body;
  EXPECT_EQ(health.body, "{\"status\":\"ok\"}");
  const std::vector<pid_t> experts = launch.Children("cpu_expert_worker");
  ASSERT_EQ(experts.size(), 2u);
  kill(experts[0], SIGKILL);
  ASSERT_TRUE(WaitHealth(launch.http_port(), 503, &health)) << health.body;
  EXPECT_EQ(health.body, "{\"status\":\"degraded\"}");
  EXPECT_NE(health.Header("retry-after"), "");
  EXPECT_EQ(launch.Stop(10000), 0);
}

TEST(LaunchHealthTest, DrainingUntilUndrain) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.http_address = "127.0.0.1:0";
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  const int port = launch.http_port();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    proto::DrainResponse drained;
    ASSERT_TRUE(launch.stub().Drain(&ctx, proto::DrainRequest(), &drained).ok());
  }
  server::testing::ParsedResponse health = server::testing::Get(port, "/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(health.body, "{\"status\":\"draining\"}");
  server::testing::ParsedResponse refused =
      server::testing::Post(port, "/v1/completions", CompletionBody());
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_NE(refused.Header("retry-after"), "");
  // moeflowctl undrain: accepting again.
  const testing::CommandExit undrain = testing::RunToExit(
      absl::StrCat(testing::Runfile("cli/moeflowctl"), " --addr ", launch.address(), " undrain"));
  EXPECT_EQ(undrain.code, 0) << undrain.stderr_text;
  health = server::testing::Get(port, "/health");
  EXPECT_EQ(health.status, 200) << health.body;
  const server::testing::ParsedResponse served =
      server::testing::Post(port, "/v1/completions", CompletionBody());
  EXPECT_EQ(served.status, 200) << served.body;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::StatusResponse status;
  ASSERT_TRUE(launch.stub().Status(&ctx, {}, &status).ok());
  EXPECT_EQ(status.state(), proto::COORDINATOR_STATE_SERVING);
  EXPECT_EQ(launch.Stop(10000), 0);
}

}  // namespace
}  // namespace moeflow
