#include "decode/local_prefill.h"

#include <algorithm>

#include "common/status.h"

namespace latentserve::decode {

absl::StatusOr<LocalPrefillResult> PrefillWithCheckpoints(const model::Model& model, model::LatentCache& cache,
                                                          model::Sequence& sequence, absl::Span<const int32_t> tokens,
                                                          const LocalPrefillParams& params) {
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to prefill");
  RETURN_IF_ERROR(model.ValidateTokens(tokens));
  const int64_t chunk = params.chunk_tokens > 0 ? params.chunk_tokens : static_cast<int64_t>(tokens.size());
  const int64_t interval = params.checkpoint_interval_tokens;
  LocalPrefillResult result;
  cache::SequenceTable& table = sequence.table();
  int64_t done = 0;
  const int64_t total = static_cast<int64_t>(tokens.size());
  absl::Status status = [&]() -> absl::Status {
  while (done < total) {
    if (params.cancelled && params.cancelled()) return absl::CancelledError("request cancelled during prefill");
    const int64_t position = sequence.cached_tokens();
    int64_t count = std::min(chunk, total - done);
    // Stop the chunk at the next checkpoint position so the state there can be copied.
    if (interval > 0) count = std::min(count, (position / interval + 1) * interval - position);
    std::unique_lock<std::mutex> lock;
    if (params.backend_mu) lock = std::unique_lock<std::mutex>(*params.backend_mu);
    ASSIGN_OR_RETURN(std::vector<float> logits,
                     model.Prefill(sequence, tokens.subspan(done, count), cache, count, /*all_logits=*/false));
    done += count;
    const bool at_interval = interval > 0 && sequence.cached_tokens() % interval == 0;
    if (at_interval || done == total) {
      ASSIGN_OR_RETURN(std::unique_ptr<cache::KdaCheckpoint> checkpoint, table.Checkpoint(sequence));
      result.checkpoints.push_back(std::move(checkpoint));
    }
    if (done == total) result.last_logits = std::move(logits);
  }
  return absl::OkStatus();
  }();
  if (!status.ok()) {
    // Checkpoints are device memory: dropped under the backend lock like everything else.
    std::unique_lock<std::mutex> lock;
    if (params.backend_mu) lock = std::unique_lock<std::mutex>(*params.backend_mu);
    result.checkpoints.clear();
    return status;
  }
  return result;
}

}  // namespace latentserve::decode
