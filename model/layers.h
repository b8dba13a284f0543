// The per-layer pieces of the forward pass. Each takes the batch context and the normalised
// hidden states h [E, n] and returns the layer's contribution [E, n] (the residual add is
// done by the caller). Only backend ops touch tensor memory.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/latent_cache.h"
#include "model/weights.h"

namespace latentserve::model {

struct BatchContext {
  kernels::Backend& backend;
  const ModelConfig& config;
  int64_t tokens;                                  // n: new tokens in the batch
  std::vector<kernels::SeqSlice> slices;           // per sequence
  std::vector<kernels::LatentSeqView> latent;      // per sequence (page tables + positions)
  int64_t kda_chunk_tokens;                        // 0 = recurrence
  kernels::Tensor page_plan;                       // i32 [stride, B]: model/batch_plan.h

  absl::StatusOr<kernels::Tensor> F32(kernels::Shape ne) const { return backend.Alloc(DType::kF32, ne); }
};

// Elements [first, first + count) of a one-column tensor as a [count] column, sharing memory.
kernels::Tensor ColumnSlice(const kernels::Tensor& column, int64_t first, int64_t count);
// Consecutive slices of `column` from entry `first` on, one per part, each as long as its
// part has rows (a stacked projection's output split into its parts' outputs).
std::vector<kernels::Tensor> PartColumns(const kernels::Tensor& column, int64_t first,
                                         const std::vector<kernels::Tensor>& parts);

// The normalised hidden states a layer reads, h [E, n], and h rounded once for the q4_0 / q8_0
// products that read it (Backend::RoundActivations; empty when the backend rounds per product
// or no quantised weight of that kind reads h).
struct Hidden {
  kernels::Tensor x;
  kernels::Tensor rounded;
};

// h with its rounded copy when `reader`, the weight whose products decide (the first
// projection of h), is q4_0 / q8_0 and the backend rounds once; else h alone.
absl::StatusOr<Hidden> RoundFor(kernels::Backend& backend, const kernels::Tensor& h, const kernels::Tensor& reader);
// The residual step between sublayers: x += a, h = RmsNorm(x) * w, and h rounded as RoundFor
// decides (one backend op).
absl::StatusOr<Hidden> AddNormFor(kernels::Backend& backend, const kernels::Tensor& x, const kernels::Tensor& a,
                                  const kernels::Tensor& w, float eps, const kernels::Tensor& h,
                                  const kernels::Tensor& reader);

// h [E, n] through every projection of `p`: out[i] [rows_i, n]. One token and a stacked
// weight: one matmul, and the outputs are slices of its column (fewer backend operations
// per decode step); otherwise one matmul per part.
absl::StatusOr<std::vector<kernels::Tensor>> Project(const BatchContext& ctx, const Projections& p, const Hidden& h);

// KDA: short convs, L2 norms, gates, gated delta rule, gated head norm, output projection.
absl::StatusOr<kernels::Tensor> KdaLayer(const BatchContext& ctx, const KdaWeights& w,
                                         const std::vector<kernels::KdaStateView>& states, const Hidden& h);
// MLA over the paged latent cache of one layer (`pool`); the backend picks absorbed or MHA form.
absl::StatusOr<kernels::Tensor> MlaLayer(const BatchContext& ctx, const MlaWeights& w,
                                         const kernels::Tensor& pool, const Hidden& h);
// Dense SwiGLU FFN or MoE (sigmoid routing + shared expert).
absl::StatusOr<kernels::Tensor> FfnLayer(const BatchContext& ctx, const FfnWeights& w, bool moe, const Hidden& h);

}  // namespace latentserve::model
