#include "coordinator/dataflow_batch_model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {

DataflowBatchModel::DataflowBatchModel(StepEngine* engine, const BpeTokenizer* tokenizer)
    : engine_(engine),
      tokenizer_(tokenizer),
      sequences_(engine->limits().page_tokens, engine->limits().n_pages,
                 engine->limits().context_tokens),
      epoch_(engine->kv_epoch()) {}

void DataflowBatchModel::CheckEpoch() {
  const int64_t epoch = engine_->kv_epoch();
  if (epoch == epoch_) return;
  epoch_ = epoch;
  sequences_.ForgetPublished();
}

int64_t DataflowBatchModel::kv_pages_used() const {
  absl::MutexLock lock(&mu_);
  return sequences_.pool().referenced_pages();
}

int64_t DataflowBatchModel::kv_pages_cached() const {
  absl::MutexLock lock(&mu_);
  return sequences_.pool().cached_pages();
}

absl::StatusOr<server::BatchModel::Started> DataflowBatchModel::StartSequence(
    absl::Span<const int32_t> prompt, int64_t reserve_tokens, bool reuse_prefix, bool publish) {
  absl::MutexLock lock(&mu_);
  CheckEpoch();
  MOEFLOW_ASSIGN_OR_RETURN(const KvSequences::Started s,
                           sequences_.Start(prompt, reserve_tokens, reuse_prefix, publish));
  return Started{s.sequence, s.cached_tokens};
}

absl::Status DataflowBatchModel::GrowSequence(int64_t sequence, int64_t reserve_tokens) {
  absl::MutexLock lock(&mu_);
  return sequences_.Reserve(sequence, reserve_tokens);
}

int64_t DataflowBatchModel::sequence_tokens(int64_t sequence) const {
  absl::MutexLock lock(&mu_);
  return sequences_.tokens(sequence);
}

void DataflowBatchModel::EndSequence(int64_t sequence) {
  absl::MutexLock lock(&mu_);
  MOEFLOW_CHECK_OK(sequences_.End(sequence));
}

absl::Status DataflowBatchModel::StepLocked(absl::Span<const Entry> entries, bool all_logits,
                                            absl::Span<float> logits) {
  CheckEpoch();
  entries_.clear();
  for (const Entry& e : entries) entries_.push_back({e.sequence, e.tokens, e.start_pos});
  MOEFLOW_RETURN_IF_ERROR(sequences_.Check(entries_));
  const int64_t vocab = engine_->config().vocab_size;
  for (const Entry& e : entries) {
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      if (e.tokens[i] < 0 || e.tokens[i] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", e.tokens[i], " at index ", i,
                                                       " of sequence ", e.sequence,
                                                       " is out of range [0, ", vocab, ")"));
      }
    }
  }
  segments_.clear();
  for (const Entry& e : entries) {
    segments_.push_back({e.sequence, e.tokens, e.start_pos, sequences_.pages(e.sequence)});
  }
  MOEFLOW_RETURN_IF_ERROR(engine_->Step(segments_, all_logits, logits));
  sequences_.Commit(entries_);
  return absl::OkStatus();
}

absl::Status DataflowBatchModel::Forward(absl::Span<const Entry> entries,
                                         absl::Span<float> logits) {
  absl::MutexLock lock(&mu_);
  return StepLocked(entries, /*all_logits=*/false, logits);
}

absl::Status DataflowBatchModel::ForwardAllLogits(const Entry& entry, absl::Span<float> logits) {
  absl::MutexLock lock(&mu_);
  return StepLocked(absl::MakeConstSpan(&entry, 1), /*all_logits=*/true, logits);
}

absl::Status DataflowBatchModel::AllLogits(absl::Span<const int32_t> tokens,
                                           std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = engine_->config().vocab_size;
  MOEFLOW_ASSIGN_OR_RETURN(const Started started,
                           StartSequence(tokens, n, /*reuse_prefix=*/false, /*publish=*/false));
  logits->resize(static_cast<size_t>(n * vocab));
  absl::Status s;
  const int64_t chunk = engine_->limits().max_tokens;
  for (int64_t c0 = 0; c0 < n && s.ok(); c0 += chunk) {
    const int64_t m = std::min(chunk, n - c0);
    const Entry entry{started.sequence,
                      tokens.subspan(static_cast<size_t>(c0), static_cast<size_t>(m)), c0};
    s = ForwardAllLogits(entry, absl::MakeSpan(*logits).subspan(static_cast<size_t>(c0 * vocab),
                                                                static_cast<size_t>(m * vocab)));
  }
  EndSequence(started.sequence);
  return s;
}

}  // namespace moeflow
