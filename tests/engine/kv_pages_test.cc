// KvPagePool: refcounts, publish/acquire by block hash verified against the
// block's tokens and parent (collisions miss), LRU eviction order.
#include "engine/kv_pages.h"

#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

TEST(KvPagePoolTest, LayoutAndCounts) {
  KvPagePool pool(/*page_tokens=*/4, /*n_pages=*/6);
  KvPageMemory memory(/*n_layers=*/3, /*row_dim=*/5, /*page_tokens=*/4, /*n_pages=*/6);
  EXPECT_EQ(memory.layer_floats(), 20);
  EXPECT_EQ(memory.page_floats(), 60);
  EXPECT_EQ(memory.layer_base(2) - memory.layer_base(0), 40);
  EXPECT_EQ(pool.free_pages(), 6);
  EXPECT_EQ(pool.available_pages(), 6);
  std::vector<int32_t> got;
  for (int i = 0; i < 6; ++i) got.push_back(pool.Allocate());
  EXPECT_EQ(pool.Allocate(), -1);
  EXPECT_EQ(pool.referenced_pages(), 6);
  for (int32_t p : got) EXPECT_EQ(pool.refcount(p), 1);
  pool.Release(got[2]);
  EXPECT_EQ(pool.free_pages(), 1);
  EXPECT_EQ(pool.Allocate(), got[2]);
}

TEST(KvPagePoolTest, PublishedPagesAreSharedCachedAndEvictedLeastRecentFirst) {
  KvPagePool pool(4, 3);
  const std::vector<int32_t> ta = {1, 2, 3, 4}, tb = {5, 6, 7, 8}, tc = {9, 9, 9, 9};
  const int32_t a = pool.Allocate(), b = pool.Allocate(), c = pool.Allocate();
  const uint64_t sa = pool.Publish(a, 11, 0, ta);
  EXPECT_NE(sa, 0u);
  EXPECT_EQ(pool.serial(a), sa);
  const uint64_t sb = pool.Publish(b, 22, sa, tb);
  EXPECT_NE(sb, 0u);
  EXPECT_NE(sb, sa);
  EXPECT_EQ(pool.Publish(c, 11, 0, ta), sa);  // same prefix already published: a's serial
  EXPECT_EQ(pool.serial(c), 0u);              // and c stays unpublished
  EXPECT_EQ(pool.Publish(a, 33, 0, tc), 0u);  // a already published
  EXPECT_EQ(pool.Acquire(11, 0, ta), a);
  EXPECT_EQ(pool.refcount(a), 2);
  EXPECT_EQ(pool.Acquire(44, 0, ta), -1);
  pool.Release(a);
  pool.Release(a);  // unreferenced, stays cached
  pool.Release(b);  // cached after a
  pool.Release(c);  // unpublished: free
  EXPECT_EQ(pool.cached_pages(), 2);
  EXPECT_EQ(pool.free_pages(), 1);
  EXPECT_EQ(pool.Find(22, sa, tb), b);
  // Acquire takes a cached page back out of the LRU list.
  EXPECT_EQ(pool.Acquire(22, sa, tb), b);
  EXPECT_EQ(pool.cached_pages(), 1);
  pool.Release(b);                      // now b is the most recently released
  EXPECT_EQ(pool.Allocate(), c);        // free first
  EXPECT_EQ(pool.Allocate(), a);        // then the least recently released cached page
  EXPECT_EQ(pool.Find(11, 0, ta), -1);  // whose hash is forgotten
  EXPECT_EQ(pool.serial(a), 0u);
  EXPECT_EQ(pool.Find(22, sa, tb), b);
  EXPECT_EQ(pool.Allocate(), b);
  EXPECT_EQ(pool.Allocate(), -1);
}

