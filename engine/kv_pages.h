// The pages of a paged compressed-KV (MLA) cache shared by several
// sequences, with block-hash prefix reuse: the bookkeeping (which page is
// free, referenced, published, cached), not the memory.
//
// Role in the data flow: the coordinator's batch model (coordinator/
// dataflow_batch_model.h, through kv_sequences.h) allocates the pages of
// every running sequence here and sends their ids with each step; the
// attention worker holds the memory (KvPageMemory below; a CUDA one on its
// card). A page holds `page_tokens` consecutive positions of one sequence
// for every layer. A sequence owns a page table (page ids in position
// order).
//
// Pages are refcounted. A page whose block of `page_tokens` positions is full
// can be published under the hash of its tokens chained with the hash of the
// previous block (so the hash names the whole prefix up to and including that
// block). A later sequence whose prompt starts with the same blocks takes
// those pages (Acquire) instead of recomputing them.
//
// The hash is only an index, never trusted: a published page keeps its
// block's tokens and the serial of its parent (the published page holding
// the previous block; 0 for the first block), and Find/Acquire match only
// when both are equal too. Serials are unique and never reused (an evicted
// and republished page gets a new one), so matching block by block from the
// first one proves the whole prefix equal by induction; a 64-bit hash
// collision is a miss, never another prompt's KV. When the last reference
// goes, a published page stays cached (evictable, in LRU order) and an
// unpublished one goes back to the free list; Allocate takes a free page
// first, then evicts the least recently released cached page.
//
//   free ──Allocate──► referenced ──Publish──► referenced+hashed
//    ▲                    │ Release(last)          │ Release(last)  ▲ Acquire
//    └────────────────────┘                        ▼                │
//    └──────── evicted by Allocate ◄──────── cached (LRU) ──────────┘
//
// Thread-safety: none; the engine's owner (one scheduler thread) calls it.
// Failure: Allocate returns -1 when no page is free or evictable; misuse
// (bad ids, releasing an unreferenced page) is a CHECK failure.
#ifndef MOEFLOW_ENGINE_KV_PAGES_H_
#define MOEFLOW_ENGINE_KV_PAGES_H_

#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace moeflow {

class KvPagePool {
 public:
  KvPagePool() = default;
  KvPagePool(int64_t page_tokens, int64_t n_pages);

  int64_t page_tokens() const { return page_tokens_; }
  int64_t n_pages() const { return n_pages_; }

  // Pages with at least one reference.
  int64_t referenced_pages() const { return n_pages_ - free_pages() - cached_pages(); }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  // Unreferenced published pages (kept for reuse, evictable).
  int64_t cached_pages() const { return static_cast<int64_t>(lru_.size()); }
  // Pages Allocate can hand out now (free + evictable).
  int64_t available_pages() const { return free_pages() + cached_pages(); }

  // A page with refcount 1, or -1 when none is free or evictable. Evicting
  // forgets the page's hash, tokens and serial.
  int32_t Allocate();
  // The page published under `hash` whose parent serial is `parent` and
  // whose block holds exactly `tokens`, with one more reference (taken out
  // of the LRU list if it was unreferenced); -1 when there is none (a page
  // under `hash` with other tokens or another parent is a collision: -1).
  int32_t Acquire(uint64_t hash, uint64_t parent, absl::Span<const int32_t> tokens);
  // As Acquire, without taking the page.
  int32_t Find(uint64_t hash, uint64_t parent, absl::Span<const int32_t> tokens) const;
  // Drops one reference; see the state machine above.
  void Release(int32_t page);
  // Forgets every page's block (the memory behind the pages was lost: the
  // attention worker restarted): cached pages go back to the free list,
  // referenced ones stay referenced but are no longer found, and their
  // serials never match again.
  void ForgetPublished();
  // Registers a full, referenced page holding block `tokens` (page_tokens
  // of them) after the prefix named by serial `parent` (0: first block)
  // under `hash`. Returns the serial that names this prefix from now on:
  // the page's new serial; or, when another page already holds `hash` with
  // the same parent and tokens (the same prefix computed twice), that
  // page's serial and this page stays unpublished; or 0 when `hash` is held
  // by a different block (a collision) or this page is already published —
  // then nothing changes and the caller must not publish later blocks of
  // this sequence (their parent has no serial).
  uint64_t Publish(int32_t page, uint64_t hash, uint64_t parent, absl::Span<const int32_t> tokens);
  int32_t refcount(int32_t page) const { return pages_[static_cast<size_t>(page)].refs; }
  // The page's serial while published, else 0.
  uint64_t serial(int32_t page) const { return pages_[static_cast<size_t>(page)].serial; }

