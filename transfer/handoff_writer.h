// The sending side of one cache handoff: chunking, order, integrity and accounting.
//
// The prefill worker says what is final (rows of a token range, KDA checkpoints at the positions
// the receiver asked for, then the final KDA state, then the first token); the writer cuts it into chunks of at most kMaxChunkBytes, in token order per
// MLA layer, and hands each to the transport: as a view of the cache when the transport moves
// views (in-process: no host copy, no checksum), else as bytes downloaded from the cache with
// their XXH64. End carries the chunk and byte totals the receiver checks.
//
// Byte transports: each chunk's rows are downloaded asynchronously into a staging block
// (transfer/staging_pool.h; pinned on CUDA), up to kDownloadsAhead chunks ahead of the one
// being hashed and handed over, so the copy engine fills the next blocks while the host hashes
// this one; the block itself goes to the transport (no copy into a string).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "cache/sequence_table.h"
#include "transfer/staging_pool.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// Fills the layout fields of a header (dtype, page size, row width and bytes, KDA state
// bytes) for handoffs out of `table`'s cache.
void DescribeLayout(const cache::SequenceTable& table, HandoffHeader* header);

class HandoffWriter {
 public:
  // Chunks whose downloads are enqueued before the oldest is handed over.
  static constexpr int kDownloadsAhead = 4;

  // `sender`: an open handoff whose header is `header` (DescribeLayout of the sequence's table).
  // `staging`: host blocks shared by the process's handoffs (on the sequence's backend); null:
  // the writer makes its own on first use (one pinned allocation per handoff).
  HandoffWriter(CacheSender& sender, const HandoffHeader& header, StagingPool* staging = nullptr);

  // Rows [first_token, first_token + count) of every MLA layer of `sequence`. Ranges must
  // follow each other from header.cached_tokens (FailedPrecondition otherwise); the transport's error ends
  // the handoff.
  absl::Status SendRows(const cache::Sequence& sequence, int64_t first_token, int64_t count);
  // Every KDA layer's state of `sequence`: its final state (position 0), or, with `position`,
  // a checkpoint the receiver asked for (the sequence must stand at exactly that many tokens,
  // inside (header.cached_tokens, header.prompt_tokens); FailedPrecondition otherwise), sent
  // before the final state.
  absl::Status SendKdaState(const cache::Sequence& sequence, int64_t position = 0);
  // Sends End and returns the payload bytes the receiver accepted.
  absl::StatusOr<int64_t> Finish(int32_t first_token);

  int64_t chunks() const { return chunks_; }
  int64_t payload_bytes() const { return payload_bytes_; }
  // Bytes this side copied through host memory (downloads for a byte transport; 0 for views).
  int64_t host_bytes() const { return host_bytes_; }

 private:
  StagingPool& Staging(kernels::Backend& backend);

  CacheSender& sender_;
  StagingPool* staging_;
  std::unique_ptr<StagingPool> own_staging_;
  const HandoffHeader header_;
  const bool views_;
  int64_t next_token_;
  int64_t chunks_ = 0;
  int64_t payload_bytes_ = 0;
  int64_t host_bytes_ = 0;
};

}  // namespace latentserve::transfer
