#include "coordinator/local_topology.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "engine/layer_step.h"
#include "model/deepseek2/config.h"

namespace moeflow {

absl::StatusOr<std::unique_ptr<LocalTopology>> LocalTopology::Open(const std::string& gguf_path,
                                                                   const LocalTopologyOptions& o) {
  if (o.n_threads < 1 || o.n_threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_threads ", o.n_threads, " is outside [1, 1024]"));
  }
  if (o.max_batch_tokens < 1 || o.max_sequences < 1 || o.kv_tokens < 1 || o.context_tokens < 0 ||
      o.kv_page_tokens < 1 || o.kv_page_tokens > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch_tokens ", o.max_batch_tokens, ", max_sequences ", o.max_sequences,
        ", kv_tokens ", o.kv_tokens, " must be >= 1, context_tokens ", o.context_tokens,
        " >= 0, kv_page_tokens ", o.kv_page_tokens, " in [1, 4096]"));
  }
  // Never one pass of more than kPrefillTokenChunk tokens: the scratch of a
  // step grows with its tokens, and a token's result does not depend on the
  // step it is in, so longer prompts go in steps (the callers' chunks).
  const int64_t max_tokens = std::min(o.max_batch_tokens, kPrefillTokenChunk);
  std::unique_ptr<LocalTopology> t(new LocalTopology());
  t->pool_ = std::make_unique<ThreadPool>(o.n_threads);
  auto progress = [&](int64_t done) {
    if (o.progress) o.progress(done, 2);
  };
  progress(0);
  // One parse and one mapping of the file for both components (each would
  // otherwise open its own: the metadata alone, the tokenizer's 200,000
  // strings, is ~27 MB of heap per parse on DeepSeek's vocabulary).
  MOEFLOW_ASSIGN_OR_RETURN(t->file_, GgufFile::Open(gguf_path));
  proto::ConfigureRequest attention;
  attention.set_model_path(gguf_path);
  attention.set_role(proto::WORKER_ROLE_GPU);
  attention.set_backend("cpu");
  attention.set_worker_name("gpu0");
  attention.set_numa_node(-1);
  attention.set_max_batch_tokens(static_cast<int32_t>(max_tokens));
  attention.set_max_sequences(static_cast<int32_t>(o.max_sequences));
  attention.set_kv_cache_tokens(o.kv_tokens);
  attention.set_context_tokens(o.context_tokens);
  attention.set_kv_page_tokens(static_cast<int32_t>(o.kv_page_tokens));
  t->attention_ = std::make_unique<CpuGpuWorkerBackend>(t->pool_.get());
  MOEFLOW_RETURN_IF_ERROR(t->attention_->Configure(attention));
  t->attention_->UseOpenFile(t->file_);
  MOEFLOW_RETURN_IF_ERROR(t->attention_->Load([](const proto::LoadProgress&) {}));
  progress(1);
  const Deepseek2Config& c = t->attention_->config();
  if (o.active_experts < 0 || o.active_experts > c.n_experts_used) {
    return absl::InvalidArgumentError(
        absl::StrCat("active_experts ", o.active_experts,
                     " is outside [0, expert_used_count = ", c.n_experts_used, "]"));
  }
  t->k_ = o.active_experts == 0 ? c.n_experts_used : o.active_experts;
  t->plan_ = MakeExpertPlan(c, proto::EXPERT_PLACEMENT_REPLICATE, 1);
  proto::ConfigureRequest experts;
  experts.set_model_path(gguf_path);
  experts.set_role(proto::WORKER_ROLE_CPU_EXPERT);
  experts.set_worker_name("expert0");
  experts.set_numa_node(-1);
  experts.set_max_batch_tokens(static_cast<int32_t>(max_tokens));
  *experts.mutable_shard() = t->plan_.shards[0];
  t->experts_ = std::make_unique<ExpertShard>(t->pool_.get());
  MOEFLOW_RETURN_IF_ERROR(t->experts_->Configure(experts));
  t->experts_->UseOpenFile(t->file_);
  MOEFLOW_RETURN_IF_ERROR(t->experts_->Load([](const proto::LoadProgress&) {}));
  progress(2);
  // Nothing here waits on another process: the pool's threads never rest.
  t->attention_client_ = std::make_unique<dataflow::InProcessClient>("gpu0", t->attention_.get(),
                                                                     /*rest_between_calls=*/false);
  t->experts_client_ = std::make_unique<dataflow::InProcessClient>("expert0", t->experts_.get(),
                                                                   /*rest_between_calls=*/false);
  const AttentionStepLimits& l = t->attention_->limits();
  t->limits_ = StepLimits{l.max_tokens, l.max_segments, l.page_tokens, l.n_pages, l.max_positions};
  LayerDriverOptions driver;
  driver.max_tokens = l.max_tokens;
  driver.overlap_shared_experts = true;  // one thread of control: nothing to overlap
  t->driver_ = std::make_unique<LayerDriver>(c, &t->plan_, driver);
  return t;
}

absl::Status LocalTopology::Step(absl::Span<const StepSegment> segments, bool all_logits,
                                 absl::Span<float> logits) {
  StepClients clients{attention_client_.get(), {experts_client_.get()}};
  return driver_->Step(clients, segments, k_, all_logits, logits, nullptr);
}

}  // namespace moeflow
