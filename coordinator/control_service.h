// ControlService (proto/control.proto) served by the coordinator process:
// status, text generation (tokenizer from the GGUF, sampling/sampler.h; chat
// input rendered with the file's chat template, chat/chat_template.h),
// drain, shutdown, metrics, expert policy, and ComputeLogits for checking the
// deployment against the single-process engine.
//
// Generate submits to the one scheduler (server/batching_scheduler.h) that
// the HTTP API of `moeflow launch` submits to, so gRPC and HTTP requests are
// batched together; ComputeLogits runs a sequence of its own through the
// batch model (coordinator/dataflow_batch_model.h). Drain stops new
// requests of both front ends at once, waits for the accepted ones, and
// after its timeout cancels those still running or queued (their streams
// end with FINISH_REASON_CANCELLED); Undrain accepts requests again.
//
// Thread-safety: gRPC calls it from many threads; state is behind mu_.
// Failure: as control.proto says; UNAUTHENTICATED when a token is required
// (control bound to a non-loopback address) and the call lacks
// "authorization: Bearer TOKEN".
#ifndef MOEFLOW_COORDINATOR_CONTROL_SERVICE_H_
#define MOEFLOW_COORDINATOR_CONTROL_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/coordinator.h"
#include "coordinator/dataflow_batch_model.h"
#include "proto/control.grpc.pb.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {

class ControlServiceImpl final : public proto::ControlService::Service {
 public:
  // `on_shutdown` is called (once) after a Shutdown RPC has been answered.
  // All pointers must outlive the service.
  ControlServiceImpl(Coordinator& coordinator, server::GenerationBackend* scheduler,
                     DataflowBatchModel* model, const BpeTokenizer* tokenizer, std::string token,
                     std::function<void()> on_shutdown);

  grpc::Status Status(grpc::ServerContext* context, const proto::StatusRequest* request,
                      proto::StatusResponse* response) override;
  grpc::Status Generate(grpc::ServerContext* context, const proto::GenerateRequest* request,
                        grpc::ServerWriter<proto::GenerateResponse>* writer) override;
  grpc::Status Drain(grpc::ServerContext* context, const proto::DrainRequest* request,
                     proto::DrainResponse* response) override;
  grpc::Status Undrain(grpc::ServerContext* context, const proto::UndrainRequest* request,
                       proto::UndrainResponse* response) override;
  grpc::Status Shutdown(grpc::ServerContext* context,
                        const proto::CoordinatorShutdownRequest* request,
                        proto::CoordinatorShutdownResponse* response) override;
  grpc::Status Metrics(grpc::ServerContext* context, const proto::MetricsRequest* request,
                       proto::MetricsResponse* response) override;
  grpc::Status SetExpertPolicy(grpc::ServerContext* context,
                               const proto::SetExpertPolicyRequest* request,
                               proto::SetExpertPolicyResponse* response) override;
  grpc::Status ComputeLogits(grpc::ServerContext* context,
                             const proto::ComputeLogitsRequest* request,
                             proto::ComputeLogitsResponse* response) override;

  // SERVING, DEGRADED, DRAINING, ... as Status reports it (the HTTP API's
  // /health uses it). Thread-safe.
  proto::CoordinatorState State();

 private:
  grpc::Status Authorize(grpc::ServerContext* context) const;
  // Renders chat input with the model's chat template (DeepSeek V3's when the
  // file has none we recognize) and tokenizes it. INVALID_ARGUMENT naming the
  // message with a bad role; the renderer's errors otherwise.
  absl::StatusOr<std::vector<int32_t>> RenderChatPrompt(const proto::ChatConversation& chat) const;

  // The request to submit for `request` (prompt rendered, options checked).
  absl::StatusOr<std::shared_ptr<server::GenerationRequest>> MakeRequest(
      const proto::GenerateRequest& request);

  Coordinator& coordinator_;
  server::GenerationBackend* const scheduler_;
  DataflowBatchModel* const model_;
  const BpeTokenizer* const tokenizer_;
  const std::string token_;
  std::function<void()> on_shutdown_;
  std::string chat_template_;  // tokenizer.chat_template of the model file, or empty

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int active_ ABSL_GUARDED_BY(mu_) = 0;  // Generates in flight
  int64_t requests_total_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t requests_failed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t completion_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  double decode_tps_ ABSL_GUARDED_BY(mu_) = 0;
  double prefill_tps_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_COORDINATOR_CONTROL_SERVICE_H_
