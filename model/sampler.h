// Token sampling on the host from one row of logits (llama.cpp-style chain:
// top-k -> top-p -> min-p -> temperature -> draw). temperature <= 0 is greedy.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace latentserve::model {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(absl::Span<const float> logits);
  // Whether Sample is Argmax (temperature <= 0): a step of such rows can take its tokens from the
  // device (DecodeGraphs::GreedyStep) instead of every row's logits.
  bool greedy() const { return params_.temperature <= 0.0f; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

using kernels::Argmax;  // greedy's token (kernels/backend.h)

// A step's tokens: row i of `logits` (rows of `vocab` entries) drawn by samplers[i] into
// tokens[i], the rows in parallel on `pool` (each sampler is its row's alone), or one after
// another without one. The decode worker's continuous batch and `generate --batch` draw so.
void SampleRows(absl::Span<const float> logits, int64_t vocab, absl::Span<Sampler* const> samplers,
                absl::Span<int32_t> tokens, kernels::cpu::ThreadPool* pool);
// The same with greedy samplers: tokens[i] = Argmax of row i (an unrecorded greedy step's).
void ArgmaxRows(absl::Span<const float> logits, int64_t vocab, absl::Span<int32_t> tokens,
                kernels::cpu::ThreadPool* pool);
// The pool SampleRows wants: the host's cores, at most 8 (a row of 163,840 logits costs
// ~0.1-1 ms to draw; docs/benchmarks.md).
std::unique_ptr<kernels::cpu::ThreadPool> NewSamplingPool();

// The tokens the chain keeps (top-k, then top-p, then min-p; temperature does not cut): the
// most likely first; the rest in logit order where a cut needed it, else in no fixed order.
// Sampler draws among them in this order.
std::vector<int32_t> SamplingCandidates(absl::Span<const float> logits, const SamplingParams& params);

}  // namespace latentserve::model
