// gpu_worker/backend_selector.h: Configure picks the backend by name and
// every later call reaches that one only — the data-plane hooks (Idle, Busy,
// PinCaller) included, which a CUDA build's CPU gpu worker needs to pin its
// caller and let its pool rest.
#include "gpu_worker/backend_selector.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

// Records the calls it gets.
class RecordingCompute final : public dataflow::WorkerCompute {
 public:
  explicit RecordingCompute(std::vector<std::string>* log, std::string name)
      : log_(log), name_(std::move(name)) {}
  absl::Status Configure(const proto::ConfigureRequest&) override { return Note("Configure"); }
  absl::Status Load(const std::function<void(const proto::LoadProgress&)>&) override {
    return Note("Load");
  }
  size_t MaxRequestBytes() const override {
    log_->push_back(name_ + ".MaxRequestBytes");
    return 1;
  }
  size_t MaxReplyBytes() const override {
    log_->push_back(name_ + ".MaxReplyBytes");
    return 2;
  }
  absl::Status Handle(const dataflow::RequestHeader&, absl::Span<const uint8_t>,
                      dataflow::ReplyWriter&, proto::LayerStats&) override {
    return Note("Handle");
  }
  int64_t ShardBytes() const override {
    log_->push_back(name_ + ".ShardBytes");
    return 3;
  }
  void Idle() override { (void)Note("Idle"); }
  void Busy() override { (void)Note("Busy"); }
  void PinCaller() override { (void)Note("PinCaller"); }

 private:
  absl::Status Note(const char* call) {
    log_->push_back(name_ + "." + call);
    return absl::OkStatus();
  }
  std::vector<std::string>* log_;
  std::string name_;
};

class NoReply final : public dataflow::ReplyWriter {
 public:
  uint8_t* Payload() override { return nullptr; }
  absl::Status Send(size_t) override { return absl::OkStatus(); }
};

std::vector<std::string> CallEverything(const std::string& backend) {
  std::vector<std::string> log;
  GpuWorkerBackendSelector selector(std::make_unique<RecordingCompute>(&log, "cpu"),
                                    std::make_unique<RecordingCompute>(&log, "cuda"));
  proto::ConfigureRequest request;
  request.set_backend(backend);
  EXPECT_TRUE(selector.Configure(request).ok());
  EXPECT_TRUE(selector.Load([](const proto::LoadProgress&) {}).ok());
  EXPECT_EQ(selector.MaxRequestBytes(), 1u);
  EXPECT_EQ(selector.MaxReplyBytes(), 2u);
  NoReply reply;
  proto::LayerStats stats;
  EXPECT_TRUE(selector.Handle(dataflow::RequestHeader(), {}, reply, stats).ok());
  EXPECT_EQ(selector.ShardBytes(), 3);
  selector.PinCaller();
  selector.Idle();
  selector.Busy();
  return log;
}

TEST(BackendSelectorTest, ForwardsEveryCallToTheBackendConfigurePicked) {
  for (const std::string backend : {"cpu", "cuda"}) {
    SCOPED_TRACE(backend);
    const std::string b = backend;
    EXPECT_EQ(CallEverything(backend),
              (std::vector<std::string>{b + ".Configure", b + ".Load", b + ".MaxRequestBytes",
                                        b + ".MaxReplyBytes", b + ".Handle", b + ".ShardBytes",
                                        b + ".PinCaller", b + ".Idle", b + ".Busy"}));
  }
  // No backend named: the CPU one.
  EXPECT_EQ(CallEverything("").front(), "cpu.Configure");
}

}  // namespace
}  // namespace moeflow
