// transfer::StagingPool: blocks are recycled, the pool never blocks (heap fallback when empty
// or asked for more than a block), and a block held past the pool's end stays valid.
#include "transfer/staging_pool.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace latentserve::transfer {
namespace {

class StagingPoolTest : public ::testing::Test {
 protected:
  std::unique_ptr<kernels::Backend> backend_ = *kernels::CreateBackend({"cpu", 1, 0});
};

TEST_F(StagingPoolTest, BlocksAreRecycled) {
  StagingOptions options;
  options.block_bytes = 4096;
  options.blocks = 2;
  StagingPool pool(*backend_, options);
  HostBytes a = *pool.Acquire(4096);
  const uint8_t* first = a.data;
  HostBytes b = *pool.Acquire(100);
  EXPECT_NE(a.data, b.data);
  EXPECT_EQ(pool.counts().in_use, 2);
  EXPECT_EQ(pool.counts().capacity, 2);
  EXPECT_EQ(b.size, 100u);
  a = {};
  EXPECT_EQ(pool.counts().in_use, 1);
  HostBytes c = *pool.Acquire(10);
  EXPECT_EQ(c.data, first) << "the freed block comes back";
  EXPECT_EQ(pool.counts().fallbacks, 0);
}

TEST_F(StagingPoolTest, EmptyOrTooSmallFallsBackToTheHeap) {
  StagingOptions options;
  options.block_bytes = 1024;
  options.blocks = 1;
  StagingPool pool(*backend_, options);
  HostBytes held = *pool.Acquire(1024);
  HostBytes more = *pool.Acquire(1024);  // pool empty: heap, not a wait
  HostBytes big = *pool.Acquire(5000);   // larger than a block
  EXPECT_EQ(pool.counts().fallbacks, 2);
  EXPECT_EQ(pool.counts().in_use, 1);
  std::memset(more.data, 1, more.size);
  std::memset(big.data, 2, big.size);
  EXPECT_EQ(big.size, 5000u);
}

TEST_F(StagingPoolTest, ABlockOutlivesThePool) {
  HostBytes kept;
  {
    StagingOptions options;
    options.block_bytes = 256;
    options.blocks = 4;
    StagingPool pool(*backend_, options);
    kept = *pool.Acquire(256);
  }
  std::memset(kept.data, 7, kept.size);  // still mapped: the holder keeps the slab
  EXPECT_EQ(kept.data[255], 7);
  kept = {};  // returns the block to a pool nobody uses any more; frees the slab
}

TEST_F(StagingPoolTest, NoBlocksMeansHeapOnly) {
  StagingOptions options;
  options.blocks = 0;
  StagingPool pool(*backend_, options);
  HostBytes bytes = *pool.Acquire(64);
  EXPECT_EQ(pool.counts().capacity, 0);
  EXPECT_EQ(pool.counts().fallbacks, 1);
  EXPECT_NE(bytes.data, nullptr);
}

}  // namespace
}  // namespace latentserve::transfer
