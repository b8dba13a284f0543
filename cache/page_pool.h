// The paged latent cache: per MLA layer, a pool of fixed-size pages of latent rows
// (R + Pr = 576 values per token for the real model; V is the first R of them).
// Pool tensor layout per MLA layer: [latent_width, page_tokens, n_pages] in the cache dtype.
// A page id addresses the same slot in every MLA layer's pool, so a sequence has one page
// table. Pages are reference-counted: a page is free again when its last holder (a sequence,
// a fork sharing its prefix, a lease) releases it. Sequences hold pages through a
// SequenceTable (cache/sequence_table.h); the pool only counts.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"

namespace latentserve::cache {

// What the pool holds per token: one row of `latent_width` values in each of `mla_layers`
// pools (model::ModelConfig gives both).
struct PoolLayout {
  int64_t mla_layers = 0;
  int64_t latent_width = 0;
};

struct PagePoolOptions {
  DType dtype = DType::kF16;   // f32, f16, bf16, q8_0, q4_0
  int64_t page_tokens = 256;   // tokens per page
  int64_t pages = 64;          // pages per MLA layer
  // Pools another process can open (Backend::AllocExportable: CUDA IPC transport, decode side).
  bool exportable = false;
};

class PagePool {
 public:
  static absl::StatusOr<std::unique_ptr<PagePool>> Create(const PoolLayout& layout, kernels::Backend& backend,
                                                         const PagePoolOptions& options);

  // Takes `count` free pages (refcount 1); ResourceExhausted when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t count);
  void Retain(absl::Span<const int32_t> pages);   // +1 reference each
  void Release(absl::Span<const int32_t> pages);  // -1; a page is free again at 0
  int32_t references(int32_t page) const;         // 0 for a free page

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
  kernels::Backend& backend() const { return *backend_; }

  // Raw latent rows of tokens [first_token, first_token + count) of a sequence in one MLA
  // layer, in the cache dtype: `count` rows of row_bytes() each, through host memory (the
  // gRPC handoff's unit; transfer/ moves device views where the transport allows).
  absl::Status ExportRows(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token, int64_t count,
                          std::string* out) const;
  // The same rows enqueued as asynchronous downloads into `host` (count * row_bytes() bytes):
  // valid once an event recorded on the backend afterwards has completed (kernels::Backend::
  // DownloadAsync). Pinned `host` memory lets the CUDA copy engine fill it while the host works.
  absl::Status ExportRowsAsync(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                               int64_t count, void* host) const;
  // The inverse: writes rows received from a peer (same dtype and width) into this cache.
  absl::Status ImportRows(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token, int64_t count,
                          std::string_view rows) const;
  // InvalidArgument unless tokens [first_token, +count) of `page_table` lie in this pool.
  absl::Status CheckRange(int64_t mla_index, absl::Span<const int32_t> page_table, int64_t first_token,
                          int64_t count) const;
  size_t row_bytes() const { return static_cast<size_t>(RowBytes(options_.dtype, latent_width_)); }
  int64_t latent_width() const { return latent_width_; }
  int64_t mla_layers() const { return static_cast<int64_t>(pools_.size()); }

 private:
  PagePool() = default;
  PagePoolOptions options_;
  int64_t latent_width_ = 0;
  kernels::Backend* backend_ = nullptr;
  std::vector<kernels::Tensor> pools_;
  mutable std::mutex mu_;  // refcounts_ and free_list_
  std::vector<int32_t> refcounts_;
  std::vector<int32_t> free_list_;
};

}  // namespace latentserve::cache
