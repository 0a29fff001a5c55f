#include "tests/dataflow/launch_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/read_line.h"

namespace moeflow::testing {

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return srcdir != nullptr ? absl::StrCat(srcdir, "/moeflow/", path) : path;
}

CommandExit RunToExit(const std::string& command) {
  const std::string err = WriteTempFile("command_stderr.txt", "");
  const int status = std::system(absl::StrCat(command, " > /dev/null 2> ", err).c_str());
  CommandExit e;
  e.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err);
  e.stderr_text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return e;
}

std::unique_ptr<proto::WorkerService::Stub> WorkerStub(const std::string& address) {
  return proto::WorkerService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

std::string WriteTempFile(const std::string& name, const std::string& text) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", getpid(), "_", name);
  std::ofstream(path) << text;
  return path;
}

LaunchProcess::LaunchProcess(const LaunchSpec& spec) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  static int counter = 0;
  const std::string topo =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/topology_", getpid(), "_", counter++, ".yaml");
  {
    std::ofstream out(topo);
    out << "model_path: " << spec.model_path << "\n"
        << "control_address: " << spec.control_address << "\n"
        << "placement: " << spec.placement << "\n"
        << "ucx_transports: " << spec.ucx_transports << "\n"
        << (spec.ucx_net_devices.empty() ? "" : "ucx_net_devices: " + spec.ucx_net_devices + "\n")
        << (spec.worker_token_file.empty() ? ""
                                           : "worker_token_file: " + spec.worker_token_file + "\n")
        << (spec.http_address.empty() ? "" : "http_address: " + spec.http_address + "\n")
        << "max_batch_tokens: " << spec.max_batch_tokens << "\n"
        << "gpu_workers:\n  - {backend: cpu, kv_cache_tokens: " << spec.kv_cache_tokens
        << ", threads: 1, separate_process: " << (spec.gpu_separate_process ? "true" : "false")
        << "}\nexpert_workers:\n";
    for (int i = 0; i < spec.expert_workers; ++i) {
      out << "  - {numa_node: " << i << ", threads: 1";
      if (!spec.expert_memory.empty()) out << ", memory: " << spec.expert_memory;
      if (static_cast<size_t>(i) < spec.expert_addresses.size() &&
          !spec.expert_addresses[static_cast<size_t>(i)].empty()) {
        out << ", address: \"" << spec.expert_addresses[static_cast<size_t>(i)] << "\"";
      }
      out << "}\n";
    }
  }
  std::vector<std::string> args = {
      Runfile("cli/moeflow"), "launch", topo,
      "--gpu_worker_binary=" + Runfile("gpu_worker/gpu_worker"),
      "--expert_worker_binary=" + Runfile("cpu_expert_worker/cpu_expert_worker")};
  for (const std::string& f : spec.extra_flags) args.push_back(f);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    error_ = "pipe2";
    return;
  }
  pid_ = fork();
  if (pid_ == 0) {
    setenv("HWLOC_SYNTHETIC", "package:2 numa:1 core:32 pu:1", 1);
    dup2(fds[1], STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  const std::string line = ReadLineWithDeadline(fds[0], 30000, "CONTROL ");
  close(fds[0]);
  char address[128] = {};
  if (std::sscanf(line.c_str(), "CONTROL %127s", address) != 1) {
    error_ = absl::StrCat("launch did not print its control address (got '", line, "')");
    return;
  }
  address_ = address;
  // "CONTROL host:port HTTP host:port" when the launch serves HTTP too.
  if (const size_t http = line.find(" HTTP "); http != std::string::npos) {
    const size_t colon = line.rfind(':');
    if (colon != std::string::npos && colon > http)
      http_port_ = std::atoi(line.c_str() + colon + 1);
  }
  // A wildcard bind is reached through loopback.
  if (address_.rfind("0.0.0.0:", 0) == 0) address_ = "127.0.0.1:" + address_.substr(8);
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(256 << 20);
  stub_ = proto::ControlService::NewStub(
      grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), channel_args));
}

LaunchProcess::~LaunchProcess() { Stop(5000); }

int LaunchProcess::Stop(int timeout_ms) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

std::vector<pid_t> LaunchProcess::Children(const std::string& name) const {
  std::vector<pid_t> result;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return result;
  while (dirent* e = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const size_t close_paren = text.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(text.substr(close_paren + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != pid_ || state == 'Z') continue;
    std::ifstream cmd(absl::StrCat("/proc/", pid, "/cmdline"));
    std::string cmdline((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (cmdline.find(name) != std::string::npos) result.push_back(pid);
  }
  closedir(proc);
  return result;
}

bool LaunchProcess::WaitServing(int timeout_ms) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    proto::StatusResponse status;
    if (stub_->Status(&ctx, {}, &status).ok() &&
        status.state() == proto::COORDINATOR_STATE_SERVING) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

}  // namespace moeflow::testing

namespace moeflow::testing {

HandStartedWorker::HandStartedWorker(const std::string& listen,
                                     const std::vector<std::string>& wrapper,
                                     const std::vector<std::string>& extra_args) {
  std::vector<std::string> args = wrapper;
  args.push_back(Runfile("cpu_expert_worker/cpu_expert_worker"));
  args.push_back("--listen=" + listen);
  for (const std::string& a : extra_args) {
    args.push_back(a);
    if (absl::StartsWith(a, "--token_file=")) token_file_ = a.substr(13);
  }
  if (token_file_.empty()) {
    token_file_ = WriteTempFile("hand_started_worker_token", "hand-started-worker-test-token\n");
    args.push_back("--token_file=" + token_file_);
  }
  {
    std::ifstream in(token_file_);
    std::getline(in, token_);
    token_ = std::string(absl::StripAsciiWhitespace(token_));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    error_ = "pipe2";
    return;
  }
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fds[1], STDOUT_FILENO);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  const std::string line = ReadLineWithDeadline(fds[0], 30000, "PORT ");
  close(fds[0]);
  if (std::sscanf(line.c_str(), "PORT %d", &port_) != 1) {
    error_ = absl::StrCat(absl::StrJoin(args, " "), " did not print its port (got '", line, "')");
    port_ = 0;
  }
}

HandStartedWorker::~HandStartedWorker() { Kill(); }

void HandStartedWorker::Authorize(grpc::ClientContext& context) const {
  context.AddMetadata("authorization", "Bearer " + token_);
}

void HandStartedWorker::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

}  // namespace moeflow::testing
