#include "cache/views.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::cache {

LatentRowsView RowsOf(const Sequence& sequence, int64_t mla_index, int64_t first_token, int64_t token_count) {
  return {&sequence.table().pool(), mla_index, sequence.pages(), first_token, token_count};
}

KdaStateRef KdaOf(const Sequence& sequence, int64_t kda_index) {
  return {&sequence.table().backend(), sequence.kda()[kda_index]};
}

KdaStateRef KdaOf(const KdaCheckpoint& checkpoint, int64_t kda_index) {
  return {&checkpoint.table().backend(), checkpoint.kda()[kda_index]};
}

absl::StatusOr<int64_t> CopyRows(const LatentRowsView& src, const LatentRowsView& dst) {
  if (src.pool == nullptr || dst.pool == nullptr) return absl::InvalidArgumentError("latent rows view without a pool");
  if (src.pool->dtype() != dst.pool->dtype() || src.pool->row_bytes() != dst.pool->row_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("latent rows of ", DTypeName(src.pool->dtype()), " x ",
                                                   src.pool->row_bytes(), " bytes cannot go to a ",
                                                   DTypeName(dst.pool->dtype()), " x ", dst.pool->row_bytes(),
                                                   "-byte cache"));
  }
  if (src.token_count != dst.token_count) {
    return absl::InvalidArgumentError(absl::StrCat("copy of ", src.token_count, " rows into ", dst.token_count));
  }
  RETURN_IF_ERROR(src.pool->CheckRange(src.mla_index, src.pages, src.first_token, src.token_count));
  RETURN_IF_ERROR(dst.pool->CheckRange(dst.mla_index, dst.pages, dst.first_token, dst.token_count));
  const int64_t rb = static_cast<int64_t>(src.pool->row_bytes());
  const int64_t src_page = src.pool->page_tokens(), dst_page = dst.pool->page_tokens();
  int64_t host_bytes = 0;
  // Runs that stay inside one page on both sides are contiguous in both pools.
  for (int64_t t = 0; t < src.token_count;) {
    const int64_t s = src.first_token + t, d = dst.first_token + t;
    const int64_t run = std::min({src.token_count - t, src_page - s % src_page, dst_page - d % dst_page});
    const int64_t src_row = static_cast<int64_t>(src.pages[s / src_page]) * src_page + s % src_page;
    const int64_t dst_row = static_cast<int64_t>(dst.pages[d / dst_page]) * dst_page + d % dst_page;
    host_bytes += kernels::CopyBetween(src.pool->backend(), src.pool->pool(src.mla_index), src_row * rb,
                                       dst.pool->backend(), dst.pool->pool(dst.mla_index), dst_row * rb, run * rb);
    t += run;
  }
  return host_bytes;
}

absl::StatusOr<int64_t> CopyKdaState(const KdaStateRef& src, const KdaStateRef& dst) {
  if (src.backend == nullptr || dst.backend == nullptr) return absl::InvalidArgumentError("KDA state without a backend");
  if (src.state.recurrent.ne != dst.state.recurrent.ne || src.state.conv.ne != dst.state.conv.ne ||
      src.state.recurrent.dtype != dst.state.recurrent.dtype || src.state.conv.dtype != dst.state.conv.dtype) {
    return absl::InvalidArgumentError("KDA states of different shapes");
  }
  int64_t host_bytes = kernels::CopyBetween(*src.backend, src.state.recurrent, 0, *dst.backend, dst.state.recurrent, 0,
                                            src.state.recurrent.nbytes());
  host_bytes += kernels::CopyBetween(*src.backend, src.state.conv, 0, *dst.backend, dst.state.conv, 0,
                                     src.state.conv.nbytes());
  return host_bytes;
}

}  // namespace latentserve::cache
