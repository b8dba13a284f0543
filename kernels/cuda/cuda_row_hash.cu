// HashPagedRows on the GPU: XXH64 of every latent row, gathered through the page table, so a
// device transport checks its rows without reading them back (8 bytes per row reach the host).
//
// XXH64 of one row is sequential within each of its four accumulator lanes, so a row gets a
// quad of threads, thread j running lane j over the row's 32-byte stripes (the quad reads 32
// consecutive bytes per step: one sector, coalesced); the quad's first thread merges the lanes
// (shuffles) and hashes the tail. A 1152-byte f16 row is 36 steps of one 8-byte load and one
// 64-bit multiply-rotate-multiply per thread.
#include <algorithm>

#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/xxh64.h"

namespace latentserve::kernels::cuda {
namespace {

struct RowHashTraits {
  static constexpr int kLanes = 4;            // XXH64's accumulators: threads per row
  static constexpr int kThreads = 256;        // per block: 64 rows
  static constexpr int kRowsPerBlock = kThreads / kLanes;
};

struct RowHashParams {
  const uint8_t* pool;    // [row_bytes, page_tokens, n_pages]: the cache pool's bytes
  const int32_t* pages;   // the pages holding the rows, in token order (a slice of the table)
  int64_t first_slot;     // first row's token index relative to the slice's first page
  int64_t count;          // rows
  int64_t page_tokens;
  int64_t row_bytes;
  uint64_t* hashes;       // [count]
};

// kAligned: the pool and every row start on 8 bytes (aligned 64-bit loads), else byte loads.
template <bool kAligned>
__global__ void __launch_bounds__(RowHashTraits::kThreads) HashPagedRowsKernel(RowHashParams p) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / RowHashTraits::kLanes;
  const int lane = static_cast<int>(thread % RowHashTraits::kLanes);
  const bool valid = row < p.count;
  const int64_t token = p.first_slot + row;
  const uint8_t* data =
      valid ? p.pool + (static_cast<int64_t>(p.pages[token / p.page_tokens]) * p.page_tokens +
                        token % p.page_tokens) * p.row_bytes
            : p.pool;
  const int64_t stripes = valid ? p.row_bytes / static_cast<int64_t>(xxh64::kStripeBytes) : 0;
  uint64_t v = xxh64::LaneInit(lane);
  const uint8_t* word = data + 8 * lane;
#pragma unroll 4
  for (int64_t s = 0; s < stripes; ++s, word += xxh64::kStripeBytes) {
    const uint64_t input = kAligned ? __ldg(reinterpret_cast<const unsigned long long*>(word)) : xxh64::Read64(word);
    v = xxh64::Round(v, input);
  }
  // Every thread of the warp takes part in the shuffles (rows past the end included).
  const unsigned all = 0xffffffffu;
  const uint64_t v0 = __shfl_sync(all, v, 0, RowHashTraits::kLanes);
  const uint64_t v1 = __shfl_sync(all, v, 1, RowHashTraits::kLanes);
  const uint64_t v2 = __shfl_sync(all, v, 2, RowHashTraits::kLanes);
  const uint64_t v3 = __shfl_sync(all, v, 3, RowHashTraits::kLanes);
  if (!valid || lane != 0) return;
  const uint64_t h = stripes > 0 ? xxh64::MergeLanes(v0, v1, v2, v3) : xxh64::kP5;
  const int64_t whole = stripes * static_cast<int64_t>(xxh64::kStripeBytes);
  p.hashes[row] = xxh64::Finish(h, static_cast<uint64_t>(p.row_bytes), data + whole,
                                static_cast<size_t>(p.row_bytes - whole));
}

}  // namespace

absl::Status CudaBackend::HashPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                                        int64_t count, uint64_t* hashes) {
  RETURN_IF_ERROR(CheckPagedRows(pool, page_table, first_token, count));
  if (capture_) return absl::FailedPreconditionError("rows cannot be hashed while a step is being recorded");
  if (count == 0) return absl::OkStatus();
  const int64_t page_tokens = pool.ne[1];
  const int64_t first_page = first_token / page_tokens, last_page = (first_token + count - 1) / page_tokens;
  const int64_t slice_pages = last_page - first_page + 1;
  ASSIGN_OR_RETURN(Tensor pages, Alloc(DType::kI32, {slice_pages, 1, 1, 1}));
  ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kI32, {2 * count, 1, 1, 1}));  // u64 [count]
  Upload(page_table.data() + first_page, static_cast<size_t>(slice_pages) * sizeof(int32_t), pages, 0);
  RowHashParams params;
  params.pool = DevPtr(pool);
  params.pages = reinterpret_cast<const int32_t*>(DevPtr(pages));
  params.first_slot = first_token - first_page * page_tokens;
  params.count = count;
  params.page_tokens = page_tokens;
  params.row_bytes = static_cast<int64_t>(pool.row_bytes());
  params.hashes = reinterpret_cast<uint64_t*>(DevPtr(out));
  const bool aligned = reinterpret_cast<uintptr_t>(params.pool) % 8 == 0 && params.row_bytes % 8 == 0;
  const int64_t blocks = (count + RowHashTraits::kRowsPerBlock - 1) / RowHashTraits::kRowsPerBlock;
  if (aligned) {
    HashPagedRowsKernel<true><<<static_cast<unsigned>(blocks), RowHashTraits::kThreads, 0, stream_>>>(params);
  } else {
    HashPagedRowsKernel<false><<<static_cast<unsigned>(blocks), RowHashTraits::kThreads, 0, stream_>>>(params);
  }
  LAUNCH_OK();
  Download(out, hashes, static_cast<size_t>(count) * sizeof(uint64_t), 0);
  return absl::OkStatus();
}

}  // namespace latentserve::kernels::cuda
