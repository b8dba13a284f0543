// One sequence's state: its latent-cache page table and its per-layer KDA state.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace latentserve::model {

struct Sequence {
  std::vector<int32_t> pages;                // latent cache page table, in token order
  int64_t cached_tokens = 0;                 // tokens whose latent rows are in the cache
  std::vector<kernels::KdaStateView> kda;    // one per KDA layer, in layer order
};

}  // namespace latentserve::model
