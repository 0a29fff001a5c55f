#include "server/metrics.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moeflow::server {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  absl::MutexLock lock(&mu_);
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  counts_[i]++;
  sum_ += value;
  count_++;
}

void Histogram::Render(const std::string& name, std::string* out) const {
  absl::MutexLock lock(&mu_);
  absl::StrAppend(out, "# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{le=\"", absl::StrFormat("%g", bounds_[i]), "\"} ",
                    cumulative, "\n");
  }
  cumulative += counts_.back();
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", cumulative, "\n");
  absl::StrAppend(out, name, "_sum ", absl::StrFormat("%.6f", sum_), "\n");
  absl::StrAppend(out, name, "_count ", count_, "\n");
}

ServerMetrics::ServerMetrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void ServerMetrics::SetQueueDepth(int64_t n) {
  absl::MutexLock lock(&mu_);
  queue_depth_ = n;
}

void ServerMetrics::SetRunning(int64_t n) {
  absl::MutexLock lock(&mu_);
  running_ = n;
}

void ServerMetrics::SetKvCacheTokens(int64_t n) {
  absl::MutexLock lock(&mu_);
  kv_cache_tokens_ = n;
}

void ServerMetrics::SetKvPages(int64_t used, int64_t cached, int64_t total) {
  absl::MutexLock lock(&mu_);
  kv_pages_used_ = used;
  kv_pages_cached_ = cached;
  kv_pages_total_ = total;
}

void ServerMetrics::SetBatchThroughput(double prefill_tokens_per_s, double decode_tokens_per_s) {
  absl::MutexLock lock(&mu_);
  batch_prefill_tps_ = prefill_tokens_per_s;
  batch_decode_tps_ = decode_tokens_per_s;
}

std::string EndpointLabel(const std::string& path) {
  static const char* const kEndpoints[] = {
      "/health",         "/metrics",  "/v1/models",    "/v1/chat/completions",
      "/v1/completions", "/api/chat", "/api/generate", "/api/tags",
      "/api/version",    "/api/show", "/api/ps"};
  for (const char* e : kEndpoints) {
    if (path == e) return path;
  }
  if (absl::StartsWith(path, "/v1/models/")) return "/v1/models/{id}";
  return "other";
}

void ServerMetrics::RecordRequest(const std::string& endpoint, int code) {
  absl::MutexLock lock(&mu_);
  requests_[{EndpointLabel(endpoint), code}]++;
}

void ServerMetrics::RecordPreemption() {
  absl::MutexLock lock(&mu_);
  preemptions_++;
}

void ServerMetrics::RecordGeneration(int64_t prompt_tokens, int64_t cached_tokens,
                                     int64_t completion_tokens, double prefill_s, double decode_s) {
  absl::MutexLock lock(&mu_);
  prompt_tokens_ += static_cast<uint64_t>(prompt_tokens);
  cached_tokens_ += static_cast<uint64_t>(cached_tokens);
  completion_tokens_ += static_cast<uint64_t>(completion_tokens);
  prefill_s_ += prefill_s;
  decode_s_ += decode_s;
  if (prefill_s > 0) last_prefill_tps_ = (prompt_tokens - cached_tokens) / prefill_s;
  if (decode_s > 0) last_decode_tps_ = completion_tokens / decode_s;
}

std::string ServerMetrics::RenderPrometheus() const {
  std::string out;
  {
    absl::MutexLock lock(&mu_);
    auto gauge = [&out](const char* name, const char* help, double value) {
      absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, " ",
                      absl::StrFormat("%.6g", value), "\n");
    };
    auto counter = [&out](const char* name, const char* help, double value) {
      absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ",
                      absl::StrFormat("%.17g", value), "\n");
    };
    gauge("moeflow_queue_depth", "Requests waiting for the engine.", queue_depth_);
    gauge("moeflow_running_requests", "Requests generating.", running_);
    gauge("moeflow_kv_cache_tokens", "Positions held in the KV cache.", kv_cache_tokens_);
    gauge("moeflow_kv_pages_used", "KV pages referenced by running requests.", kv_pages_used_);
    gauge("moeflow_kv_pages_cached", "Unreferenced KV pages kept for prefix reuse.",
          kv_pages_cached_);
    gauge("moeflow_kv_pages_total", "KV pages in the paged cache.", kv_pages_total_);
    gauge("moeflow_batch_prefill_tokens_per_second",
          "Prefill tokens per second over all requests (recent steps).", batch_prefill_tps_);
    gauge("moeflow_batch_decode_tokens_per_second",
          "Decoded tokens per second over all requests (recent steps).", batch_decode_tps_);
    absl::StrAppend(&out, "# HELP moeflow_requests_total Answered HTTP requests.\n",
                    "# TYPE moeflow_requests_total counter\n");
    for (const auto& [key, n] : requests_) {
      absl::StrAppend(&out, "moeflow_requests_total{endpoint=\"", key.first, "\",code=\"",
                      key.second, "\"} ", n, "\n");
    }
    counter("moeflow_prompt_tokens_total", "Prompt tokens of finished generations.",
            static_cast<double>(prompt_tokens_));
    counter("moeflow_prompt_cached_tokens_total", "Prompt tokens reused from the KV cache.",
            static_cast<double>(cached_tokens_));
    counter("moeflow_completion_tokens_total", "Generated tokens.",
            static_cast<double>(completion_tokens_));
    counter("moeflow_preemptions_total",
            "Running requests preempted (KV pool full) and recomputed later.",
            static_cast<double>(preemptions_));
    counter("moeflow_prefill_seconds_total", "Time spent in prefill.", prefill_s_);
    counter("moeflow_decode_seconds_total", "Time spent decoding.", decode_s_);
    gauge("moeflow_prefill_tokens_per_second", "Prefill speed of the last request.",
          last_prefill_tps_);
    gauge("moeflow_decode_tokens_per_second", "Decode speed of the last request.",
          last_decode_tps_);
  }
  ttft_.Render("moeflow_time_to_first_token_seconds", &out);
  itl_.Render("moeflow_inter_token_latency_seconds", &out);
  return out;
}

}  // namespace moeflow::server
