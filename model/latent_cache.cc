#include "model/latent_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace latentserve::model {

int64_t LatentBytesPerToken(const ModelConfig& config, DType dtype) {
  return config.mla_layer_count() * RowBytes(dtype, config.latent_width());
}

absl::StatusOr<std::unique_ptr<LatentCache>> LatentCache::Create(const ModelConfig& config,
                                                                kernels::Backend& backend,
                                                                const LatentCacheOptions& options) {
  if (options.page_tokens <= 0 || options.pages <= 0) {
    return absl::InvalidArgumentError("latent cache needs page_tokens > 0 and pages > 0");
  }
  if (config.latent_width() % Traits(options.dtype).block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("latent width ", config.latent_width(),
                                                   " is not a multiple of the ", DTypeName(options.dtype),
                                                   " block size"));
  }
  if (options.dtype == DType::kI32) return absl::InvalidArgumentError("i32 is not a cache type");
  std::unique_ptr<LatentCache> cache(new LatentCache());
  cache->options_ = options;
  cache->latent_width_ = config.latent_width();
  for (int64_t i = 0; i < config.mla_layer_count(); ++i) {
    auto pool = backend.Alloc(options.dtype, {config.latent_width(), options.page_tokens, options.pages, 1});
    if (!pool.ok()) return pool.status();
    backend.Zero(*pool);
    cache->pools_.push_back(*pool);
  }
  cache->refcounts_.assign(options.pages, 0);
  for (int64_t p = options.pages - 1; p >= 0; --p) cache->free_list_.push_back(static_cast<int32_t>(p));
  return cache;
}

absl::StatusOr<std::vector<int32_t>> LatentCache::Allocate(int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  if (count < 0 || count > static_cast<int64_t>(free_list_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("latent cache: ", count, " pages wanted, ", free_list_.size(),
                                                     " free of ", options_.pages));
  }
  std::vector<int32_t> pages(free_list_.end() - count, free_list_.end());
  std::reverse(pages.begin(), pages.end());
  free_list_.resize(free_list_.size() - count);
  for (int32_t p : pages) refcounts_[p] = 1;
  return pages;
}

void LatentCache::Retain(absl::Span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t p : pages) ++refcounts_[p];
}

void LatentCache::Release(absl::Span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t p : pages) {
    if (refcounts_[p] > 0 && --refcounts_[p] == 0) free_list_.push_back(p);
  }
}

int64_t LatentCache::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_list_.size());
}

size_t LatentCache::page_bytes_per_layer() const {
  return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)) * options_.page_tokens;
}

size_t LatentCache::bytes_per_token() const {
  return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)) * pools_.size();
}

}  // namespace latentserve::model

namespace latentserve::model {

namespace {
absl::Status CheckRange(const LatentCache& cache, int64_t mla_index, absl::Span<const int32_t> page_table,
                        int64_t first_token, int64_t count) {
  if (mla_index < 0 || mla_index >= cache.mla_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("MLA layer index ", mla_index, " out of range"));
  }
  if (first_token < 0 || count < 0 ||
      first_token + count > static_cast<int64_t>(page_table.size()) * cache.page_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("tokens [", first_token, ", ", first_token + count,
                                                   ") are outside the sequence's ", page_table.size(), " pages"));
  }
  for (int32_t page : page_table) {
    if (page < 0 || page >= cache.total_pages()) return absl::InvalidArgumentError("page id out of range");
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status LatentCache::ExportRows(kernels::Backend& backend, int64_t mla_index, absl::Span<const int32_t> page_table,
                                     int64_t first_token, int64_t count, std::string* out) const {
  if (auto s = CheckRange(*this, mla_index, page_table, first_token, count); !s.ok()) return s;
  const size_t rb = row_bytes();
  out->resize(rb * count);
  // Runs of consecutive tokens inside one page are contiguous in the pool.
  for (int64_t t = 0; t < count;) {
    const int64_t position = first_token + t;
    const int64_t slot = position % options_.page_tokens;
    const int64_t run = std::min(count - t, options_.page_tokens - slot);
    const int64_t row = static_cast<int64_t>(page_table[position / options_.page_tokens]) * options_.page_tokens + slot;
    backend.Download(pools_[mla_index], out->data() + t * rb, run * rb, row * rb);
    t += run;
  }
  return absl::OkStatus();
}

absl::Status LatentCache::ImportRows(kernels::Backend& backend, int64_t mla_index, absl::Span<const int32_t> page_table,
                                     int64_t first_token, int64_t count, std::string_view rows) const {
  if (auto s = CheckRange(*this, mla_index, page_table, first_token, count); !s.ok()) return s;
  const size_t rb = row_bytes();
  if (rows.size() != rb * count) {
    return absl::InvalidArgumentError(absl::StrCat("latent rows: got ", rows.size(), " bytes, expected ", rb * count));
  }
  for (int64_t t = 0; t < count;) {
    const int64_t position = first_token + t;
    const int64_t slot = position % options_.page_tokens;
    const int64_t run = std::min(count - t, options_.page_tokens - slot);
    const int64_t row = static_cast<int64_t>(page_table[position / options_.page_tokens]) * options_.page_tokens + slot;
    backend.Upload(rows.data() + t * rb, run * rb, pools_[mla_index], row * rb);
    t += run;
  }
  return absl::OkStatus();
}

}  // namespace latentserve::model