  // The hash Find/Acquire/Publish callers should index by: BlockHash unless
  // a test replaced it (set_hash_for_testing) to force collisions.
  uint64_t Hash(uint64_t previous, absl::Span<const int32_t> tokens) const {
    return hash_fn_(previous, tokens);
  }
  using HashFn = uint64_t (*)(uint64_t previous, absl::Span<const int32_t> tokens);
  void set_hash_for_testing(HashFn fn) { hash_fn_ = fn; }

  // Hash of a block of tokens chained after the previous block's hash (0 for
  // the first block): FNV-1a over the previous hash and the token ids, then
  // a 64-bit finaliser (splitmix64) to spread the bits.
  static uint64_t BlockHash(uint64_t previous, absl::Span<const int32_t> tokens);

 private:
  struct Page {
    int32_t refs = 0;
    bool hashed = false;
    uint64_t hash = 0;
    uint64_t serial = 0;               // unique while hashed, else 0
    uint64_t parent = 0;               // serial of the previous block's page (0: first block)
    std::vector<int32_t> tokens;       // the block's tokens while hashed
    std::list<int32_t>::iterator lru;  // valid when refs == 0 && hashed
  };

  int64_t page_tokens_ = 0;
  int64_t n_pages_ = 0;
  std::vector<Page> pages_;
  std::vector<int32_t> free_;  // a stack: the most recently freed page first
  std::list<int32_t> lru_;     // unreferenced hashed pages, least recently released first
  std::unordered_map<uint64_t, int32_t> by_hash_;
  uint64_t next_serial_ = 1;
  HashFn hash_fn_ = &BlockHash;
};

// The memory of a paged MLA cache on the CPU: `n_pages` pages, each laid out
// [layer][position in page][row_dim] so that one layer's rows of a page are
// contiguous. Anonymous zero memory mapped at construction: pages no
// sequence has written take no memory (a cache sized for a long context
// costs what is used).
class KvPageMemory {
 public:
  KvPageMemory() = default;
  KvPageMemory(int64_t n_layers, int64_t row_dim, int64_t page_tokens, int64_t n_pages);
  ~KvPageMemory();
  KvPageMemory(KvPageMemory&& other) noexcept { *this = std::move(other); }
  KvPageMemory& operator=(KvPageMemory&& other) noexcept;
  KvPageMemory(const KvPageMemory&) = delete;
  KvPageMemory& operator=(const KvPageMemory&) = delete;

  int64_t n_pages() const { return n_pages_; }
  int64_t page_tokens() const { return page_tokens_; }
  int64_t row_dim() const { return row_dim_; }
  // Floats per page (all layers) and per layer within a page.
  int64_t page_floats() const { return n_layers_ * layer_floats(); }
  int64_t layer_floats() const { return page_tokens_ * row_dim_; }
  // Layer `layer`'s rows of page 0; page p's are page_floats() further.
  float* layer_base(int64_t layer) { return data_ + layer * layer_floats(); }
  int64_t bytes() const { return static_cast<int64_t>(bytes_); }

 private:
  int64_t n_layers_ = 0, row_dim_ = 0, page_tokens_ = 0, n_pages_ = 0;
  float* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace moeflow

#endif  // MOEFLOW_ENGINE_KV_PAGES_H_
