#include "coordinator/expert_dispatch.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {

using dataflow::RequestHeader;
using dataflow::WireWriter;

ExpertDispatch::ExpertDispatch(const Deepseek2Config& config, const ExpertPlan* plan,
                               int64_t max_tokens)
    : config_(config), plan_(plan) {
  const size_t pairs = static_cast<size_t>(max_tokens * config.n_experts_used);
  row_of_token_.resize(static_cast<size_t>(max_tokens));
  pair_worker_.resize(pairs);
  pair_pos_.resize(pairs);
  if (plan_->slice()) ysum_.resize(pairs * static_cast<size_t>(config.hidden));
}

absl::Status ExpertDispatch::Build(int64_t layer, const dataflow::RouterReply& router, int64_t n,
                                   int64_t k, absl::Span<const absl::Span<uint8_t>> payloads,
                                   std::vector<Request>* requests) {
  const int64_t h = config_.hidden;
  const bool slice = plan_->slice();
  const int32_t* ids = router.ids.data();
  for (int64_t p = 0; p < n * k; ++p) {
    if (ids[p] < 0 || ids[p] >= config_.n_experts) {
      return absl::InternalError(
          absl::StrCat("gpu0: router chose expert ", ids[p], " (layer ", layer, ", pair ", p, ")"));
    }
  }
  const int n_workers = plan_->n_workers;
  MOEFLOW_CHECK(static_cast<int>(payloads.size()) == n_workers);
  auto owner = [&](int32_t e) { return plan_->owner[static_cast<size_t>(e)]; };
  // One worker holding every pair of the step sums them itself.
  combined_worker_ = -1;
  if (!slice) {
    const int first = owner(ids[0]);
    bool one = true;
    for (int64_t p = 1; p < n * k && one; ++p) one = owner(ids[p]) == first;
    if (one) combined_worker_ = first;
  }
  requests->assign(static_cast<size_t>(n_workers), Request());
  for (int w = 0; w < n_workers; ++w) {
    WireWriter out(payloads[static_cast<size_t>(w)]);
    std::fill(row_of_token_.begin(), row_of_token_.begin() + n, -1);
    int32_t rows = 0, pairs = 0;
    for (int64_t p = 0; p < n * k; ++p) {
      if (slice || owner(ids[p]) == w) {
        const int64_t t = p / k;
        if (row_of_token_[static_cast<size_t>(t)] < 0)
          row_of_token_[static_cast<size_t>(t)] = rows++;
        pair_worker_[static_cast<size_t>(p)] = w;
        pair_pos_[static_cast<size_t>(p)] = pairs++;
      }
    }
    if (pairs == 0) continue;
    float* row_out = out.Add<float>(static_cast<size_t>(rows * h));
    for (int64_t t = 0; t < n; ++t) {
      const int32_t r = row_of_token_[static_cast<size_t>(t)];
      if (r >= 0) {
        std::memcpy(row_out + r * h, router.x_norm.data() + t * h,
                    static_cast<size_t>(h) * sizeof(float));
      }
    }
    int32_t* row_of_pair = out.Add<int32_t>(static_cast<size_t>(pairs));
    int32_t* expert_of_pair = out.Add<int32_t>(static_cast<size_t>(pairs));
    int32_t q = 0;
    for (int64_t p = 0; p < n * k; ++p) {
      if (!slice && owner(ids[p]) != w) continue;
      row_of_pair[q] = row_of_token_[static_cast<size_t>(p / k)];
      expert_of_pair[q] = ids[p];
      ++q;
    }
    Request& r = (*requests)[static_cast<size_t>(w)];
    r.send = true;
    RequestHeader& eh = r.header;
    eh.op = static_cast<uint32_t>(dataflow::DataflowOp::kExperts);
    eh.layer = static_cast<int32_t>(layer);
    eh.n_rows = rows;
    eh.n_pairs = pairs;
    int64_t reply_rows = pairs;
    if (w == combined_worker_) {
      // Every token's k pairs, in token and j order: row_of_pair[p] = p / k.
      out.Copy(router.weights.subspan(0, static_cast<size_t>(pairs)));
      eh.flags = dataflow::kExpertsCombine;
      eh.k = static_cast<int32_t>(k);
      reply_rows = rows;
    }
    r.payload_bytes = out.size();
    r.reply_bytes =
        static_cast<int64_t>(dataflow::SectionBytes<float>(static_cast<size_t>(reply_rows * h)));
  }
  return absl::OkStatus();
}

void ExpertDispatch::Sum(const dataflow::RouterReply& router, int64_t n, int64_t k,
                         absl::Span<const absl::Span<const uint8_t>> replies, float* routed) {
  const int64_t h = config_.hidden;
  auto reply_rows = [&](int w) {
    return reinterpret_cast<const float*>(replies[static_cast<size_t>(w)].data());
  };
  if (combined_worker_ >= 0) {
    std::memcpy(routed, reply_rows(combined_worker_), static_cast<size_t>(n * h) * sizeof(float));
    return;
  }
  const bool slice = plan_->slice();
  if (slice) {
    // y of pair p: the sum of the slices' partial outputs in worker order.
    for (int64_t p = 0; p < n * k; ++p) {
      float* y = ysum_.data() + p * h;
      for (int w = 0; w < plan_->n_workers; ++w) {
        const float* part = reply_rows(w) + p * h;
        if (w == 0) {
          std::memcpy(y, part, static_cast<size_t>(h) * sizeof(float));
        } else {
          for (int64_t i = 0; i < h; ++i) y[i] += part[i];
        }
      }
    }
  }
  // out[t] = Σ_j w[t, j] · y[t, j], in j order: the fused operator's sum.
  for (int64_t t = 0; t < n; ++t) {
    float* o = routed + t * h;
    std::fill(o, o + h, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = t * k + j;
      const float w = router.weights[static_cast<size_t>(p)];
      const float* y = slice ? ysum_.data() + p * h
                             : reply_rows(pair_worker_[static_cast<size_t>(p)]) +
                                   static_cast<int64_t>(pair_pos_[static_cast<size_t>(p)]) * h;
      for (int64_t i = 0; i < h; ++i) o[i] += y[i] * w;
    }
  }
}

}  // namespace moeflow
