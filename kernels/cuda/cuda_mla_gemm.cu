// MLA attention on the tensor cores, in absorbed form (prefill chunks and decode steps). The latent row is shared by
// all heads, so the (token, head) pairs of a chunk are the rows of ONE matrix and scores are
// one GEMM against the gathered latent rows: S = Q [n*H x L] . K^T [L x keys], then
// O += P [n*H x keys] . V [keys x R] with V = the first R columns of the same rows (no copy).
// Key tiles are walked with an online softmax (running max and sum per row), flash-style, so
// memory stays at one tile of scores. Inputs to the GEMMs are f16, accumulation f32.
#include <cuda_fp16.h>

#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dequant.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int64_t kKeyTile = 2048;
constexpr int64_t kScoreBytes = int64_t{1} << 30;  // budget for one tile of f32 scores

__global__ void ToHalfKernel(const float* x, __half* y, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = __float2half_rn(x[i]);
}

// Keys of one sequence, positions [0, count), gathered from the pages into a dense f16 matrix.
__global__ void GatherKeysKernel(DType type, const uint8_t* pool, size_t row_bytes, int64_t page_tokens,
                                 const int32_t* pages, int64_t width, int64_t count, __half* keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count * width) return;
  const int64_t p = i / width, e = i % width;
  const int64_t row = static_cast<int64_t>(pages[p / page_tokens]) * page_tokens + p % page_tokens;
  keys[i] = __float2half_rn(LoadElement(type, pool + row * row_bytes, e));
}

__global__ void GatherHalfRowsKernel(const uint8_t* pool, size_t row_bytes, int64_t page_tokens, const int32_t* pages,
                                     int64_t vectors_per_row, int64_t count, __half* keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count * vectors_per_row) return;
  const int64_t p = i / vectors_per_row, v = i % vectors_per_row;
  const int64_t row = static_cast<int64_t>(pages[p / page_tokens]) * page_tokens + p % page_tokens;
  reinterpret_cast<int4*>(keys)[i] = reinterpret_cast<const int4*>(pool + row * row_bytes)[v];
}

// One row (token t, head h) per warp: causal mask, scale, online-softmax update; writes the
// tile's probabilities as f16 and rescales the row's output accumulator.
__global__ void SoftmaxTileKernel(const float* scores, int64_t rows, int64_t heads, int64_t key_count, int64_t ld,
                                  int64_t key_begin, int64_t first_position, float scale, float* row_max,
                                  float* row_sum, __half* probs, float* out, int64_t value_dim) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t position = first_position + row / heads;  // this query's absolute position
  const float* s = scores + row * ld;
  float tile_max = -INFINITY;
  for (int64_t j = lane; j < key_count; j += 32) {
    if (key_begin + j <= position) tile_max = fmaxf(tile_max, s[j] * scale);
  }
  for (int offset = 16; offset > 0; offset >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, offset));
  const float old_max = row_max[row];
  const float new_max = fmaxf(old_max, tile_max);
  float sum = 0;
  __half* p = probs + row * ld;
  for (int64_t j = lane; j < key_count; j += 32) {
    const float v = (key_begin + j <= position && new_max > -INFINITY) ? expf(s[j] * scale - new_max) : 0.0f;
    p[j] = __float2half_rn(v);
    sum += v;
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  const float correction = old_max > -INFINITY ? expf(old_max - new_max) : 0.0f;
  float* o = out + row * value_dim;
  for (int64_t d = lane; d < value_dim; d += 32) o[d] *= correction;
  if (lane == 0) {
    row_sum[row] = row_sum[row] * correction + sum;
    row_max[row] = new_max;
  }
}

__global__ void InitRowsKernel(float* row_max, float* row_sum, int64_t rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < rows) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
  }
}

__global__ void NormaliseKernel(float* out, const float* row_sum, int64_t rows, int64_t value_dim) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < rows * value_dim) out[i] /= row_sum[i / value_dim];
}

}  // namespace

