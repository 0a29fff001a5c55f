// End to end across a network boundary: an expert worker in its own network
// namespace (`ip netns`, joined to this one by a veth pair), started by hand
// as on another host and reached by the coordinator over gRPC and UCX tcp on
// the veth link. Logits bit-identical to the single-process engine's.
// Needs root (CAP_NET_ADMIN) and iproute2: skips, saying why, without them.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "coordinator/local_logits.h"
#include "gtest/gtest.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf";

int Run(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()); }

// A namespace with one end of a veth pair (10.213.N.2) and this namespace's
// end (10.213.N.1); removed on destruction.
class VethNamespace {
 public:
  VethNamespace() {
    const int n = static_cast<int>(getpid() % 250) + 1;
    ns_ = absl::StrCat("mfns", getpid());
    host_dev_ = absl::StrCat("mfa", getpid());
    ns_dev_ = absl::StrCat("mfb", getpid());
    host_ip_ = absl::StrCat("10.213.", n, ".1");
    ns_ip_ = absl::StrCat("10.213.", n, ".2");
    const std::vector<std::string> steps = {
        absl::StrCat("ip netns add ", ns_),
        absl::StrCat("ip link add ", host_dev_, " type veth peer name ", ns_dev_),
        absl::StrCat("ip link set ", ns_dev_, " netns ", ns_),
        absl::StrCat("ip addr add ", host_ip_, "/24 dev ", host_dev_),
        absl::StrCat("ip link set ", host_dev_, " up"),
        absl::StrCat("ip netns exec ", ns_, " ip addr add ", ns_ip_, "/24 dev ", ns_dev_),
        absl::StrCat("ip netns exec ", ns_, " ip link set ", ns_dev_, " up"),
        absl::StrCat("ip netns exec ", ns_, " ip link set lo up"),
    };
    for (const std::string& step : steps) {
      if (Run(step) != 0) {
        error_ = absl::StrCat("'", step, "' failed (needs root and iproute2)");
        return;
      }
    }
  }
  ~VethNamespace() {
    // Deleting the namespace deletes its veth end, and with it the peer.
    Run(absl::StrCat("ip netns del ", ns_));
    Run(absl::StrCat("ip link del ", host_dev_));
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& ns() const { return ns_; }
  const std::string& ns_ip() const { return ns_ip_; }
  std::string devices() const { return absl::StrCat(host_dev_, ",", ns_dev_); }

 private:
  std::string ns_, host_dev_, ns_dev_, host_ip_, ns_ip_, error_;
};

TEST(NetnsRemoteWorkerTest, WorkerInAnotherNetworkNamespaceMatchesEngine) {
  VethNamespace net;
  if (!net.ok()) GTEST_SKIP() << "no network namespace: " << net.error();

  std::ifstream in("tests/data/llamacpp/tiny-v2/sequences.txt");
  std::string line;
  std::getline(in, line);
  std::getline(in, line);
  std::vector<int32_t> tokens;
  for (absl::string_view p : absl::StrSplit(line, ',', absl::SkipWhitespace())) {
    int32_t t = 0;
    if (absl::SimpleAtoi(p, &t)) tokens.push_back(t);
  }
  ASSERT_EQ(tokens.size(), 64u);
  auto expected = LocalLogits(kModel, tokens);
  ASSERT_TRUE(expected.ok()) << expected.status();

  // Not on loopback, so the worker needs a token (the same file on both
  // sides, as one would copy it to the other host).
  const std::string token_file =
      testing::WriteTempFile("worker_token", "netns-remote-worker-secret\n");
  testing::HandStartedWorker remote(absl::StrCat(net.ns_ip(), ":0"),
                                    {"ip", "netns", "exec", net.ns()},
                                    {"--token_file=" + token_file});
  ASSERT_TRUE(remote.ok()) << remote.error();
  testing::LaunchSpec spec;
  spec.worker_token_file = token_file;
  spec.model_path = kModel;
  spec.placement = "shard";
  spec.ucx_transports = "tcp";
  spec.ucx_net_devices = net.devices();
  spec.expert_addresses = {"", absl::StrCat(net.ns_ip(), ":", remote.port())};
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  proto::ComputeLogitsRequest request;
  for (int32_t t : tokens) request.add_tokens(t);
  proto::ComputeLogitsResponse response;
  grpc::Status s = launch.stub().ComputeLogits(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(response.logits().size(), expected->size() * sizeof(float));
  EXPECT_EQ(std::memcmp(response.logits().data(), expected->data(), response.logits().size()), 0)
      << "logits differ from the single-process engine's";
  EXPECT_EQ(launch.Stop(10000), 0);
}

}  // namespace
}  // namespace moeflow
