#include "transfer/checksum.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cache/page_pool.h"
#include "kernels/backend.h"

namespace latentserve::transfer {
namespace {

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 2654435761u >> 24);
  return s;
}

std::string Bytes256x4xyz() {
  std::string s;
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  return s + "xyz";
}

// Reference values from the system's libxxhash 0.8.1 (XXH64), not from this implementation.
TEST(Xxh64Test, KnownAnswers) {
  EXPECT_EQ(Xxh64(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(Xxh64("a"), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(Xxh64("abc"), 0x44bc2cf5ad770999ULL);
  EXPECT_EQ(Xxh64("0123456789abcdef0123456789abcdef"), 0x642a94958e71e6c5ULL);  // exactly one stripe
  EXPECT_EQ(Xxh64("Nobody inspects the spammish repetition"), 0xfbcea83c8a378bf1ULL);
  EXPECT_EQ(Xxh64(Bytes256x4xyz()), 0xe146cb31b65bc21aULL);  // stripes + 8/4/1-byte tails
  EXPECT_EQ(Xxh64(Pattern((1 << 20) + 13)), 0xf8e4ddaa10cea0e5ULL);  // a chunk-sized input
}

TEST(Xxh64Test, KnownAnswersWithSeed) {
  EXPECT_EQ(Xxh64("abc", 1), 0xbea9ca8199328908ULL);
  EXPECT_EQ(Xxh64(Bytes256x4xyz(), 0x9E3779B97F4A7C15ULL), 0x86b7211d04e93c1fULL);
}

TEST(Xxh64Test, StreamingMatchesOneShotForEverySplit) {
  const std::string data = Pattern(200);
  for (size_t n : {0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 65, 100, 200}) {
    const std::string_view whole(data.data(), n);
    for (size_t a = 0; a <= n; a += 5) {
      for (size_t b = a; b <= n; b += 7) {
        Xxh64Hasher h;
        h.Update(whole.substr(0, a));
        h.Update(whole.substr(a, b - a));
        h.Update(whole.substr(b));
        ASSERT_EQ(h.Digest(), Xxh64(whole)) << n << " split at " << a << "," << b;
      }
    }
  }
}

TEST(Xxh64Test, StreamingInOddPiecesOverAChunk) {
  const std::string data = Pattern((1 << 20) + 13);
  Xxh64Hasher h(7);
  for (size_t pos = 0, step = 1; pos < data.size(); pos += step, step = step * 3 % 65537 + 1) {
    h.Update(std::string_view(data).substr(pos, step));
  }
  EXPECT_EQ(h.Digest(), Xxh64(data, 7));
}

TEST(Xxh64Test, DetectsASingleFlippedBit) {
  std::string data = Pattern(1 << 20);
  const uint64_t good = Xxh64(data);
  for (size_t pos : {size_t{0}, size_t{12345}, data.size() - 1}) {
    data[pos] ^= 0x10;
    EXPECT_NE(Xxh64(data), good) << pos;
    data[pos] ^= 0x10;
  }
  EXPECT_EQ(Xxh64(data), good);
}

// The device transports' checksum of paged rows against a by-hand reference (rows read back,
// libxxhash per row, XXH64 over the hashes); it is not the gRPC path's whole-chunk XXH64.
TEST(RowsChecksumTest, PagedRowsChecksumIsXxh64OverPerRowXxh64s) {
  auto backend = *kernels::CreateBackend({"cpu", 1, 0});
  auto pool = *cache::PagePool::Create({2, 576}, *backend, {DType::kF16, 16, 8, false});
  std::vector<uint8_t> bytes(pool->pool(1).nbytes());
  std::mt19937 rng(3);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  backend->Upload(bytes.data(), bytes.size(), pool->pool(1), 0);
  const std::vector<int32_t> pages = {5, 1, 6};
  std::string rows;
  ASSERT_TRUE(pool->ExportRows(1, pages, 10, 30, &rows).ok());
  std::vector<uint64_t> row_hashes;
  for (size_t offset = 0; offset < rows.size(); offset += pool->row_bytes()) {
    row_hashes.push_back(Xxh64(std::string_view(rows).substr(offset, pool->row_bytes())));
  }
  auto checksum = PagedRowsChecksum(*pool, 1, pages, 10, 30);
  ASSERT_TRUE(checksum.ok()) << checksum.status();
  EXPECT_EQ(*checksum, RowsChecksum(row_hashes));
  EXPECT_EQ(*checksum, Xxh64(std::string_view(reinterpret_cast<const char*>(row_hashes.data()), row_hashes.size() * 8)));
  EXPECT_NE(*checksum, Xxh64(rows)) << "a scheme of its own, not the byte transports' checksum";
  EXPECT_EQ(PagedRowsChecksum(*pool, 1, pages, 40, 9).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PagedRowsChecksum(*pool, 2, pages, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace latentserve::transfer