TEST(KvPagePoolTest, HashCollisionIsAMissNotAReuse) {
  KvPagePool pool(4, 4);
  const std::vector<int32_t> x = {1, 2, 3, 4}, y = {1, 2, 3, 5};
  const int32_t a = pool.Allocate();
  const uint64_t sa = pool.Publish(a, 7, 0, x);
  ASSERT_NE(sa, 0u);
  // Another block under the same hash (a forced collision): not found, not
  // acquired, and it cannot be published over a.
  EXPECT_EQ(pool.Find(7, 0, y), -1);
  EXPECT_EQ(pool.Acquire(7, 0, y), -1);
  EXPECT_EQ(pool.refcount(a), 1);
  const int32_t b = pool.Allocate();
  EXPECT_EQ(pool.Publish(b, 7, 0, y), 0u);
  EXPECT_EQ(pool.serial(b), 0u);
  // The same block after another prefix (parent) is a miss too, even when
  // the chained hash collides.
  const int32_t c = pool.Allocate();
  const uint64_t sc = pool.Publish(c, 8, sa, x);
  ASSERT_NE(sc, 0u);
  EXPECT_EQ(pool.Find(8, sa, x), c);
  EXPECT_EQ(pool.Find(8, sa + 100, x), -1);
  EXPECT_EQ(pool.Find(8, 0, x), -1);
  // An evicted and republished parent gets a new serial, so children
  // published under the old one no longer match it.
  pool.Release(a);
  pool.Release(b);
  pool.Release(c);
  while (pool.free_pages() > 0) pool.Allocate();
  const int32_t evicted = pool.Allocate();  // a: the least recently released cached page
  EXPECT_EQ(evicted, a);
  EXPECT_EQ(pool.Find(7, 0, x), -1);
  const uint64_t sa2 = pool.Publish(a, 7, 0, x);
  EXPECT_NE(sa2, 0u);
  EXPECT_NE(sa2, sa);
  EXPECT_EQ(pool.Find(8, sa2, x), -1);
}

TEST(KvPagePoolTest, InjectedHashIsUsed) {
  KvPagePool pool(4, 2);
  const std::vector<int32_t> x = {1, 2, 3, 4};
  EXPECT_EQ(pool.Hash(0, x), KvPagePool::BlockHash(0, x));
  pool.set_hash_for_testing(
      +[](uint64_t previous, absl::Span<const int32_t>) -> uint64_t { return previous + 1; });
  EXPECT_EQ(pool.Hash(0, x), 1u);
  EXPECT_EQ(pool.Hash(41, {9, 9, 9, 9}), 42u);
}

TEST(KvPagePoolTest, BlockHashDependsOnTokensOrderAndPrefix) {
  const std::vector<int32_t> x = {1, 2, 3, 4}, y = {1, 2, 4, 3};
  const uint64_t hx = KvPagePool::BlockHash(0, x);
  EXPECT_EQ(hx, KvPagePool::BlockHash(0, x));
  EXPECT_NE(hx, KvPagePool::BlockHash(0, y));
  EXPECT_NE(KvPagePool::BlockHash(hx, x), KvPagePool::BlockHash(0, x));
  EXPECT_NE(KvPagePool::BlockHash(0, {1, 2, 3}), hx);
}

// After the memory behind the pages is lost, no published block is found
// again, cached pages are free, and referenced ones stay referenced.
TEST(KvPagePoolTest, ForgetPublishedDropsEveryBlock) {
  KvPagePool pool(4, 3);
  const std::vector<int32_t> ta = {1, 2, 3, 4}, tb = {5, 6, 7, 8};
  const int32_t a = pool.Allocate(), b = pool.Allocate();
  const uint64_t ha = KvPagePool::BlockHash(0, ta), hb = KvPagePool::BlockHash(0, tb);
  ASSERT_NE(pool.Publish(a, ha, 0, ta), 0u);
  ASSERT_NE(pool.Publish(b, hb, 0, tb), 0u);
  pool.Release(a);  // a cached, b referenced
  EXPECT_EQ(pool.cached_pages(), 1);
  pool.ForgetPublished();
  EXPECT_EQ(pool.cached_pages(), 0);
  EXPECT_EQ(pool.free_pages(), 2);
  EXPECT_EQ(pool.refcount(b), 1);
  EXPECT_EQ(pool.Find(ha, 0, ta), -1);
  EXPECT_EQ(pool.Find(hb, 0, tb), -1);
  pool.Release(b);
  EXPECT_EQ(pool.free_pages(), 3);
}

}  // namespace
}  // namespace moeflow
