// End to end with real processes: an expert worker killed mid-generation.
// The in-flight request fails UNAVAILABLE within 2 s, Status shows the
// worker down, `launch` restarts it (when allowed), Status then clears its
// error (keeping it as recovered_error, with its time and the restart count)
// and the next request succeeds; nothing is left in /dev/shm.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

using testing::LaunchProcess;
using testing::LaunchSpec;

constexpr char kModel[] = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";

std::set<std::string> ShmFiles() {
  std::set<std::string> names;
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d)) names.insert(e->d_name);
    closedir(d);
  }
  return names;
}

proto::GenerateRequest LongRequest() {
  proto::GenerateRequest request;
  request.set_prompt("The quick brown fox");
  request.set_max_tokens(3000);
  return request;
}

// Starts a long generation, kills expert worker 0 after the first piece, and
// returns the stream's final status and how long after the kill it ended.
grpc::Status KillDuringGeneration(LaunchProcess& launch, absl::Duration* after_kill) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto reader = launch.stub().Generate(&ctx, LongRequest());
  proto::GenerateResponse r;
  bool killed = false;
  absl::Time kill_time = absl::Now();
  while (reader->Read(&r)) {
    if (!killed) {
      std::vector<pid_t> experts = launch.Children("cpu_expert_worker");
      EXPECT_EQ(experts.size(), 2u);
      if (experts.empty()) break;
      kill(experts[0], SIGKILL);
      kill_time = absl::Now();
      killed = true;
    }
  }
  grpc::Status s = reader->Finish();
  *after_kill = absl::Now() - kill_time;
  EXPECT_TRUE(killed) << "the generation ended before a piece arrived";
  std::printf("request ended %.0f ms after the kill: %s\n", absl::ToDoubleMilliseconds(*after_kill),
              s.error_message().c_str());
  return s;
}

TEST(WorkerFailureTest, KilledExpertWorkerFailsRequestAndStaysDownWithoutRestart) {
  const std::set<std::string> shm_before = ShmFiles();
  {
    LaunchSpec spec;
    spec.model_path = kModel;
    spec.placement = "shard";
    spec.kv_cache_tokens = 4096;
    spec.extra_flags = {"--restart_workers=false"};
    LaunchProcess launch(spec);
    ASSERT_TRUE(launch.ok()) << launch.error();
    ASSERT_TRUE(launch.WaitServing(20000));

    absl::Duration after_kill;
    grpc::Status s = KillDuringGeneration(launch, &after_kill);
    EXPECT_EQ(s.error_code(), grpc::UNAVAILABLE) << s.error_message();
    EXPECT_LT(after_kill, absl::Seconds(2));

    absl::SleepFor(absl::Milliseconds(300));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    proto::StatusResponse status;
    ASSERT_TRUE(launch.stub().Status(&ctx, {}, &status).ok());
    EXPECT_EQ(status.state(), proto::COORDINATOR_STATE_DEGRADED);
    int down = 0;
    for (const proto::WorkerStatus& w : status.workers()) {
      if (w.state() != proto::WORKER_STATE_SERVING) {
        ++down;
        EXPECT_EQ(w.role(), proto::WORKER_ROLE_CPU_EXPERT);
        EXPECT_NE(w.last_error().find("signal 9"), std::string::npos) << w.last_error();
      }
    }
    EXPECT_EQ(down, 1);

    // New requests are refused while degraded, at once.
    grpc::ClientContext ctx2;
    ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    auto reader = launch.stub().Generate(&ctx2, LongRequest());
    proto::GenerateResponse r;
    while (reader->Read(&r)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::UNAVAILABLE);
  }
  EXPECT_EQ(ShmFiles(), shm_before) << "shared memory files leaked";
}

