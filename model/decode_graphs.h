// Decode steps replayed from a recording (a CUDA graph on the CUDA backend).
//
// A decode step is ~800 small operations; issuing them costs the host more time than the GPU
// needs to run them. DecodeGraphs records the step of a batch once and replays it for every
// later step of the same sequences: the token ids, positions and page tables the recording
// reads live in device buffers that are refreshed (one upload) before each replay. A batch of
// other sequences is recorded anew; backends that cannot record, batches that are not one
// token per sequence, and LATENTSERVE_CUDA_GRAPHS=0 run Model::Forward.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/thread_pool.h"
#include "model/latent_cache.h"
#include "model/model.h"

namespace latentserve::model {

class DecodeGraphs {
 public:
  DecodeGraphs(const Model& model, LatentCache& cache);
  ~DecodeGraphs();

  // Same contract as model.Forward(batch, cache) with default options, but the logits are a
  // view of this object's buffer, valid until the next Step or GreedyStep. A replayed step downloads them into
  // pinned memory kept from step to step, instead of a fresh pageable vector each step (21 MB
  // for a batch of 32). Measured at that batch, in two calls: the step's forward unchanged,
  // host sampling 1.72 -> 1.41 ms a step (docs/benchmarks.md, fifth session of 2026-12-03).
  absl::StatusOr<absl::Span<const float>> Step(absl::Span<const BatchEntry> batch);
  // The same step for rows that all decode greedily (one token a sequence, no all_logits):
  // each sequence's next token, Argmax of its logits, valid until the next step. A replayed
  // step finds them on the device (every recording ends with Backend::ArgmaxRows, a few
  // microseconds that sampled steps pay too) and downloads a token a row instead of the
  // logits; an unrecorded step takes Argmax of its host logits, rows in parallel on `pool`
  // when given.
  absl::StatusOr<absl::Span<const int32_t>> GreedyStep(absl::Span<const BatchEntry> batch,
                                                       kernels::cpu::ThreadPool* pool = nullptr);

  int64_t recordings() const { return recordings_; }
  int64_t replays() const { return replays_; }
  // Why recording is off (empty while it is on).
  const std::string& disabled_reason() const { return disabled_; }

 private:
  struct Recording;
  // What a recording depends on besides its inputs: the sequences' state addresses.
  std::vector<const void*> KeyOf(absl::Span<const BatchEntry> batch) const;
  absl::Status Record(absl::Span<const BatchEntry> batch, int64_t stride);
  // Runs the step: replays a recording (returned) or, where the step cannot be recorded, runs
  // Model::Forward into forward_logits_ (returns null).
  absl::StatusOr<Recording*> Run(absl::Span<const BatchEntry> batch);

  const Model& model_;
  LatentCache& cache_;
  std::unique_ptr<Recording> current_;
  kernels::Backend::HostMemory logits_;  // a replayed step's logits (pinned where the backend can)
  std::vector<float> forward_logits_;    // an unrecorded step's
  kernels::Backend::HostMemory tokens_;  // a replayed greedy step's tokens (pinned where it can)
  std::vector<int32_t> forward_tokens_;  // an unrecorded greedy step's
  std::string disabled_;
  int64_t recordings_ = 0, replays_ = 0;
};

}  // namespace latentserve::model
