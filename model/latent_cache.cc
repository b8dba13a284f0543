#include "model/latent_cache.h"

namespace latentserve::model {

cache::PoolLayout LatentPoolLayout(const ModelConfig& config) {
  return {config.mla_layer_count(), config.latent_width()};
}

absl::StatusOr<std::unique_ptr<LatentCache>> NewLatentCache(const ModelConfig& config, kernels::Backend& backend,
                                                            const LatentCacheOptions& options) {
  return cache::PagePool::Create(LatentPoolLayout(config), backend, options);
}

int64_t LatentBytesPerToken(const ModelConfig& config, DType dtype) {
  return config.mla_layer_count() * RowBytes(dtype, config.latent_width());
}

}  // namespace latentserve::model