void CudaBackend::MlaGemmAttention(const Tensor& q, const Tensor& pool, const LatentSeqView& seq, float scale,
                                      const Tensor& out) {
  const int64_t width = q.ne[0], heads = q.ne[1], value_dim = out.ne[0];
  const int64_t n = seq.token_count, keys_total = seq.cached_tokens + n, rows = n * heads;
  if (n == 0) return;
  // Scratch: f16 queries, f16 keys, one tile of scores (f32) and probabilities (f16), row stats.
  // Few query rows (decode): one key tile covers the whole context within the same budget.
  const int64_t key_tile = std::min(keys_total, std::max(kKeyTile, kScoreBytes / (rows * 6) / 256 * 256));
  const int64_t ld = (key_tile + 7) / 8 * 8;  // leading dimension of scores/probabilities: 16-byte rows
  auto* q16 = static_cast<__half*>(Scratch(0, static_cast<size_t>(rows * width) * 2));
  auto* keys = static_cast<__half*>(Scratch(1, static_cast<size_t>(keys_total * width) * 2));
  auto* pages = static_cast<int32_t*>(UploadScratch(3, seq.page_table.data(), seq.page_table.size() * sizeof(int32_t)));
  const float* q_first = DevF32(q) + seq.first_token * heads * width;
  float* out_first = DevF32(out) + seq.first_token * heads * value_dim;
  ToHalfKernel<<<Blocks(rows * width, 256), 256, 0, stream_>>>(q_first, q16, rows * width);
  LAUNCH_OK();
  if (pool.dtype == DType::kF16 && width % 8 == 0) {  // rows are already f16: 16-byte copies
    const int64_t vectors = keys_total * width / 8;
    GatherHalfRowsKernel<<<Blocks(vectors, 256), 256, 0, stream_>>>(DevPtr(pool), pool.row_bytes(), pool.ne[1], pages,
                                                                     width / 8, keys_total, keys);
  } else {
    GatherKeysKernel<<<Blocks(keys_total * width, 256), 256, 0, stream_>>>(pool.dtype, DevPtr(pool), pool.row_bytes(),
                                                                           pool.ne[1], pages, width, keys_total, keys);
  }
  LAUNCH_OK();
  CUDA_OK(cudaMemsetAsync(out_first, 0, static_cast<size_t>(rows * value_dim) * 4, stream_));
  // Query tiles bounded so one tile of scores fits the budget.
  const int64_t query_tokens = std::max<int64_t>(1, std::min<int64_t>(n, kScoreBytes / (ld * heads * 6)));
  const int64_t max_rows = query_tokens * heads;
  auto* scores = static_cast<float*>(Scratch(2, static_cast<size_t>(max_rows * ld) * 4));
  auto* probs = static_cast<__half*>(Scratch(5, static_cast<size_t>(max_rows * ld) * 2));
  auto* stats = static_cast<float*>(Scratch(6, static_cast<size_t>(rows) * 8));
  float* row_max = stats;
  float* row_sum = stats + rows;
  InitRowsKernel<<<Blocks(rows, 256), 256, 0, stream_>>>(row_max, row_sum, rows);
  LAUNCH_OK();
  const float one = 1.0f, zero = 0.0f;
  for (int64_t t0 = 0; t0 < n; t0 += query_tokens) {
    const int64_t tokens = std::min(query_tokens, n - t0);
    const int64_t tile_rows = tokens * heads;
    const int64_t last_position = seq.cached_tokens + t0 + tokens - 1;
    for (int64_t k0 = 0; k0 <= last_position; k0 += key_tile) {
      const int64_t kc = std::min(key_tile, keys_total - k0);
      // S (row-major [tile_rows x kc]) = Q_tile . K_tile^T; column-major: S^T = K_tile . Q^T.
      CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(kc), static_cast<int>(tile_rows),
                             static_cast<int>(width), &one, keys + k0 * width, CUDA_R_16F, static_cast<int>(width),
                             q16 + t0 * heads * width, CUDA_R_16F, static_cast<int>(width), &zero, scores, CUDA_R_32F,
                             static_cast<int>(ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      SoftmaxTileKernel<<<Blocks(tile_rows * 32, 256), 256, 0, stream_>>>(
          scores, tile_rows, heads, kc, ld, k0, seq.cached_tokens + t0, scale, row_max + t0 * heads,
          row_sum + t0 * heads, probs, out_first + t0 * heads * value_dim, value_dim);
      LAUNCH_OK();
      // O (row-major [tile_rows x R]) += P . V_tile; column-major: O^T += V_tile^T . P^T.
      CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(value_dim), static_cast<int>(tile_rows),
                             static_cast<int>(kc), &one, keys + k0 * width, CUDA_R_16F, static_cast<int>(width), probs,
                             CUDA_R_16F, static_cast<int>(ld), &one, out_first + t0 * heads * value_dim, CUDA_R_32F,
                             static_cast<int>(value_dim), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
  NormaliseKernel<<<Blocks(rows * value_dim, 256), 256, 0, stream_>>>(out_first, row_sum, rows, value_dim);
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
