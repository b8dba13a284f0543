// The model's name for its paged latent cache (cache/page_pool.h), sized from a config.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "cache/page_pool.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace latentserve::model {

using LatentCache = cache::PagePool;
using LatentCacheOptions = cache::PagePoolOptions;

// The page pool for `config`'s MLA layers.
cache::PoolLayout LatentPoolLayout(const ModelConfig& config);
absl::StatusOr<std::unique_ptr<LatentCache>> NewLatentCache(const ModelConfig& config, kernels::Backend& backend,
                                                            const LatentCacheOptions& options);

// Bytes per token of a latent cache of `dtype` for `config` (n_mla_layers x row bytes).
int64_t LatentBytesPerToken(const ModelConfig& config, DType dtype);

}  // namespace latentserve::model
