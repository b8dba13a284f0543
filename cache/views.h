// Views of cache memory where it lies (no copy): what transfer/ moves between two caches,
// possibly of two backends, without going through a host string when the transport allows.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/page_pool.h"
#include "cache/sequence_table.h"
#include "kernels/backend.h"

namespace latentserve::cache {

// Latent rows of tokens [first_token, first_token + token_count) of one MLA layer of a
// sequence: in `pool`'s layer `mla_index`, addressed through the page table `pages`. Valid
// while the page table it points into is unchanged.
struct LatentRowsView {
  const PagePool* pool = nullptr;
  int64_t mla_index = 0;
  absl::Span<const int32_t> pages;
  int64_t first_token = 0;
  int64_t token_count = 0;
};

// KDA state of one KDA layer of a sequence on `backend`.
struct KdaStateRef {
  kernels::Backend* backend = nullptr;
  kernels::KdaStateView state;
};

LatentRowsView RowsOf(const Sequence& sequence, int64_t mla_index, int64_t first_token, int64_t token_count);
KdaStateRef KdaOf(const Sequence& sequence, int64_t kda_index);
KdaStateRef KdaOf(const KdaCheckpoint& checkpoint, int64_t kda_index);

// Copies the rows of `src` into the rows of `dst` (same token count, dtype and width; page
// sizes and backends may differ). Returns the bytes that went through host memory (0 when
// the backends copy directly: kernels::CopyBetween). InvalidArgument for a layout mismatch or
// a range outside either page table.
absl::StatusOr<int64_t> CopyRows(const LatentRowsView& src, const LatentRowsView& dst);
// Copies one KDA layer's state (same shapes) between backends; returns host bytes as above.
absl::StatusOr<int64_t> CopyKdaState(const KdaStateRef& src, const KdaStateRef& dst);

}  // namespace latentserve::cache
