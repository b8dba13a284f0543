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

// Decode (few query rows, many keys), flash-decoding style: keys are split into chunks of
// kDecodeChunk; each (row, chunk) gets its own softmax against its own max, the chunks' P.V
// products run as one strided-batched GEMM, and a last pass merges the chunks' partial
// outputs. Every stage is parallel over chunks, so a 128K context fills the GPU (the tiled
// path above walks key tiles one after another with a handful of rows per tile).
constexpr int64_t kDecodeChunk = 1024;
constexpr int64_t kDecodeMaxRows = 128;  // query rows (tokens x heads) that take this path

// One warp per (row, chunk): masked, scaled scores -> f16 probabilities against the chunk's
// max; writes the chunk's max and sum.
__global__ void ChunkSoftmaxKernel(const float* scores, int64_t rows, int64_t heads, int64_t chunks, int64_t ld,
                                   int64_t first_position, float scale, __half* probs, float* chunk_max,
                                   float* chunk_sum) {
  const int64_t warp = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows * chunks) return;
  const int64_t row = warp / chunks, chunk = warp % chunks;
  const int64_t position = first_position + row / heads;  // keys <= position are visible
  const int64_t begin = chunk * kDecodeChunk;
  const float* s = scores + row * ld + begin;
  __half* p = probs + row * ld + begin;
  float m = -INFINITY;
  for (int64_t j = lane; j < kDecodeChunk; j += 32) {
    if (begin + j <= position) m = fmaxf(m, s[j] * scale);
  }
  for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
  float sum = 0;
  for (int64_t j = lane; j < kDecodeChunk; j += 32) {
    const float v = (begin + j <= position && m > -INFINITY) ? expf(s[j] * scale - m) : 0.0f;
    p[j] = __float2half_rn(v);
    sum += v;
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  if (lane == 0) {
    chunk_max[chunk * rows + row] = m;
    chunk_sum[chunk * rows + row] = sum;
  }
}

// One block per row: out = sum_c e^(m_c - M) O_c / sum_c e^(m_c - M) l_c.
__global__ void MergeChunksKernel(const float* partial, const float* chunk_max, const float* chunk_sum, int64_t rows,
                                  int64_t chunks, int64_t value_dim, float* out) {
  const int64_t row = blockIdx.x;
  float m = -INFINITY;
  for (int64_t c = 0; c < chunks; ++c) m = fmaxf(m, chunk_max[c * rows + row]);
  float total = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const float cm = chunk_max[c * rows + row];
    if (cm > -INFINITY) total += expf(cm - m) * chunk_sum[c * rows + row];
  }
  for (int64_t d = threadIdx.x; d < value_dim; d += blockDim.x) {
    float acc = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const float cm = chunk_max[c * rows + row];
      if (cm > -INFINITY) acc += expf(cm - m) * partial[(c * rows + row) * value_dim + d];
    }
    out[row * value_dim + d] = acc / total;
  }
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
  // The decode path reads whole chunks of keys: pad to a chunk, padding zeroed (its
  // probabilities are 0, and 0 * garbage could be NaN).
  const int64_t key_rows = rows <= kDecodeMaxRows ? (keys_total + kDecodeChunk - 1) / kDecodeChunk * kDecodeChunk
                                                  : keys_total;
  auto* keys = static_cast<__half*>(Scratch(1, static_cast<size_t>(key_rows * width) * 2));
  if (key_rows > keys_total) {
    CUDA_OK(cudaMemsetAsync(keys + keys_total * width, 0, static_cast<size_t>((key_rows - keys_total) * width) * 2,
                            stream_));
  }
  const int32_t* pages = SeqPages(seq, 3);
  const float* q_first = DevF32(q) + seq.first_token * heads * width;
  float* out_first = DevF32(out) + seq.first_token * heads * value_dim;
  ToHalfKernel<<<Blocks(rows * width, 256), 256, 0, stream_>>>(q_first, q16, rows * width);
  LAUNCH_OK();
  GatherLatentRows(stream_, pool, pages, keys_total, keys);
  if (rows <= kDecodeMaxRows) {
    MlaDecodeChunks(q16, keys, keys_total, width, heads, rows, seq.cached_tokens, scale, value_dim, out_first);
    return;
  }
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

namespace latentserve::kernels::cuda {

void CudaBackend::MlaDecodeChunks(const __half* q16, const __half* keys, int64_t keys_total, int64_t width,
                                  int64_t heads, int64_t rows, int64_t first_position, float scale, int64_t value_dim,
                                  float* out) {
  const int64_t chunks = (keys_total + kDecodeChunk - 1) / kDecodeChunk;
  const int64_t ld = chunks * kDecodeChunk;
  auto* scores = static_cast<float*>(Scratch(2, static_cast<size_t>(rows * ld) * 4));
  auto* probs = static_cast<__half*>(Scratch(5, static_cast<size_t>(rows * ld) * 2));
  auto* stats = static_cast<float*>(Scratch(6, static_cast<size_t>(chunks * rows) * 8));
  auto* partial = static_cast<float*>(Scratch(7, static_cast<size_t>(chunks * rows * value_dim) * 4));
  float* chunk_max = stats;
  float* chunk_sum = stats + chunks * rows;
  const float one = 1.0f, zero = 0.0f;
  // S (row-major [rows x keys], ld) = Q . K^T; column-major: S^T = K . Q^T.
  CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys_total), static_cast<int>(rows),
                         static_cast<int>(width), &one, keys, CUDA_R_16F, static_cast<int>(width), q16, CUDA_R_16F,
                         static_cast<int>(width), &zero, scores, CUDA_R_32F, static_cast<int>(ld), CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
  ChunkSoftmaxKernel<<<Blocks(rows * chunks * 32, 256), 256, 0, stream_>>>(scores, rows, heads, chunks, ld,
                                                                          first_position, scale, probs, chunk_max,
                                                                          chunk_sum);
  LAUNCH_OK();
  // Per chunk c: O_c (row-major [rows x R]) = P_c . V_c; column-major: O_c^T = V_c^T . P_c^T,
  // V_c^T = the first R rows of the column-major view of the chunk's keys.
  CUBLAS_OK(cublasGemmStridedBatchedEx(
      cublas_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(value_dim), static_cast<int>(rows),
      static_cast<int>(kDecodeChunk), &one, keys, CUDA_R_16F, static_cast<int>(width), kDecodeChunk * width, probs,
      CUDA_R_16F, static_cast<int>(ld), kDecodeChunk, &zero, partial, CUDA_R_32F, static_cast<int>(value_dim),
      rows * value_dim, static_cast<int>(chunks), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  MergeChunksKernel<<<static_cast<unsigned>(rows), 256, 0, stream_>>>(partial, chunk_max, chunk_sum, rows, chunks,
                                                                     value_dim, out);
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
