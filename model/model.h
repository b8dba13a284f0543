// The Kimi-Linear forward pass over a batch of sequences, on any kernels::Backend.
//
// A batch is a list of (sequence, new tokens). Prefill is a batch of one sequence with a
// chunk of its prompt (KDA in chunked form); a decode step is a batch of many sequences with
// one token each (KDA recurrence). Either way, new latent rows go to the paged cache and each
// sequence's KDA state advances.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/gguf/gguf.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/latent_cache.h"
#include "model/sequence.h"
#include "model/weights.h"

namespace latentserve::model {

struct BatchEntry {
  Sequence* sequence = nullptr;
  absl::Span<const int32_t> tokens;
  bool all_logits = false;  // logits for every new token, else only for the last
};

// Seconds spent per part of the forward pass (host clock around Synchronize()). Filling it
// synchronises after every part, so it is for diagnosis only, never for serving.
struct ForwardProfile {
  // Per part, with a device synchronise at each boundary (only when `parts` is on).
  double embed = 0, kda = 0, mla = 0, ffn_dense = 0, moe = 0, norms = 0, head = 0;
  // Host time to issue the whole forward up to the logits download, then the time spent
  // waiting in that download for the device to finish. wait ~ 0: the host is the bottleneck
  // (launch overhead); enqueue small and wait large: the device is.
  double enqueue = 0, wait = 0;
  int64_t forwards = 0;
};

struct ForwardOptions {
  int64_t kda_chunk_tokens = 64;  // chunked KDA when a sequence has > 1 new token; 0 = recurrence
  ForwardProfile* profile = nullptr;  // when set, time the forward
  bool profile_parts = true;          // ... and each part (synchronising between them)
};

// What a recorded decode step reads from device memory (model/decode_graphs.h): the token ids
// [B] and, for the MLA layers, positions and page tables.
struct DecodeStepInputs {
  kernels::Tensor ids;  // i32 [B]
  kernels::DeviceStep device;
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& path, kernels::Backend& backend);
  // A model of `config`'s shape with random weights made on the backend (no file).
  static absl::StatusOr<std::unique_ptr<Model>> Random(const ModelConfig& config, kernels::Backend& backend,
                                                       DType matrix_type, uint64_t seed);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  kernels::Backend& backend() const { return backend_; }
  const gguf::File* file() const { return file_.get(); }  // null for random weights
  int64_t vocab() const { return config_.vocab; }

  // Shapes of one sequence's KDA state, for the cache::SequenceTable that holds sequences.
  cache::KdaLayout kda_layout() const;
  // Bytes of one sequence's KDA state (recurrent matrices + conv tails).
  int64_t KdaStateBytes() const;

  // InvalidArgument naming the first id outside [0, vocab).
  absl::Status ValidateTokens(absl::Span<const int32_t> tokens) const;

  // Runs one batch. Returns logits row-major: for each entry in order, one row of `vocab`
  // floats per new token (all_logits) or one for its last token.
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                             const ForwardOptions& options = {}) const;

  // Checks a batch and prepares its pages (reserved, shared ones copied before they are
  // written: SequenceTable::PrepareAppend); a failure changes nothing. Forward does this.
  // Every sequence must belong to a table over `cache`.
  absl::Status PrepareBatch(absl::Span<const BatchEntry> batch, LatentCache& cache) const;

  // One decode step (one token per entry, logits of each) enqueued with its inputs read from
  // `step` at run time, so that a recording of it serves later steps (DecodeGraphs). Pages
  // must be reserved; the entries' token values are not read. Returns the logits tensor
  // [vocab, B] without waiting for it; changes no sequence (the caller advances them).
  absl::StatusOr<kernels::Tensor> EnqueueDecodeStep(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                                    const DecodeStepInputs& step) const;

  // Chunked prefill of one sequence; `on_chunk(first_token, count)` runs after each chunk's
  // cache rows are final. Returns logits of every token (all_logits) or of the last.
  absl::StatusOr<std::vector<float>> Prefill(
      Sequence& sequence, absl::Span<const int32_t> tokens, LatentCache& cache, int64_t chunk_tokens,
      bool all_logits, const std::function<void(int64_t, int64_t)>& on_chunk = nullptr,
      const ForwardOptions& options = {}) const;

 private:
  explicit Model(kernels::Backend& backend) : backend_(backend) {}
  void IndexLayers();
  // Enqueues the forward of a prepared batch; returns the logits of its output rows.
  absl::StatusOr<kernels::Tensor> Enqueue(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                          const ForwardOptions& options, const DecodeStepInputs* step,
                                          int64_t* output_rows) const;
  kernels::Backend& backend_;
  std::unique_ptr<gguf::File> file_;
  ModelConfig config_;
  Weights weights_;
  std::vector<int64_t> kda_index_;  // layer -> KDA ordinal (-1 for MLA layers)
  std::vector<int64_t> mla_index_;  // layer -> MLA ordinal (-1 for KDA layers)
};

}  // namespace latentserve::model
