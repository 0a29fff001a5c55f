// Serving metrics in Prometheus' text format (GET /metrics).
//
// Role in the data flow: the scheduler records queue depth, running requests,
// token counts, prefill/decode time, time to first token and inter-token
// latency; the API layer records requests by endpoint and status; /metrics
// renders them all.
//
//   moeflow_queue_depth                      gauge    requests waiting
//   moeflow_running_requests                 gauge    requests generating
//   moeflow_requests_total{endpoint,code}    counter  answered requests (unknown paths:
//                                                     endpoint="other")
//   moeflow_prompt_tokens_total              counter
//   moeflow_prompt_cached_tokens_total       counter  prompt tokens reused from the KV cache
//   moeflow_completion_tokens_total          counter
//   moeflow_prefill_seconds_total / moeflow_decode_seconds_total
//   moeflow_prefill_tokens_per_second / moeflow_decode_tokens_per_second
//                                            gauge    of the last finished request
//   moeflow_kv_cache_tokens                  gauge    positions held in the KV cache
//   moeflow_kv_pages_used / moeflow_kv_pages_total / moeflow_kv_pages_cached
//                                            gauge    paged KV cache (batching scheduler):
//                                                     pages referenced by running requests,
//                                                     all pages, unreferenced prefix pages
//   moeflow_batch_prefill_tokens_per_second / moeflow_batch_decode_tokens_per_second
//                                            gauge    all requests together, over the last
//                                                     second or more of steps
//   moeflow_time_to_first_token_seconds      histogram (queue wait included)
//   moeflow_inter_token_latency_seconds      histogram
//
// Thread-safety: every method is thread-safe. Failure: none.
#ifndef MOEFLOW_SERVER_METRICS_H_
#define MOEFLOW_SERVER_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace moeflow::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // Appends the _bucket/_sum/_count lines of `name`.
  void Render(const std::string& name, std::string* out) const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bound, then +Inf
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// The `endpoint` label of a request path: the API's endpoints as they are,
// /v1/models/ID as "/v1/models/{id}", anything else "other".
std::string EndpointLabel(const std::string& path);

class ServerMetrics {
 public:
  ServerMetrics();

  void SetQueueDepth(int64_t n);
  void SetRunning(int64_t n);
  void SetKvCacheTokens(int64_t n);
  void SetKvPages(int64_t used, int64_t cached, int64_t total);
  void SetBatchThroughput(double prefill_tokens_per_s, double decode_tokens_per_s);
  // `endpoint` is the request's path; paths the API does not serve share
  // the label "other" (EndpointLabel), so clients cannot add series.
  void RecordRequest(const std::string& endpoint, int code);
  // A running request preempted because the KV pool had no page left.
  void RecordPreemption();
  // One finished generation.
  void RecordGeneration(int64_t prompt_tokens, int64_t cached_tokens, int64_t completion_tokens,
                        double prefill_s, double decode_s);
  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  void ObserveInterTokenLatency(double seconds) { itl_.Observe(seconds); }

  std::string RenderPrometheus() const;

 private:
  mutable absl::Mutex mu_;
  int64_t queue_depth_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_cache_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_pages_used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_pages_cached_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_pages_total_ ABSL_GUARDED_BY(mu_) = 0;
  double batch_prefill_tps_ ABSL_GUARDED_BY(mu_) = 0;
  double batch_decode_tps_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<std::string, int>, uint64_t> requests_ ABSL_GUARDED_BY(mu_);
  uint64_t prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t completion_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t preemptions_ ABSL_GUARDED_BY(mu_) = 0;
  double prefill_s_ ABSL_GUARDED_BY(mu_) = 0;
  double decode_s_ ABSL_GUARDED_BY(mu_) = 0;
  double last_prefill_tps_ ABSL_GUARDED_BY(mu_) = 0;
  double last_decode_tps_ ABSL_GUARDED_BY(mu_) = 0;
  Histogram ttft_;
  Histogram itl_;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_METRICS_H_
