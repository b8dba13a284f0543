#include "transfer/checksum.h"

#include <xxhash.h>

#include <new>
#include <string>
#include <vector>

#include "cache/page_pool.h"
#include "common/status.h"

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed) { return XXH64(bytes.data(), bytes.size(), seed); }

uint64_t RowsChecksum(absl::Span<const uint64_t> row_hashes) {
  return XXH64(row_hashes.data(), row_hashes.size() * sizeof(uint64_t), 0);
}

absl::StatusOr<uint64_t> PagedRowsChecksum(const cache::PagePool& pool, int64_t mla_index,
                                           absl::Span<const int32_t> page_table, int64_t first_token, int64_t count) {
  RETURN_IF_ERROR(pool.CheckRange(mla_index, page_table, first_token, count));
  std::vector<uint64_t> row_hashes(static_cast<size_t>(count));
  absl::Status on_device =
      pool.backend().HashPagedRows(pool.pool(mla_index), page_table, first_token, count, row_hashes.data());
  if (on_device.code() == absl::StatusCode::kUnimplemented) {
    std::string rows;
    RETURN_IF_ERROR(pool.ExportRows(mla_index, page_table, first_token, count, &rows));
    const size_t row_bytes = pool.row_bytes();
    for (size_t i = 0; i < row_hashes.size(); ++i) row_hashes[i] = XXH64(rows.data() + i * row_bytes, row_bytes, 0);
  } else if (!on_device.ok()) {
    return on_device;
  }
  return RowsChecksum(row_hashes);
}

void Xxh64Hasher::FreeState::operator()(XXH64_state_s* state) const { XXH64_freeState(state); }

Xxh64Hasher::Xxh64Hasher(uint64_t seed) : state_(XXH64_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH64_reset(state_.get(), seed);
}

Xxh64Hasher::~Xxh64Hasher() = default;
Xxh64Hasher::Xxh64Hasher(Xxh64Hasher&&) noexcept = default;
Xxh64Hasher& Xxh64Hasher::operator=(Xxh64Hasher&&) noexcept = default;

void Xxh64Hasher::Update(std::string_view bytes) { XXH64_update(state_.get(), bytes.data(), bytes.size()); }

uint64_t Xxh64Hasher::Digest() const { return XXH64_digest(state_.get()); }

}  // namespace latentserve::transfer
