#include "engine/kv_sequences.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace moeflow {

KvSequences::KvSequences(int64_t page_tokens, int64_t n_pages, int64_t max_positions)
    : pool_(page_tokens, n_pages), max_positions_(max_positions) {}

absl::StatusOr<KvSequences::Started> KvSequences::Start(absl::Span<const int32_t> prompt,
                                                        int64_t reserve_tokens, bool reuse_prefix,
                                                        bool publish) {
  KvPagePool& pool = pool_;
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  if (n_prompt == 0) return absl::InvalidArgumentError("StartSequence: empty prompt");
  if (reserve_tokens < n_prompt || reserve_tokens > max_positions_) {
    return absl::InvalidArgumentError(absl::StrCat("StartSequence: reserve_tokens ", reserve_tokens,
                                                   " is outside [prompt ", n_prompt, ", context ",
                                                   max_positions_, "]"));
  }
  const int64_t pt = pool.page_tokens();
  const int64_t n_pages = (reserve_tokens + pt - 1) / pt;
  if (n_pages > pool.n_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StartSequence: ", reserve_tokens, " positions need ", n_pages, " KV pages of ", pt,
        " tokens but the whole cache has ", pool.n_pages(), " (", pool.n_pages() * pt, " tokens)"));
  }
  // The longest published run of whole blocks, short of the block that holds
  // the last prompt token.
  std::vector<int32_t> reused;
  std::vector<uint64_t> hashes;
  uint64_t hash = 0, serial = 0;
  int64_t evictable_reused = 0;
  for (int64_t b = 0; reuse_prefix && (b + 1) * pt <= n_prompt - 1; ++b) {
    const absl::Span<const int32_t> block =
        prompt.subspan(static_cast<size_t>(b * pt), static_cast<size_t>(pt));
    hash = pool.Hash(hash, block);
    const int32_t page = pool.Find(hash, serial, block);  // verifies the tokens
    if (page < 0) break;
    serial = pool.serial(page);
    reused.push_back(page);
    hashes.push_back(hash);
    if (pool.refcount(page) == 0) ++evictable_reused;
  }
  const int64_t fresh = n_pages - static_cast<int64_t>(reused.size());
  if (pool.available_pages() - evictable_reused < fresh) {
    return absl::ResourceExhaustedError(absl::StrCat("StartSequence: ", fresh, " KV pages needed, ",
                                                     pool.available_pages() - evictable_reused,
                                                     " available now"));
  }
  Sequence seq;
  seq.pages.reserve(static_cast<size_t>(n_pages));
  for (size_t i = 0; i < reused.size(); ++i) {
    MOEFLOW_CHECK(pool.Acquire(hashes[i], i == 0 ? 0 : pool.serial(reused[i - 1]),
                               prompt.subspan(i * static_cast<size_t>(pt),
                                              static_cast<size_t>(pt))) == reused[i]);
    seq.pages.push_back(reused[i]);
  }
  for (int64_t i = 0; i < fresh; ++i) {
    const int32_t page = pool.Allocate();
    MOEFLOW_CHECK(page >= 0);
    seq.pages.push_back(page);
  }
  const int64_t cached = static_cast<int64_t>(reused.size()) * pt;
  seq.tokens.assign(prompt.begin(), prompt.begin() + cached);
  seq.published_blocks = static_cast<int64_t>(reused.size());
  seq.last_hash = hashes.empty() ? 0 : hashes.back();
  seq.last_serial = serial;
  seq.publishing = publish;
  const int64_t id = next_sequence_++;
  sequences_.emplace(id, std::move(seq));
  return Started{id, cached};
}

