// Prefill on the decode worker itself: the suffix of a prompt that resumed from a cached
// prefix (or a short prompt), without a prefill worker or a handoff. It runs in chunks, the
// backend lock taken per chunk so the decode batch keeps stepping between them, and takes a
// KDA checkpoint wherever the sequence crosses a multiple of the checkpoint interval and at
// the prompt's end (the prefix cache keeps them).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/sequence_table.h"
#include "model/model.h"

namespace latentserve::decode {

struct LocalPrefillParams {
  int64_t chunk_tokens = 512;                // tokens per forward pass
  int64_t checkpoint_interval_tokens = 0;    // checkpoint at multiples of this position; 0: end only
  std::mutex* backend_mu = nullptr;          // taken around each chunk's device work (may be null)
  std::function<bool()> cancelled;           // polled between chunks (may be empty)
};

struct LocalPrefillResult {
  std::vector<float> last_logits;                                 // of the prompt's last token
  std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints;  // ascending, the last at the end
};

// Appends `tokens` to `sequence` (whose cached_tokens() rows are already there). Cancelled when
// `cancelled` says so between chunks; the sequence is then part-way and should be dropped.
absl::StatusOr<LocalPrefillResult> PrefillWithCheckpoints(const model::Model& model, model::LatentCache& cache,
                                                          model::Sequence& sequence, absl::Span<const int32_t> tokens,
                                                          const LocalPrefillParams& params);

}  // namespace latentserve::decode
