#include "coordinator/layer_driver.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/check.h"
#include "engine/engine_profile.h"

namespace moeflow {

using dataflow::RequestHeader;
using dataflow::WireWriter;
using dataflow::WorkerClient;

// Runs when a MoE layer's router reply is in: inside the in-process
// attention worker's Handle (before its shared experts), or after the
// driver awaited the reply of a remote one.
class LayerDriver::RouterHook final : public dataflow::ReplyHook {
 public:
  RouterHook(LayerDriver& driver, const StepClients& clients, int64_t layer,
             proto::LayerStats& stats)
      : driver_(driver), clients_(clients), layer_(layer), stats_(stats) {}
  absl::Status OnReply(absl::Span<const uint8_t> payload) override {
    LayerDriver& d = driver_;
    MOEFLOW_ASSIGN_OR_RETURN(d.router_,
                             dataflow::ParseRouterReply(payload, d.n_, d.config_.hidden, d.k_));
    MOEFLOW_RETURN_IF_ERROR(d.PostExperts(clients_, layer_, d.router_, stats_));
    WorkerClient& attention = *clients_.attention;
    if (d.options_.overlap_shared_experts || !attention.in_process() ||
        d.config_.n_shared_experts == 0) {
      return absl::OkStatus();
    }
    // Not overlapped: the expert workers compute while the attention
    // worker's pool sleeps, and its shared experts follow their replies.
    attention.Idle();
    absl::Status s = d.AwaitExperts(clients_, stats_);
    attention.Busy();
    return s;
  }

