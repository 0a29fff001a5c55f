// KvPagePool: refcounts, publish/acquire by block hash, LRU eviction order.
#include "model/deepseek2/kv_pages.h"

#include <vector>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

TEST(KvPagePoolTest, LayoutAndCounts) {
  KvPagePool pool(/*n_layers=*/3, /*row_dim=*/5, /*page_tokens=*/4, /*n_pages=*/6);
  EXPECT_EQ(pool.layer_floats(), 20);
  EXPECT_EQ(pool.page_floats(), 60);
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
  KvPagePool pool(1, 2, 4, 3);
  const int32_t a = pool.Allocate(), b = pool.Allocate(), c = pool.Allocate();
  EXPECT_TRUE(pool.Publish(a, 11));
  EXPECT_TRUE(pool.Publish(b, 22));
  EXPECT_FALSE(pool.Publish(c, 11));  // hash taken by a
  EXPECT_FALSE(pool.Publish(a, 33));  // a already published
  EXPECT_EQ(pool.Acquire(11), a);
  EXPECT_EQ(pool.refcount(a), 2);
  EXPECT_EQ(pool.Acquire(44), -1);
  pool.Release(a);
  pool.Release(a);  // unreferenced, stays cached
  pool.Release(b);  // cached after a
  pool.Release(c);  // unpublished: free
  EXPECT_EQ(pool.cached_pages(), 2);
  EXPECT_EQ(pool.free_pages(), 1);
  EXPECT_EQ(pool.Find(22), b);
  // Acquire takes a cached page back out of the LRU list.
  EXPECT_EQ(pool.Acquire(22), b);
  EXPECT_EQ(pool.cached_pages(), 1);
  pool.Release(b);                // now b is the most recently released
  EXPECT_EQ(pool.Allocate(), c);  // free first
  EXPECT_EQ(pool.Allocate(), a);  // then the least recently released cached page
  EXPECT_EQ(pool.Find(11), -1);   // whose hash is forgotten
  EXPECT_EQ(pool.Find(22), b);
  EXPECT_EQ(pool.Allocate(), b);
  EXPECT_EQ(pool.Allocate(), -1);
}

TEST(KvPagePoolTest, BlockHashDependsOnTokensOrderAndPrefix) {
  const std::vector<int32_t> x = {1, 2, 3, 4}, y = {1, 2, 4, 3};
  const uint64_t hx = KvPagePool::BlockHash(0, x);
  EXPECT_EQ(hx, KvPagePool::BlockHash(0, x));
  EXPECT_NE(hx, KvPagePool::BlockHash(0, y));
  EXPECT_NE(KvPagePool::BlockHash(hx, x), KvPagePool::BlockHash(0, x));
  EXPECT_NE(KvPagePool::BlockHash(0, {1, 2, 3}), hx);
}

}  // namespace
}  // namespace moeflow
