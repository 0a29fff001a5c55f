#include "gpu_worker/attention_step.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {

using dataflow::kRoutedSums;
using dataflow::kStepStart;
using dataflow::LayerRequest;
using dataflow::RequestHeader;

AttentionStepLimits LimitsFromConfigure(const proto::ConfigureRequest& request,
                                        const Deepseek2Config& config) {
  AttentionStepLimits l;
  const int64_t kv =
      request.kv_cache_tokens() > 0 ? request.kv_cache_tokens() : config.context_length;
  l.page_tokens = request.kv_page_tokens() > 0 ? request.kv_page_tokens() : 16;
  l.n_pages = (kv + l.page_tokens - 1) / l.page_tokens;
  l.max_positions = std::min<int64_t>(request.context_tokens() > 0 ? request.context_tokens() : kv,
                                      config.context_length);
  l.max_tokens = std::max<int64_t>(1, request.max_batch_tokens());
  l.max_segments =
      request.max_sequences() > 0 ? request.max_sequences() : std::min<int64_t>(l.max_tokens, 64);
  return l;
}

absl::Status AttentionStep::CheckRoutedSums(uint32_t flags, absl::Span<const float> sums,
                                            const char* what, int64_t n_tokens) const {
  const bool has = (flags & kRoutedSums) != 0;
  if (pending_ >= 0 && !has) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": layer ", pending_, " is a MoE layer whose routed sums this request lacks"));
  }
  if (pending_ < 0 && has) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": routed sums, but no MoE layer awaits them"));
  }
  if (has && static_cast<int64_t>(sums.size()) != n_tokens * config_.hidden) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", sums.size(), " routed-sum floats for ", n_tokens, " rows of ", config_.hidden));
  }
  return absl::OkStatus();
}

absl::Status AttentionStep::StartStep(const RequestHeader& header, const LayerRequest& r) {
  if (header.layer != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kLayer: a step starts at layer 0, not ", header.layer));
  }
  const int64_t n = header.n_tokens;
  if (n < 1 || n > limits_.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("kLayer: n_tokens ", n, " is outside [1, ", limits_.max_tokens, "]"));
  }
  if (static_cast<int64_t>(r.segments.size()) > limits_.max_segments) {
    return absl::InvalidArgumentError(absl::StrCat("kLayer: ", r.segments.size(),
                                                   " segments, more than the ",
                                                   limits_.max_segments, " configured"));
  }
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    if (r.tokens[i] < 0 || r.tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", r.tokens[i], " at index ", i,
                                                     " is out of range [0, ", config_.vocab_size,
                                                     ")"));
    }
  }
  for (int32_t p : r.pages) {
    if (p < 0 || p >= limits_.n_pages) {
      return absl::InvalidArgumentError(absl::StrCat("kLayer: page ", p, " is outside the ",
                                                     limits_.n_pages, " pages of the KV cache"));
    }
  }
  std::vector<Segment> segments;
  int64_t first = 0, page_offset = 0;
  for (const dataflow::SegmentWire& w : r.segments) {
    Segment s;
    s.sequence = w.sequence;
    s.first = first;
    s.n = w.n_tokens;
    s.start_pos = w.start_pos;
    s.page_offset = page_offset;
    s.n_pages = w.n_pages;
    const int64_t end = s.start_pos + s.n;
    if (s.start_pos < 0 || end > limits_.max_positions) {
      return absl::InvalidArgumentError(
          absl::StrCat("kLayer: sequence ", s.sequence, " positions ", s.start_pos, "..", end - 1,
                       " are outside the ", limits_.max_positions, " one sequence may hold"));
    }
    if (s.n_pages * limits_.page_tokens < end) {
      return absl::InvalidArgumentError(absl::StrCat("kLayer: sequence ", s.sequence, " has ",
                                                     s.n_pages, " pages of ", limits_.page_tokens,
                                                     " positions for ", end, " positions"));
    }
    segments.push_back(s);
    first += s.n;
    page_offset += s.n_pages;
  }
  segments_ = std::move(segments);
  pages_.assign(r.pages.begin(), r.pages.end());
  tokens_.assign(r.tokens.begin(), r.tokens.end());
  active_ = true;
  pending_ = -1;
  return absl::OkStatus();
}

