// Backend::HashPagedRows on the CPU backend against a straightforward reference (libxxhash's
// XXH64 of each row, rows found through the page table by hand), for every cache dtype's row
// size (aligned and odd), rows across page boundaries and tails of every length; and the
// argument checks. kernels/xxh64.h against libxxhash directly, for lengths 0..200.
#include <xxhash.h>

#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/xxh64.h"

namespace latentserve::kernels {
namespace {

TEST(Xxh64, MatchesLibxxhashForEveryLengthAndAlignment) {
  std::vector<uint8_t> bytes(256 + 8);
  std::mt19937 rng(7);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; offset += 3) {
    for (size_t len = 0; len <= 200; ++len) {
      EXPECT_EQ(xxh64::Hash(bytes.data() + offset, len), XXH64(bytes.data() + offset, len, 0))
          << "length " << len << " offset " << offset;
    }
  }
  EXPECT_EQ(xxh64::Hash(bytes.data(), 100, 12345), XXH64(bytes.data(), 100, 12345)) << "a seed";
}

class RowHash : public ::testing::TestWithParam<std::pair<DType, int64_t>> {};

TEST_P(RowHash, CpuBackendMatchesLibxxhashPerRow) {
  const auto [dtype, width] = GetParam();
  auto backend = *CreateBackend({"cpu", 1, 0});
  const int64_t page_tokens = 16, pool_pages = 9;
  Tensor pool = *backend->Alloc(dtype, {width, page_tokens, pool_pages, 1});
  std::vector<uint8_t> bytes(pool.nbytes());
  std::mt19937 rng(static_cast<uint32_t>(width));
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  backend->Upload(bytes.data(), bytes.size(), pool, 0);
  const std::vector<int32_t> table = {7, 2, 8, 0, 5};  // out of order, as a lease's pages are
  const size_t row_bytes = pool.row_bytes();
  for (auto [first, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 80}, {13, 30}, {16, 16}, {79, 1}, {5, 0}}) {
    std::vector<uint64_t> got(count + 1, 0xdeadbeef);
    ASSERT_TRUE(backend->HashPagedRows(pool, table, first, count, got.data()).ok());
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = first + i;
      const size_t slot = static_cast<size_t>(table[t / page_tokens] * page_tokens + t % page_tokens);
      EXPECT_EQ(got[i], XXH64(bytes.data() + slot * row_bytes, row_bytes, 0)) << "token " << t;
    }
    EXPECT_EQ(got[count], 0xdeadbeefu) << "nothing written past count";
  }
}

// f16 576 (the model's 1152-byte rows), f32, bf16, q8_0 (612-byte rows: not 8-byte aligned),
// q4_0, and widths whose rows leave tails of 8, 4+2 and 1..31 bytes.
INSTANTIATE_TEST_SUITE_P(Dtypes, RowHash,
                         ::testing::Values(std::make_pair(DType::kF16, 576), std::make_pair(DType::kF32, 64),
                                           std::make_pair(DType::kBF16, 20), std::make_pair(DType::kQ8_0, 576),
                                           std::make_pair(DType::kQ4_0, 32), std::make_pair(DType::kF16, 3),
                                           std::make_pair(DType::kF16, 35)));

TEST(RowHashChecks, RowsOutsideTheTableOrPagesOutsideThePoolAreRefused) {
  auto backend = *CreateBackend({"cpu", 1, 0});
  Tensor pool = *backend->Alloc(DType::kF16, {8, 4, 3, 1});
  uint64_t out[16];
  const std::vector<int32_t> table = {0, 2};
  EXPECT_EQ(backend->HashPagedRows(pool, table, 0, 9, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend->HashPagedRows(pool, table, -1, 2, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend->HashPagedRows(pool, table, 0, -1, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend->HashPagedRows(pool, table, INT64_MAX, INT64_MAX, out).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad = {0, 3};
  EXPECT_EQ(backend->HashPagedRows(pool, bad, 0, 8, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(backend->HashPagedRows(pool, bad, 0, 4, out).ok()) << "only the pages the rows touch are read";
}

}  // namespace
}  // namespace latentserve::kernels