TEST(WorkerFailureTest, KilledExpertWorkerIsRestartedAndNextRequestSucceeds) {
  const std::set<std::string> shm_before = ShmFiles();
  {
    LaunchSpec spec;
    spec.model_path = kModel;
    spec.placement = "replicate";
    spec.kv_cache_tokens = 4096;
    LaunchProcess launch(spec);
    ASSERT_TRUE(launch.ok()) << launch.error();
    ASSERT_TRUE(launch.WaitServing(20000));

    absl::Duration after_kill;
    grpc::Status s = KillDuringGeneration(launch, &after_kill);
    EXPECT_EQ(s.error_code(), grpc::UNAVAILABLE) << s.error_message();
    EXPECT_LT(after_kill, absl::Seconds(2));
    EXPECT_NE(s.error_message().find("expert"), std::string::npos) << s.error_message();

    ASSERT_TRUE(launch.WaitServing(10000)) << "the killed worker was not restarted";
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    proto::StatusResponse status;
    ASSERT_TRUE(launch.stub().Status(&ctx, {}, &status).ok());
    int restarts = 0;
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    for (const proto::WorkerStatus& w : status.workers()) {
      restarts += w.restarts();
      if (w.restarts() > 0) {
        // Serving again: no current error; why it was restarted, and when.
        EXPECT_EQ(w.last_error(), "");
        EXPECT_NE(w.recovered_error().find("signal 9"), std::string::npos) << w.recovered_error();
        EXPECT_GT(w.last_error_unix_ms(), now_ms - 60000);
        EXPECT_LE(w.last_error_unix_ms(), now_ms);
      } else {
        EXPECT_EQ(w.last_error_unix_ms(), 0) << w.worker_name();
      }
    }
    EXPECT_EQ(restarts, 1);
    // moeflowctl status says the same, and exits 0 (every worker serves).
    std::string printed;
    const std::string command =
        absl::StrCat(testing::Runfile("cli/moeflowctl"), " --addr ", launch.address(), " status");
    FILE* out = popen(command.c_str(), "r");
    ASSERT_NE(out, nullptr);
    char line[1024];
    while (std::fgets(line, sizeof(line), out) != nullptr) printed += line;
    EXPECT_EQ(pclose(out), 0) << printed;
    EXPECT_NE(printed.find("restarts 1  last error 20"), std::string::npos) << printed;
    EXPECT_NE(printed.find("recovered from: process killed by signal 9"), std::string::npos)
        << printed;
    EXPECT_EQ(printed.find("error: "), std::string::npos) << printed;

    grpc::ClientContext ctx2;
    ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    proto::GenerateRequest request;
    request.set_prompt("Hello");
    request.set_max_tokens(8);
    auto reader = launch.stub().Generate(&ctx2, request);
    proto::GenerateResponse r;
    bool final_seen = false;
    while (reader->Read(&r)) final_seen |= r.has_final();
    grpc::Status s2 = reader->Finish();
    EXPECT_TRUE(s2.ok()) << s2.error_message();
    EXPECT_TRUE(final_seen);
    EXPECT_EQ(launch.Stop(10000), 0);
  }
  EXPECT_EQ(ShmFiles(), shm_before) << "shared memory files leaked";
}

// A hand-started ("remote") expert worker over UCX tcp: killing it fails the
// request in flight with UNAVAILABLE; once a new one listens at the same
// address, the coordinator attaches to it again and serves.
TEST(WorkerFailureTest, LostHandStartedWorkerIsAttachedAgainOnceBack) {
  auto remote = std::make_unique<testing::HandStartedWorker>();
  ASSERT_TRUE(remote->ok()) << remote->error();
  const int port = remote->port();
  LaunchSpec spec;
  spec.model_path = kModel;
  spec.placement = "shard";
  spec.kv_cache_tokens = 4096;
  spec.ucx_transports = "tcp";
  spec.expert_addresses = {"", absl::StrCat("127.0.0.1:", port)};
  spec.worker_token_file = remote->token_file();
  LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto reader = launch.stub().Generate(&ctx, LongRequest());
    proto::GenerateResponse r;
    absl::Time kill_time = absl::InfiniteFuture();
    while (reader->Read(&r)) {
      if (remote->pid() > 0) {
        remote->Kill();
        kill_time = absl::Now();
      }
    }
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::UNAVAILABLE) << s.error_message();
    EXPECT_LT(absl::Now() - kill_time, absl::Seconds(2));
  }
  remote = std::make_unique<testing::HandStartedWorker>(
      absl::StrCat("127.0.0.1:", port), std::vector<std::string>{},
      std::vector<std::string>{"--token_file=" + spec.worker_token_file});
  ASSERT_TRUE(remote->ok()) << remote->error();
  ASSERT_TRUE(launch.WaitServing(20000)) << "the coordinator did not attach to the new worker";
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::GenerateRequest request;
  request.set_prompt("Hello");
  request.set_max_tokens(8);
  auto reader = launch.stub().Generate(&ctx, request);
  proto::GenerateResponse r;
  bool final_seen = false;
  while (reader->Read(&r)) final_seen |= r.has_final();
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(final_seen);
  EXPECT_EQ(launch.Stop(10000), 0);
}

}  // namespace
}  // namespace moeflow