absl::Status AttentionStep::BeginLayer(const RequestHeader& header, const LayerRequest& r) {
  if ((header.flags & kStepStart) != 0) {
    if (active_) {
      // A step the coordinator gave up on (an expert worker failed): start over.
      active_ = false;
    }
    if ((header.flags & kRoutedSums) != 0) {
      return absl::InvalidArgumentError("kLayer: a step start carries no routed sums");
    }
    MOEFLOW_RETURN_IF_ERROR(StartStep(header, r));
  } else {
    if (!active_) {
      return absl::FailedPreconditionError(
          absl::StrCat("kLayer ", header.layer, ": no step is running (start one at layer 0)"));
    }
    if (!finished_ || header.layer != layer_ + 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("kLayer ", header.layer, ": expected layer ", layer_ + (finished_ ? 1 : 0)));
    }
    if (header.n_tokens != n_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kLayer ", header.layer, ": n_tokens ", header.n_tokens, ", the step has ", n_tokens()));
    }
    if (absl::Status s = CheckRoutedSums(header.flags, r.routed_sums, "kLayer", n_tokens());
        !s.ok()) {
      return s;
    }
  }
  if (header.layer < 0 || header.layer >= config_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", header.layer, " is outside [0, ", config_.n_layers, ")"));
  }
  if (config_.is_moe_layer(header.layer) && (header.k < 1 || header.k > config_.n_experts_used)) {
    return absl::InvalidArgumentError(
        absl::StrCat("k ", header.k, " is outside [1, ", config_.n_experts_used, "]"));
  }
  layer_ = header.layer;
  finished_ = false;
  return absl::OkStatus();
}

absl::Status AttentionStep::BeginOutput(const RequestHeader& header,
                                        absl::Span<const float> routed_sums) {
  if (!active_ || !finished_ || layer_ != config_.n_layers - 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("kOutput: the step has not run every layer (at layer ", layer_, ")"));
  }
  if (header.n_tokens != n_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("kOutput: n_tokens ", header.n_tokens, ", the step has ", n_tokens()));
  }
  MOEFLOW_RETURN_IF_ERROR(CheckRoutedSums(header.flags, routed_sums, "kOutput", n_tokens()));
  layer_ = config_.n_layers;
  finished_ = false;
  return absl::OkStatus();
}

void AttentionStep::FinishLayer() {
  finished_ = true;
  pending_ = config_.is_moe_layer(layer_) ? layer_ : -1;
}

std::vector<int64_t> AttentionStep::OutputRows(bool all_rows) const {
  std::vector<int64_t> rows;
  if (all_rows) {
    for (int64_t t = 0; t < n_tokens(); ++t) rows.push_back(t);
  } else {
    for (const Segment& s : segments_) rows.push_back(s.first + s.n - 1);
  }
  return rows;
}

void AttentionStep::PositionsAndSlots(std::vector<int32_t>* positions,
                                      std::vector<int32_t>* slots) const {
  positions->clear();
  slots->clear();
  const int64_t pt = limits_.page_tokens;
  for (const Segment& s : segments_) {
    const absl::Span<const int32_t> table = pages(s);
    for (int64_t i = 0; i < s.n; ++i) {
      const int64_t pos = s.start_pos + i;
      positions->push_back(static_cast<int32_t>(pos));
      slots->push_back(static_cast<int32_t>(table[static_cast<size_t>(pos / pt)] * pt + pos % pt));
    }
  }
}

absl::Status HandleAttentionRequest(const dataflow::RequestHeader& header, AttentionStep& step,
                                    proto::LayerStats& stats,
                                    const std::function<absl::Status()>& layer,
                                    const std::function<absl::Status()>& output) {
  stats.set_rows_computed(header.n_tokens);
  absl::Status s;
  switch (static_cast<dataflow::DataflowOp>(header.op)) {
    case dataflow::DataflowOp::kLayer:
      s = layer();
      break;
    case dataflow::DataflowOp::kOutput:
      s = output();
      break;
    default:
      s = absl::InvalidArgumentError(absl::StrCat("gpu_worker: unknown op ", header.op));
  }
  if (!s.ok()) step.End();
  return s;
}

}  // namespace moeflow
