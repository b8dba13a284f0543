// Per-chunk checksums of the cache handoff: XXH64 (xxHash's 64-bit variant, seed 0) from the
// packaged libxxhash (Debian libxxhash-dev). It reads 32 bytes per round with four independent
// lanes, so it runs at several GB/s on one core and costs little next to gRPC's own copies; a
// 64-bit hash also makes an undetected corrupted chunk far less likely than CRC32's 2^-32.
//
// Xxh64Hasher computes the same value over bytes that arrive in pieces (gRPC slices), so a
// chunk can be verified without first gathering it into one buffer.
//
// Device transports (LatentRowsWritten.checksum) use a checksum that parallelises: XXH64 of
// each latent row (seed 0, row_bytes bytes), computed where the rows are (kernels::Backend::
// HashPagedRows: a GPU kernel on the sender's pages before the copy and on the receiver's
// pages after it), then XXH64 over the array of row hashes (8 bytes each, little endian, in
// token order) on the host. Only 8 bytes per row leave the device. A corrupted row goes
// undetected only if its row hash collides (as likely as for XXH64 of the whole chunk); rows
// swapped, dropped or duplicated change the array and with it the outer hash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace latentserve::cache {
class PagePool;
}

struct XXH64_state_s;

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed = 0);

// XXH64 over the row hashes (the second step of the device transports' checksum).
uint64_t RowsChecksum(absl::Span<const uint64_t> row_hashes);

// The device transports' checksum of tokens [first_token, +count) of one MLA layer of a
// sequence with `page_table` in `pool`: on the pool's backend when it hashes rows, else from
// the rows read back to the host (the same value either way).
absl::StatusOr<uint64_t> PagedRowsChecksum(const cache::PagePool& pool, int64_t mla_index,
                                           absl::Span<const int32_t> page_table, int64_t first_token, int64_t count);

class Xxh64Hasher {
 public:
  explicit Xxh64Hasher(uint64_t seed = 0);
  ~Xxh64Hasher();
  Xxh64Hasher(Xxh64Hasher&&) noexcept;
  Xxh64Hasher& operator=(Xxh64Hasher&&) noexcept;
  void Update(std::string_view bytes);
  // The hash of everything passed to Update so far (the hasher may keep going).
  uint64_t Digest() const;

 private:
  struct FreeState {
    void operator()(XXH64_state_s* state) const;
  };
  std::unique_ptr<XXH64_state_s, FreeState> state_;
};

}  // namespace latentserve::transfer
