// The page tables of the running sequences over a KvPagePool, with
// block-hash prefix reuse: what a batch model needs to admit a sequence,
// grow it, check a step's entries against it and record what the step
// computed.
//
// Role in the data flow: the coordinator's batch model (coordinator/
// dataflow_batch_model.h) owns one; BatchingScheduler admits and grows
// sequences through it, every step sends each sequence's page table to the
// attention worker (whose KV memory the page ids index), and Commit
// publishes the blocks a successful step completed.
//
//   Start ─► (Check ─► step ─► Commit)* ─► End
//   Start reuses the longest run of whole published blocks the prompt starts
//   with — never the block holding the prompt's last token, whose logits the
//   caller needs — verified token by token (kv_pages.h); Reserve takes more
//   pages as decoding goes on.
//
// Thread-safety: none; the batch model serializes. Failure: Start returns
// InvalidArgument for an empty prompt, reserve_tokens < prompt size, past
// `max_positions` or more pages than the whole pool, ResourceExhausted when
// the pages are not available now (retry after others end); Reserve
// InvalidArgument past the limits, ResourceExhausted (nothing changes) when
// the pages are not there now, NotFound for an unknown id; Check
// InvalidArgument naming the entry (unknown or repeated sequence, wrong
// start, past its pages). Nothing changes on error.
#ifndef MOEFLOW_ENGINE_KV_SEQUENCES_H_
#define MOEFLOW_ENGINE_KV_SEQUENCES_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/kv_pages.h"

namespace moeflow {

class KvSequences {
 public:
  // `max_positions`: most positions one sequence may hold (the context).
  KvSequences(int64_t page_tokens, int64_t n_pages, int64_t max_positions);

  struct Started {
    int64_t sequence = -1;
    int64_t cached_tokens = 0;  // prompt positions reused; the first step starts here
  };
  // `reuse_prefix` false: nothing is reused; `publish` false: the blocks it
  // computes are not published for later sequences (benchmarks that repeat
  // a prompt).
  absl::StatusOr<Started> Start(absl::Span<const int32_t> prompt, int64_t reserve_tokens,
                                bool reuse_prefix = true, bool publish = true);
  absl::Status Reserve(int64_t sequence, int64_t reserve_tokens);
  absl::Status End(int64_t sequence);

  // One entry of a step: `n_tokens` tokens at positions start_pos.. of a
  // sequence (start_pos must equal the positions it holds).
  struct Entry {
    int64_t sequence = -1;
    absl::Span<const int32_t> tokens;
    int64_t start_pos = 0;
  };
  absl::Status Check(absl::Span<const Entry> entries) const;
  // The pages of a started sequence (covering its reservation).
  absl::Span<const int32_t> pages(int64_t sequence) const;
  // Records the entries' tokens (after a successful step) and publishes the
  // blocks they completed.
  void Commit(absl::Span<const Entry> entries);
  // Positions a started sequence holds; -1 for an unknown id.
  int64_t tokens(int64_t sequence) const;

  // The memory behind the pages was lost (attention worker restarted).
  void ForgetPublished() { pool_.ForgetPublished(); }

  const KvPagePool& pool() const { return pool_; }
  KvPagePool& mutable_pool_for_testing() { return pool_; }
  int64_t max_positions() const { return max_positions_; }

 private:
  struct Sequence {
    std::vector<int32_t> pages;    // page table (Start, Reserve)
    std::vector<int32_t> tokens;   // every position's token
    int64_t published_blocks = 0;  // leading blocks whose hash is known
    uint64_t last_hash = 0;        // hash of block published_blocks - 1
    uint64_t last_serial = 0;      // serial naming blocks 0..published_blocks-1
    bool publishing = true;        // false after a hash collision broke the chain
  };

  KvPagePool pool_;
  int64_t max_positions_;
  std::map<int64_t, Sequence> sequences_;
  int64_t next_sequence_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_KV_SEQUENCES_H_
