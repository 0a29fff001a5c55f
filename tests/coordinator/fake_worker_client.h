// A WorkerClient for tests of the layer driver: it records every request
// (header and a copy of the payload) and answers with what `respond`
// returns for it (a reply payload, or an error as a worker would report
// it). `in_process` makes it call the reply hook inside Post, as an
// in-process client does.
#ifndef MOEFLOW_TESTS_COORDINATOR_FAKE_WORKER_CLIENT_H_
#define MOEFLOW_TESTS_COORDINATOR_FAKE_WORKER_CLIENT_H_

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataflow/worker_client.h"

namespace moeflow::testing {

class FakeWorkerClient final : public dataflow::WorkerClient {
 public:
  struct Request {
    dataflow::RequestHeader header;
    std::vector<uint8_t> payload;
  };
  using Respond = std::function<absl::StatusOr<std::vector<uint8_t>>(const Request&)>;

  FakeWorkerClient(std::string name, size_t capacity, Respond respond, bool in_process = false)
      : name_(std::move(name)),
        capacity_(capacity),
        request_(static_cast<uint8_t*>(std::aligned_alloc(64, (capacity + 63) / 64 * 64))),
        respond_(std::move(respond)),
        in_process_(in_process) {}
  ~FakeWorkerClient() override { std::free(request_); }

  const std::string& name() const override { return name_; }
  absl::Span<uint8_t> RequestPayload() override { return absl::MakeSpan(request_, capacity_); }
  absl::Status Post(const dataflow::RequestHeader& header, size_t payload_bytes,
                    dataflow::ReplyHook* hook) override {
    requests_.push_back({header, std::vector<uint8_t>(request_, request_ + payload_bytes)});
    absl::StatusOr<std::vector<uint8_t>> reply = respond_(requests_.back());
    posted_ = true;
    hook_ran_ = false;
    if (!reply.ok()) {
      reply_status_ =
          absl::Status(reply.status().code(), absl::StrCat(name_, ": ", reply.status().message()));
      return absl::OkStatus();  // as over UCX: the error comes with the reply
    }
    reply_status_ = absl::OkStatus();
    // 64-byte aligned, as a channel's buffers are.
    reply_.assign(reply->size() / sizeof(float) + 16, 0.f);
    std::memcpy(reply_.data(), reply->data(), reply->size());
    reply_bytes_ = reply->size();
    if (in_process_ && hook != nullptr) {
      hook_ran_ = true;
      return hook->OnReply(Reply());
    }
    return absl::OkStatus();
  }
  bool hook_ran() const override { return hook_ran_; }
  absl::StatusOr<absl::Span<const uint8_t>> AwaitReply(int64_t expected_bytes) override {
    if (!posted_) return absl::InternalError(absl::StrCat(name_, ": nothing posted"));
    posted_ = false;
    if (!reply_status_.ok()) return reply_status_;
    if (expected_bytes >= 0 && reply_bytes_ != static_cast<size_t>(expected_bytes)) {
      return absl::InternalError(
          absl::StrCat(name_, ": reply of ", reply_bytes_, " bytes, expected ", expected_bytes));
    }
    return Reply();
  }
  void Abandon() override {
    posted_ = false;
    ++abandoned_;
  }
  bool in_process() const override { return in_process_; }
  void Idle() override { ++idles_; }
  void Busy() override { ++busies_; }

  const std::vector<Request>& requests() const { return requests_; }
  int abandoned() const { return abandoned_; }
  int idles() const { return idles_; }

 private:
  absl::Span<const uint8_t> Reply() const {
    return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(reply_.data()), reply_bytes_);
  }

  const std::string name_;
  const size_t capacity_;
  uint8_t* const request_;
  Respond respond_;
  const bool in_process_;
  std::vector<Request> requests_;
  std::vector<float> reply_;
  size_t reply_bytes_ = 0;
  absl::Status reply_status_;
  bool posted_ = false, hook_ran_ = false;
  int abandoned_ = 0, idles_ = 0, busies_ = 0;
};

}  // namespace moeflow::testing

#endif  // MOEFLOW_TESTS_COORDINATOR_FAKE_WORKER_CLIENT_H_
