// The attention worker's view of one step (dataflow/wire.h): the segments
// of the batch with their page tables, the tokens, and which request may
// come next. Both backends (cpu_backend.h, cuda_backend.h) check every
// request against it before computing, so the rules — and their errors —
// are the same on the CPU and on a GPU, and are tested on the CPU
// (tests/gpu_worker/attention_step_test).
//
//   idle ─kLayer 0 + kStepStart─► layer 0 ─► layer 1 ─► ... ─► kOutput ─► idle
//   a MoE layer's successor (kLayer or kOutput) must carry kRoutedSums, a
//   dense layer's must not; any error (Abort) ends the step: the next
//   request must start one.
//
// Thread-safety: none (the worker's data-plane thread). Failure: Begin*
// return INVALID_ARGUMENT naming the field (a page outside the cache, pages
// that do not cover a segment's positions, a position past the context, too
// many tokens or segments, a token outside the vocabulary) or
// FAILED_PRECONDITION for a request out of order; nothing changes then.
#ifndef MOEFLOW_GPU_WORKER_ATTENTION_STEP_H_
#define MOEFLOW_GPU_WORKER_ATTENTION_STEP_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "dataflow/wire.h"
#include "model/deepseek2/config.h"
#include "proto/worker.pb.h"

namespace moeflow {

struct AttentionStepLimits {
  int64_t max_tokens = 0;     // rows of one step
  int64_t max_segments = 0;   // sequences of one step
  int64_t n_pages = 0;        // pages of the KV memory
  int64_t page_tokens = 16;   // positions per page
  int64_t max_positions = 0;  // positions one sequence may hold
};

// The limits a ConfigureRequest sets (its defaults for 0 fields, see
// proto/worker.proto), for `config`.
AttentionStepLimits LimitsFromConfigure(const proto::ConfigureRequest& request,
                                        const Deepseek2Config& config);
// Pages one step may name: every segment's whole table.
inline int64_t MaxStepPages(const AttentionStepLimits& l) {
  return l.max_segments * ((l.max_positions + l.page_tokens - 1) / l.page_tokens);
}

class AttentionStep {
 public:
  struct Segment {
    int64_t sequence = 0;
    int64_t first = 0;  // its first row in the step
    int64_t n = 0;
    int64_t start_pos = 0;
    int64_t page_offset = 0;  // its table in pages()
    int64_t n_pages = 0;
  };

  AttentionStep(const Deepseek2Config& config, const AttentionStepLimits& limits)
      : config_(config), limits_(limits) {}

  // A kLayer request (parsed): starts the step at layer 0, or continues it.
  absl::Status BeginLayer(const dataflow::RequestHeader& header,
                          const dataflow::LayerRequest& request);
  // A kOutput request; `routed_sums` as parsed.
  absl::Status BeginOutput(const dataflow::RequestHeader& header,
                           absl::Span<const float> routed_sums);
  // The layer BeginLayer admitted was computed; a MoE layer leaves its
  // routed sums pending for the next request.
  void FinishLayer();
  // The step ends (kOutput computed, or an error).
  void End() { active_ = false; }

  bool active() const { return active_; }
  int64_t layer() const { return layer_; }
  // The layer whose routed sums the current request brings (-1: none).
  int64_t pending_moe_layer() const { return pending_; }
  int64_t n_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  absl::Span<const Segment> segments() const { return segments_; }
  absl::Span<const int32_t> tokens() const { return tokens_; }
  absl::Span<const int32_t> pages() const { return pages_; }
  absl::Span<const int32_t> pages(const Segment& s) const {
    return absl::MakeConstSpan(pages_).subspan(static_cast<size_t>(s.page_offset),
                                               static_cast<size_t>(s.n_pages));
  }
  // The rows whose logits kOutput returns: every row, or each segment's last.
  std::vector<int64_t> OutputRows(bool all_rows) const;
  // For each row: its position, and its slot in the KV memory
  // (page · page_tokens + position % page_tokens).
  void PositionsAndSlots(std::vector<int32_t>* positions, std::vector<int32_t>* slots) const;

 private:
  absl::Status CheckRoutedSums(uint32_t flags, absl::Span<const float> sums, const char* what,
                               int64_t n_tokens) const;
  absl::Status StartStep(const dataflow::RequestHeader& header,
                         const dataflow::LayerRequest& request);

  const Deepseek2Config config_;
  const AttentionStepLimits limits_;
  bool active_ = false;
  int64_t layer_ = -1;     // admitted by BeginLayer (n_layers: output)
  int64_t pending_ = -1;   // MoE layer awaiting its routed sums
  bool finished_ = false;  // the admitted layer was computed
  std::vector<Segment> segments_;
  std::vector<int32_t> pages_, tokens_;
};

// The request dispatch both backends share: a kLayer request to `layer`, a
// kOutput request to `output`, any other op INVALID_ARGUMENT; on an error
// the step ends (the coordinator fails it; the next request starts over).
absl::Status HandleAttentionRequest(const dataflow::RequestHeader& header, AttentionStep& step,
                                    proto::LayerStats& stats,
                                    const std::function<absl::Status()>& layer,
                                    const std::function<absl::Status()>& output);

}  // namespace moeflow

#endif  // MOEFLOW_GPU_WORKER_ATTENTION_STEP_H_
