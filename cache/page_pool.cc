#include "cache/page_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace latentserve::cache {

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::Create(const PoolLayout& layout, kernels::Backend& backend,
                                                           const PagePoolOptions& options) {
  if (options.page_tokens <= 0 || options.pages <= 0) {
    return absl::InvalidArgumentError("latent cache needs page_tokens > 0 and pages > 0");
  }
  if (options.pages > INT32_MAX) return absl::InvalidArgumentError("latent cache: page ids are 32-bit");
  if (layout.latent_width <= 0 || layout.mla_layers < 0) {
    return absl::InvalidArgumentError("latent cache needs a positive row width");
  }
  if (layout.latent_width % Traits(options.dtype).block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("latent width ", layout.latent_width,
                                                   " is not a multiple of the ", DTypeName(options.dtype),
                                                   " block size"));
  }
  if (options.dtype == DType::kI32) return absl::InvalidArgumentError("i32 is not a cache type");
  std::unique_ptr<PagePool> cache(new PagePool());
  cache->options_ = options;
  cache->latent_width_ = layout.latent_width;
  cache->backend_ = &backend;
  for (int64_t i = 0; i < layout.mla_layers; ++i) {
    const kernels::Shape shape = {layout.latent_width, options.page_tokens, options.pages, 1};
    auto pool = options.exportable ? backend.AllocExportable(options.dtype, shape) : backend.Alloc(options.dtype, shape);
    if (!pool.ok()) return pool.status();
    backend.Zero(*pool);
    cache->pools_.push_back(*pool);
  }
  cache->refcounts_.assign(options.pages, 0);
  for (int64_t p = options.pages - 1; p >= 0; --p) cache->free_list_.push_back(static_cast<int32_t>(p));
  return cache;
}

absl::StatusOr<std::vector<int32_t>> PagePool::Allocate(int64_t count) {
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

void PagePool::Retain(absl::Span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t p : pages) ++refcounts_[p];
}

void PagePool::Release(absl::Span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t p : pages) {
    if (refcounts_[p] > 0 && --refcounts_[p] == 0) free_list_.push_back(p);
  }
}

int32_t PagePool::references(int32_t page) const {
  std::lock_guard<std::mutex> lock(mu_);
  return page >= 0 && page < static_cast<int64_t>(refcounts_.size()) ? refcounts_[page] : 0;
}

int64_t PagePool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_list_.size());
}

size_t PagePool::page_bytes_per_layer() const {
  return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)) * options_.page_tokens;
}

size_t PagePool::bytes_per_token() const {
  return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)) * pools_.size();
}

absl::Status PagePool::CheckRange(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                                  int64_t count) const {
  if (mla_index < 0 || mla_index >= mla_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("MLA layer index ", mla_index, " out of range"));
  }
  if (first_token < 0 || count < 0 ||
      count > static_cast<int64_t>(page_table.size()) * options_.page_tokens - first_token) {
    return absl::InvalidArgumentError(absl::StrCat("tokens [", first_token, ", +", count,
                                                   ") are outside the sequence's ", page_table.size(), " pages"));
  }
  for (int32_t page : page_table) {
    if (page < 0 || page >= total_pages()) return absl::InvalidArgumentError("page id out of range");
  }
  return absl::OkStatus();
}

absl::Status PagePool::ExportRows(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                                  int64_t count, std::string* out) const {
  if (auto s = CheckRange(mla_index, page_table, first_token, count); !s.ok()) return s;
  const size_t rb = row_bytes();
  out->resize(rb * count);
  // Runs of consecutive tokens inside one page are contiguous in the pool.
  for (int64_t t = 0; t < count;) {
    const int64_t position = first_token + t;
    const int64_t slot = position % options_.page_tokens;
    const int64_t run = std::min(count - t, options_.page_tokens - slot);
    const int64_t row = static_cast<int64_t>(page_table[position / options_.page_tokens]) * options_.page_tokens + slot;
    backend_->Download(pools_[mla_index], out->data() + t * rb, run * rb, row * rb);
    t += run;
  }
  return absl::OkStatus();
}

absl::Status PagePool::ExportRowsAsync(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                                       int64_t count, void* host) const {
  if (auto s = CheckRange(mla_index, page_table, first_token, count); !s.ok()) return s;
  const size_t rb = row_bytes();
  auto* out = static_cast<char*>(host);
  for (int64_t t = 0; t < count;) {
    const int64_t position = first_token + t;
    const int64_t slot = position % options_.page_tokens;
    const int64_t run = std::min(count - t, options_.page_tokens - slot);
    const int64_t row = static_cast<int64_t>(page_table[position / options_.page_tokens]) * options_.page_tokens + slot;
    backend_->DownloadAsync(pools_[mla_index], out + t * rb, run * rb, row * rb);
    t += run;
  }
  return absl::OkStatus();
}

absl::Status PagePool::ImportRows(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                                  int64_t count, std::string_view rows) const {
  if (auto s = CheckRange(mla_index, page_table, first_token, count); !s.ok()) return s;
  const size_t rb = row_bytes();
  if (rows.size() != rb * count) {
    return absl::InvalidArgumentError(absl::StrCat("latent rows: got ", rows.size(), " bytes, expected ", rb * count));
  }
  for (int64_t t = 0; t < count;) {
    const int64_t position = first_token + t;
    const int64_t slot = position % options_.page_tokens;
    const int64_t run = std::min(count - t, options_.page_tokens - slot);
    const int64_t row = static_cast<int64_t>(page_table[position / options_.page_tokens]) * options_.page_tokens + slot;
    backend_->Upload(rows.data() + t * rb, run * rb, pools_[mla_index], row * rb);
    t += run;
  }
  return absl::OkStatus();
}

}  // namespace latentserve::cache
