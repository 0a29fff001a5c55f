#include "engine/kv_pages.h"

#include <sys/mman.h>

#include <utility>

#include "base/check.h"

namespace moeflow {

KvPagePool::KvPagePool(int64_t page_tokens, int64_t n_pages)
    : page_tokens_(page_tokens), n_pages_(n_pages) {
  MOEFLOW_CHECK(page_tokens > 0 && n_pages > 0);
  MOEFLOW_CHECK(n_pages < (int64_t{1} << 31));
  pages_.resize(static_cast<size_t>(n_pages));
  free_.reserve(static_cast<size_t>(n_pages));
  for (int64_t p = n_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

int32_t KvPagePool::Allocate() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    id = lru_.front();
    lru_.pop_front();
    Page& evicted = pages_[static_cast<size_t>(id)];
    by_hash_.erase(evicted.hash);
    evicted.hashed = false;
    evicted.serial = 0;
    evicted.parent = 0;
    evicted.tokens.clear();
  } else {
    return -1;
  }
  pages_[static_cast<size_t>(id)].refs = 1;
  return id;
}

int32_t KvPagePool::Find(uint64_t hash, uint64_t parent, absl::Span<const int32_t> tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Page& p = pages_[static_cast<size_t>(it->second)];
  // The hash may collide: the prefix matches only if the parent and the
  // block's tokens do.
  if (p.parent != parent || absl::MakeConstSpan(p.tokens) != tokens) return -1;
  return it->second;
}

int32_t KvPagePool::Acquire(uint64_t hash, uint64_t parent, absl::Span<const int32_t> tokens) {
  const int32_t id = Find(hash, parent, tokens);
  if (id < 0) return -1;
  Page& p = pages_[static_cast<size_t>(id)];
  if (p.refs == 0) lru_.erase(p.lru);
  ++p.refs;
  return id;
}

void KvPagePool::ForgetPublished() {
  for (int32_t id : lru_) free_.push_back(id);
  lru_.clear();
  by_hash_.clear();
  for (Page& p : pages_) {
    p.hashed = false;
    p.serial = 0;
    p.parent = 0;
    p.tokens.clear();
  }
}

void KvPagePool::Release(int32_t id) {
  MOEFLOW_CHECK(id >= 0 && id < n_pages_);
  Page& p = pages_[static_cast<size_t>(id)];
  MOEFLOW_CHECK(p.refs > 0);
  if (--p.refs > 0) return;
  if (p.hashed) {
    p.lru = lru_.insert(lru_.end(), id);
  } else {
    free_.push_back(id);
  }
}

uint64_t KvPagePool::Publish(int32_t id, uint64_t hash, uint64_t parent,
                             absl::Span<const int32_t> tokens) {
  MOEFLOW_CHECK(id >= 0 && id < n_pages_);
  MOEFLOW_CHECK(static_cast<int64_t>(tokens.size()) == page_tokens_);
  Page& p = pages_[static_cast<size_t>(id)];
  MOEFLOW_CHECK(p.refs > 0);
  if (p.hashed) return 0;
  auto it = by_hash_.find(hash);
  if (it != by_hash_.end()) {
    // Same prefix already published (its serial names ours too), or a
    // collision (no serial: the chain stops here).
    const int32_t holder = Find(hash, parent, tokens);
    return holder < 0 ? 0 : pages_[static_cast<size_t>(holder)].serial;
  }
  p.hashed = true;
  p.hash = hash;
  p.serial = next_serial_++;
  p.parent = parent;
  p.tokens.assign(tokens.begin(), tokens.end());
  by_hash_[hash] = id;
  return p.serial;
}

uint64_t KvPagePool::BlockHash(uint64_t previous, absl::Span<const int32_t> tokens) {
  constexpr uint64_t kFnvPrime = 1099511628211ull;
  uint64_t h = 14695981039346656037ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= kFnvPrime;
    }
  };
  mix(previous);
  mix(tokens.size());
  for (int32_t t : tokens) mix(static_cast<uint32_t>(t));
  // splitmix64's finaliser.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

KvPageMemory::KvPageMemory(int64_t n_layers, int64_t row_dim, int64_t page_tokens, int64_t n_pages)
    : n_layers_(n_layers), row_dim_(row_dim), page_tokens_(page_tokens), n_pages_(n_pages) {
  bytes_ = static_cast<size_t>(n_pages * page_floats()) * sizeof(float);
  if (bytes_ == 0) return;
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  MOEFLOW_CHECK(p != MAP_FAILED);
  data_ = static_cast<float*>(p);
}

KvPageMemory::~KvPageMemory() {
  if (data_ != nullptr) munmap(data_, bytes_);
}

KvPageMemory& KvPageMemory::operator=(KvPageMemory&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) munmap(data_, bytes_);
    n_layers_ = other.n_layers_;
    row_dim_ = other.row_dim_;
    page_tokens_ = other.page_tokens_;
    n_pages_ = other.n_pages_;
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

}  // namespace moeflow
