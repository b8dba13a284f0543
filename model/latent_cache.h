// The paged latent cache: per MLA layer, a pool of fixed-size pages of latent rows
// (R + Pr = 576 values per token for the real model; V is the first R of them).
// Pool tensor layout per MLA layer: [latent_width, page_tokens, n_pages] in the cache dtype.
// A page id addresses the same slot in every MLA layer's pool, so a sequence has one page
// table. Pages are reference-counted so a prefix can later be shared read-only.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace latentserve::model {

struct LatentCacheOptions {
  DType dtype = DType::kF16;   // f32, f16, bf16, q8_0, q4_0
  int64_t page_tokens = 256;   // tokens per page
  int64_t pages = 64;          // pages per MLA layer
};

class LatentCache {
 public:
  static absl::StatusOr<std::unique_ptr<LatentCache>> Create(const ModelConfig& config,
                                                            kernels::Backend& backend,
                                                            const LatentCacheOptions& options);

  // Takes `count` free pages (refcount 1); ResourceExhausted when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t count);
  void Retain(absl::Span<const int32_t> pages);   // +1 reference each
  void Release(absl::Span<const int32_t> pages);  // -1; a page is free again at 0

  int64_t free_pages() const;
  int64_t total_pages() const { return options_.pages; }
  int64_t page_tokens() const { return options_.page_tokens; }
  DType dtype() const { return options_.dtype; }
  int64_t PagesFor(int64_t tokens) const { return (tokens + options_.page_tokens - 1) / options_.page_tokens; }
  // Bytes one page occupies in one layer's pool, and one token across all MLA layers.
  size_t page_bytes_per_layer() const;
  size_t bytes_per_token() const;
  size_t total_bytes() const { return page_bytes_per_layer() * options_.pages * pools_.size(); }
  const kernels::Tensor& pool(int64_t mla_index) const { return pools_[mla_index]; }

  // Raw latent rows of tokens [first_token, first_token + count) of a sequence in one MLA
  // layer, in the cache dtype: `count` rows of RowBytes(dtype, latent_width) bytes each.
  // This is the unit the prefill worker streams to the decode worker.
  absl::Status ExportRows(kernels::Backend& backend, int64_t mla_index, absl::Span<const int32_t> page_table,
                          int64_t first_token, int64_t count, std::string* out) const;
  // The inverse: writes rows received from a peer (same dtype and width) into this cache.
  absl::Status ImportRows(kernels::Backend& backend, int64_t mla_index, absl::Span<const int32_t> page_table,
                          int64_t first_token, int64_t count, std::string_view rows) const;
  size_t row_bytes() const { return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)); }
  int64_t latent_width() const { return latent_width_; }
  int64_t mla_layers() const { return static_cast<int64_t>(pools_.size()); }

 private:
  LatentCache() = default;
  LatentCacheOptions options_;
  int64_t latent_width_ = 0;
  std::vector<kernels::Tensor> pools_;
  mutable std::mutex mu_;
  std::vector<int32_t> refcounts_;
  std::vector<int32_t> free_list_;
};

// Bytes per token of a latent cache of `dtype` for `config` (n_mla_layers x row bytes).
int64_t LatentBytesPerToken(const ModelConfig& config, DType dtype);

}  // namespace latentserve::model
