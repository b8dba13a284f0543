// The prefill worker's engine side (no gRPC): chunked prefill that streams each chunk's
// latent rows to the decode worker as soon as they are final, then the KDA states and the
// first sampled token. One prefill runs at a time (it uses every core); others queue, and
// the queue's cost (sum of prompt_tokens^2) is what the router balances on.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/sequence_table.h"
#include "model/latent_cache.h"
#include "model/model.h"
#include "model/sampler.h"
#include "transfer/staging_pool.h"
#include "transfer/transport.h"

namespace latentserve::prefill {

struct PrefillJob {
  std::string request_id;
  std::string lease_id;       // on the decode worker
  std::string decode_worker;  // host:port
  std::vector<int32_t> tokens;
  model::SamplingParams sampling;  // for the first token
  absl::Time deadline = absl::InfiniteFuture();
  std::string transport;  // the router's choice: "cuda-ipc", "nccl", else gRPC
  // The lease's cached prefix on the decode worker: rows [0, cached_tokens) are there. The job
  // reads them (and the KDA state there) to compute only the rest; either way it hands off
  // rows from cached_tokens on.
  int64_t cached_tokens = 0;
  // The decode worker's ask: chunks end at every multiple of this in (cached_tokens, prompt end)
  // and the KDA state there is handed off as a checkpoint before the final state. 0: none.
  int64_t checkpoint_interval_tokens = 0;
};

struct PrefillProgressEvent {
  int64_t tokens_done = 0;
  int64_t tokens_total = 0;
  int64_t cache_bytes_sent = 0;
};

struct PrefillResult {
  int32_t first_token = -1;
  double prefill_ms = 0;        // compute, first chunk to last
  int64_t cache_bytes = 0;      // latent rows + KDA state sent
  int64_t host_bytes = 0;       // of which this side copied through host memory (0 in process)
  double transfer_tail_ms = 0;  // last chunk computed -> decode worker acknowledged
  std::string transport;        // what moved the cache ("grpc", "cuda-ipc", "nccl", "inproc")
  int64_t device_bytes = 0;     // of cache_bytes, written device to device
  double device_copy_ms = 0;    // the device copies of those bytes, enqueued to complete
  int64_t resumed_tokens = 0;   // prompt tokens read from the decode worker's prefix, not computed
  double prefix_read_ms = 0;    // that read
  std::string resume_error;     // why a prefix the job named was computed instead (empty: read, or none)
  int64_t checkpoints_sent = 0; // KDA checkpoints handed off inside the prompt
};

struct PrefillStats {
  int64_t pages_free = 0;
  int64_t pages_total = 0;
  int64_t page_tokens = 0;
  int64_t jobs_active = 0;        // running + queued
  double outstanding_cost = 0;    // sum of prompt_tokens^2 over those jobs
  bool draining = false;
  int64_t handoff_host_bytes = 0;  // bytes handoffs copied through host memory here, in all
};

class PrefillWorker {
 public:
  PrefillWorker(const model::Model& model, model::LatentCache& cache, transfer::CacheTransport& transport,
                std::string fingerprint, int64_t chunk_tokens);

  // Runs one job. `on_progress` after every chunk; `cancelled` is polled between chunks.
  // On error, *transfer_failed tells whether the handoff (not this worker) failed.
  absl::StatusOr<PrefillResult> Run(const PrefillJob& job,
                                    const std::function<void(const PrefillProgressEvent&)>& on_progress,
                                    const std::function<bool()>& cancelled, bool* transfer_failed);

  PrefillStats Stats() const;
  void StartDrain();
  // Testing only (--fault-stall-transfer-ms): hold every handoff this long before its KDA
  // state and End, as a stuck link would. Cancellation and the deadline still end it.
  void SetFaultStallTransfer(absl::Duration stall) { fault_stall_transfer_ = stall; }
  // Prefix reads for jobs with cached_tokens (transfer/prefix_stream.h); `max_bytes` bounds one
  // read (latent rows + KDA state): a larger prefix is computed here instead. Null: never read.
  void SetPrefixReader(transfer::PrefixReader* reader, int64_t max_bytes) {
    prefix_reader_ = reader;
    prefix_read_max_bytes_ = max_bytes;
  }
  const std::string& fingerprint() const { return fingerprint_; }
  int64_t max_context_tokens() const { return cache_.total_pages() * cache_.page_tokens(); }

 private:
  absl::StatusOr<PrefillResult> RunLocked(const PrefillJob& job,
                                          const std::function<void(const PrefillProgressEvent&)>& on_progress,
                                          const std::function<bool()>& cancelled, bool* transfer_failed);
  // prefix_resume.cc: reads the job's cached prefix into `sequence` (empty on entry); on any
  // error `sequence` is left empty again and the caller computes the whole prompt.
  absl::Status LoadPrefix(const PrefillJob& job, model::Sequence& sequence, const std::function<bool()>& cancelled);

  const model::Model& model_;
  model::LatentCache& cache_;
  cache::SequenceTable sequences_;  // the sequence being prefilled (one at a time)
  transfer::CacheTransport& transport_;
  // Host blocks (pinned on CUDA) that byte handoffs download rows into; shared by every handoff.
  transfer::StagingPool staging_;
  const std::string fingerprint_;
  const int64_t chunk_tokens_;
  absl::Duration fault_stall_transfer_ = absl::ZeroDuration();
  transfer::PrefixReader* prefix_reader_ = nullptr;
  int64_t prefix_read_max_bytes_ = 0;
  std::mutex device_mu_;  // the prefix read's imports (one job runs at a time: never contended)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;
  int64_t jobs_active_ = 0;
  double outstanding_cost_ = 0;
  bool draining_ = false;
  int64_t handoff_host_bytes_ = 0;
};

}  // namespace latentserve::prefill