 private:
  LayerDriver& driver_;
  const StepClients& clients_;
  const int64_t layer_;
  proto::LayerStats& stats_;
};

LayerDriver::LayerDriver(const Deepseek2Config& config, const ExpertPlan* plan,
                         LayerDriverOptions options)
    : config_(config), options_(options), dispatch_(config, plan, options.max_tokens) {}

absl::Status LayerDriver::PostExperts(const StepClients& clients, int64_t layer,
                                      const dataflow::RouterReply& router, proto::LayerStats& ls) {
  const absl::Time t0 = absl::Now();
  const size_t n_workers = clients.experts.size();
  payloads_.resize(n_workers);
  for (size_t w = 0; w < n_workers; ++w) payloads_[w] = clients.experts[w]->RequestPayload();
  MOEFLOW_RETURN_IF_ERROR(dispatch_.Build(layer, router, n_, k_, payloads_, &requests_));
  experts_posted_ = true;
  experts_done_ = false;
  for (size_t w = 0; w < n_workers; ++w) {
    const ExpertDispatch::Request& r = requests_[w];
    if (!r.send) continue;
    MOEFLOW_RETURN_IF_ERROR(clients.experts[w]->Post(r.header, r.payload_bytes, nullptr));
    ls.set_bytes_sent(ls.bytes_sent() +
                      static_cast<int64_t>(sizeof(RequestHeader) + r.payload_bytes));
    ls.set_rows_computed(ls.rows_computed() + r.header.n_pairs);
  }
  dispatch_start_ = t0;
  return absl::OkStatus();
}

absl::Status LayerDriver::AwaitExperts(const StepClients& clients, proto::LayerStats& ls) {
  const size_t n_workers = clients.experts.size();
  replies_.assign(n_workers, absl::Span<const uint8_t>());
  for (size_t w = 0; w < n_workers; ++w) {
    const ExpertDispatch::Request& r = requests_[w];
    if (!r.send) continue;
    MOEFLOW_ASSIGN_OR_RETURN(replies_[w], clients.experts[w]->AwaitReply(r.reply_bytes));
    ls.set_bytes_received(ls.bytes_received() +
                          static_cast<int64_t>(sizeof(dataflow::ReplyHeader) + r.reply_bytes));
  }
  experts_done_ = true;
  // The round trip: staging, sends, the workers' compute, replies.
  ls.set_transport_time_us(absl::ToInt64Microseconds(absl::Now() - dispatch_start_));
  return absl::OkStatus();
}

void LayerDriver::AbandonAll(const StepClients& clients) {
  clients.attention->Abandon();
  for (WorkerClient* e : clients.experts) e->Abandon();
  experts_posted_ = false;
}

absl::Status LayerDriver::Step(const StepClients& clients, absl::Span<const StepSegment> segments,
                               int64_t k, bool all_logits, absl::Span<float> logits,
                               std::vector<proto::LayerStats>* stats) {
  const int64_t h = config_.hidden, vocab = config_.vocab_size;
  int64_t n = 0, n_pages = 0;
  for (const StepSegment& s : segments) {
    n += static_cast<int64_t>(s.tokens.size());
    n_pages += static_cast<int64_t>(s.pages.size());
  }
  if (segments.empty() || n < 1 || n > options_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step: ", n, " tokens in ", segments.size(),
                                                   " segments; 1..", options_.max_tokens,
                                                   " tokens per step"));
  }
  const int64_t rows = all_logits ? n : static_cast<int64_t>(segments.size());
  if (static_cast<int64_t>(logits.size()) != rows * vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("step: logits buffer of ", logits.size(), " floats, expected ", rows * vocab));
  }
  const EnginePhaseTimer forward_timer(EnginePhase::kForward, n);
  n_ = n;
  k_ = k;
  WorkerClient& attention = *clients.attention;
  if (stats != nullptr) {
    stats->assign(static_cast<size_t>(config_.n_layers), proto::LayerStats());
  }
  proto::LayerStats unused;

  // Layer 0 carries the step.
  RequestHeader header;
  header.op = static_cast<uint32_t>(dataflow::DataflowOp::kLayer);
  header.n_tokens = static_cast<int32_t>(n);
  header.n_segments = static_cast<int32_t>(segments.size());
  header.k = static_cast<int32_t>(k);
  header.flags = dataflow::kStepStart;
  size_t payload_bytes;
  {
    WireWriter out(attention.RequestPayload());
    dataflow::SegmentWire* wire = out.Add<dataflow::SegmentWire>(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      wire[i] = dataflow::SegmentWire{segments[i].sequence,
                                      static_cast<int32_t>(segments[i].tokens.size()),
                                      static_cast<int32_t>(segments[i].start_pos),
                                      static_cast<int32_t>(segments[i].pages.size()), 0};
    }
    int32_t* pages = out.Add<int32_t>(static_cast<size_t>(n_pages));
    int32_t* tokens = out.Add<int32_t>(static_cast<size_t>(n));
    for (const StepSegment& s : segments) {
      pages = std::copy(s.pages.begin(), s.pages.end(), pages);
      tokens = std::copy(s.tokens.begin(), s.tokens.end(), tokens);
    }
    payload_bytes = out.size();
  }
  for (int64_t il = 0; il < config_.n_layers; ++il) {
    header.layer = static_cast<int32_t>(il);
    proto::LayerStats& ls = stats != nullptr ? (*stats)[static_cast<size_t>(il)] : unused;
    ls.set_layer(static_cast<int32_t>(il));
    ls.set_steps(1);
    absl::Status s;
    if (!config_.is_moe_layer(il)) {
      s = attention.Post(header, payload_bytes, nullptr);
      if (s.ok()) s = attention.AwaitReply(0).status();
      if (!s.ok()) {
        AbandonAll(clients);
        return s;
      }
      header.flags = 0;
      payload_bytes = 0;
      continue;
    }
    experts_posted_ = experts_done_ = false;
    RouterHook hook(*this, clients, il, ls);
    s = attention.Post(header, payload_bytes, &hook);
    if (s.ok() && !attention.hook_ran()) {
      absl::StatusOr<absl::Span<const uint8_t>> reply =
          attention.AwaitReply(static_cast<int64_t>(dataflow::RouterReplyBytes(n, h, k)));
      s = reply.ok() ? hook.OnReply(*reply) : reply.status();
    }
    if (s.ok() && !experts_done_) {
      attention.Idle();  // nothing for its pool until the replies
      s = AwaitExperts(clients, ls);
      attention.Busy();
    }
    if (!s.ok()) {
      AbandonAll(clients);
      return s;
    }
    // The routed sums travel with the next request.
    const absl::Time combine_start = absl::Now();
    WireWriter out(attention.RequestPayload());
    dispatch_.Sum(router_, n, k, replies_, out.Add<float>(static_cast<size_t>(n * h)));
    ls.set_compute_time_us(absl::ToInt64Microseconds(absl::Now() - combine_start));
    payload_bytes = out.size();
    header.flags = dataflow::kRoutedSums;
  }
  header.op = static_cast<uint32_t>(dataflow::DataflowOp::kOutput);
  header.layer = static_cast<int32_t>(config_.n_layers);
  header.n_rows = static_cast<int32_t>(rows);
  if (all_logits) header.flags |= dataflow::kAllLogits;
  absl::Status s = attention.Post(header, payload_bytes, nullptr);
  absl::StatusOr<absl::Span<const uint8_t>> reply =
      s.ok() ? attention.AwaitReply(static_cast<int64_t>(
                   dataflow::SectionBytes<float>(static_cast<size_t>(rows * vocab))))
             : absl::StatusOr<absl::Span<const uint8_t>>(s);
  if (!reply.ok()) {
    AbandonAll(clients);
    return reply.status();
  }
  std::memcpy(logits.data(), reply->data(), logits.size() * sizeof(float));
  return absl::OkStatus();
}

}  // namespace moeflow