absl::Status KvSequences::Reserve(int64_t sequence, int64_t reserve_tokens) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("ReserveSequence: no sequence ", sequence));
  }
  KvPagePool& pool = pool_;
  const int64_t pt = pool.page_tokens();
  if (reserve_tokens > max_positions_) {
    return absl::InvalidArgumentError(absl::StrCat("ReserveSequence: reserve_tokens ",
                                                   reserve_tokens, " exceeds the context ",
                                                   max_positions_));
  }
  const int64_t n_pages = (reserve_tokens + pt - 1) / pt;
  if (n_pages > pool.n_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReserveSequence: ", reserve_tokens, " positions need ", n_pages, " KV pages of ", pt,
        " tokens but the whole cache has ", pool.n_pages(), " (", pool.n_pages() * pt, " tokens)"));
  }
  std::vector<int32_t>& pages = it->second.pages;
  const int64_t fresh = n_pages - static_cast<int64_t>(pages.size());
  if (fresh <= 0) return absl::OkStatus();
  if (pool.available_pages() < fresh) {
    return absl::ResourceExhaustedError(absl::StrCat("ReserveSequence: ", fresh,
                                                     " KV pages needed, ", pool.available_pages(),
                                                     " available now"));
  }
  for (int64_t i = 0; i < fresh; ++i) {
    const int32_t page = pool.Allocate();
    MOEFLOW_CHECK(page >= 0);
    pages.push_back(page);
  }
  return absl::OkStatus();
}

absl::Status KvSequences::End(int64_t sequence) {
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("EndSequence: no sequence ", sequence));
  }
  for (int32_t page : it->second.pages) pool_.Release(page);
  sequences_.erase(it);
  return absl::OkStatus();
}

int64_t KvSequences::tokens(int64_t sequence) const {
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? -1 : static_cast<int64_t>(it->second.tokens.size());
}

absl::Span<const int32_t> KvSequences::pages(int64_t sequence) const {
  auto it = sequences_.find(sequence);
  MOEFLOW_CHECK(it != sequences_.end());
  return it->second.pages;
}

absl::Status KvSequences::Check(absl::Span<const Entry> entries) const {
  if (entries.empty()) return absl::InvalidArgumentError("step: no entries");
  const int64_t pt = pool_.page_tokens();
  for (size_t e = 0; e < entries.size(); ++e) {
    const Entry& entry = entries[e];
    auto it = sequences_.find(entry.sequence);
    if (it == sequences_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("step: entry ", e, " names unknown sequence ", entry.sequence));
    }
    for (size_t f = 0; f < e; ++f) {
      if (entries[f].sequence == entry.sequence) {
        return absl::InvalidArgumentError(
            absl::StrCat("step: sequence ", entry.sequence, " appears in entries ", f, " and ", e));
      }
    }
    const Sequence& seq = it->second;
    const int64_t held = static_cast<int64_t>(seq.tokens.size());
    const int64_t m = static_cast<int64_t>(entry.tokens.size());
    if (m == 0)
      return absl::InvalidArgumentError(absl::StrCat("step: entry ", e, " has no tokens"));
    if (entry.start_pos != held) {
      return absl::InvalidArgumentError(
          absl::StrCat("step: entry ", e, " starts at ", entry.start_pos, " but sequence ",
                       entry.sequence, " holds ", held, " positions"));
    }
    const int64_t limit = std::min(static_cast<int64_t>(seq.pages.size()) * pt, max_positions_);
    if (held + m > limit) {
      return absl::InvalidArgumentError(absl::StrCat("step: entry ", e, " reaches position ",
                                                     held + m, " past the ", limit,
                                                     " reserved for sequence ", entry.sequence));
    }
  }
  return absl::OkStatus();
}

void KvSequences::Commit(absl::Span<const Entry> entries) {
  const int64_t pt = pool_.page_tokens();
  for (const Entry& entry : entries) {
    Sequence& seq = sequences_.at(entry.sequence);
    seq.tokens.insert(seq.tokens.end(), entry.tokens.begin(), entry.tokens.end());
    const absl::Span<const int32_t> tokens(seq.tokens);
    while (seq.publishing &&
           (seq.published_blocks + 1) * pt <= static_cast<int64_t>(seq.tokens.size())) {
      const int64_t b = seq.published_blocks;
      const absl::Span<const int32_t> block =
          tokens.subspan(static_cast<size_t>(b * pt), static_cast<size_t>(pt));
      seq.last_hash = pool_.Hash(seq.last_hash, block);
      // 0: a different block holds this hash (a collision); later blocks
      // would have no verifiable parent, so this sequence publishes no more.
      seq.last_serial =
          pool_.Publish(seq.pages[static_cast<size_t>(b)], seq.last_hash, seq.last_serial, block);
      seq.publishing = seq.last_serial != 0;
      ++seq.published_blocks;
    }
  }
}

}  // namespace moeflow
