// Memory arithmetic (DESIGN.md §2): latent cache, KDA state and weight bytes for a context.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "model/config.h"

namespace latentserve::model {

struct MemoryPlan {
  int64_t context_tokens = 0;
  int64_t latent_cache_bytes = 0;     // n_mla x RowBytes(cache, R + Pr) x tokens
  int64_t kda_state_bytes = 0;        // per sequence, constant in the context length
  int64_t weights_bytes = 0;
  int64_t mha_cache_bytes_f16 = 0;    // what a standard K+V cache of the MLA layers would need
};

// Weight bytes of `config` with its matrices in `weight_type` (norms, biases, conv taps f32).
int64_t WeightBytes(const ModelConfig& config, DType weight_type);
MemoryPlan PlanMemory(const ModelConfig& config, int64_t context_tokens, DType cache_type, int64_t weights_bytes);

}  // namespace latentserve::model
