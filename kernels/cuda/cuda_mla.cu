// MLA over the paged latent cache on the GPU.
// LatentStore: one block per new token quantises its row into its page slot.
// MlaAttention (absorbed form): one block per (head, token); its warps split the visible
// positions, each keeping an online softmax over its share with the query and the value
// accumulator in registers (lane i owns elements i, i+32, ...); warps are merged at the end.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dequant.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int64_t kPrefillTokens = 64;  // a sequence with more new tokens takes the GEMM path

// Per-token addressing: absolute position, and offset of its sequence's page table.
struct TokenMap {
  const int32_t* position;
  const int32_t* table_offset;
  const int32_t* pages;
};

__device__ __forceinline__ int64_t PoolRow(const TokenMap& map, int64_t token, int64_t position, int64_t page_tokens) {
  return static_cast<int64_t>(map.pages[map.table_offset[token] + position / page_tokens]) * page_tokens +
         position % page_tokens;
}

__global__ void LatentStoreKernel(DType type, const float* latent, int64_t width, TokenMap map, int64_t page_tokens,
                                  size_t row_bytes, uint8_t* pool) {
  const int64_t token = blockIdx.x;
  const float* x = latent + token * width;
  uint8_t* row = pool + PoolRow(map, token, map.position[token], page_tokens) * row_bytes;
  if (type == DType::kF32 || type == DType::kF16 || type == DType::kBF16) {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      if (type == DType::kF32) reinterpret_cast<float*>(row)[i] = x[i];
      if (type == DType::kF16) reinterpret_cast<__half*>(row)[i] = __float2half_rn(x[i]);
      if (type == DType::kBF16) reinterpret_cast<__nv_bfloat16*>(row)[i] = __float2bfloat16_rn(x[i]);
    }
    return;
  }
  // One thread per block of 32, with the CPU quantiser's rounding (common/dtype.cc).
  for (int64_t b = threadIdx.x; b < width / 32; b += blockDim.x) {
    const float* xb = x + b * 32;
    if (type == DType::kQ8_0) {
      uint8_t* block = row + b * 34;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xb[i]));
      const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
      *reinterpret_cast<__half*>(block) = __float2half_rn(d);
      for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(roundf(xb[i] * id)));
    } else {
      uint8_t* block = row + b * 18;
      float amax = 0, max = 0;
      for (int i = 0; i < 32; ++i) {
        if (fabsf(xb[i]) > amax) {
          amax = fabsf(xb[i]);
          max = xb[i];
        }
      }
      const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
      *reinterpret_cast<__half*>(block) = __float2half_rn(d);
      for (int i = 0; i < 16; ++i) {
        const uint8_t q0 = static_cast<uint8_t>(fminf(15.0f, xb[i] * id + 8.5f));
        const uint8_t q1 = static_cast<uint8_t>(fminf(15.0f, xb[16 + i] * id + 8.5f));
        block[2 + i] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
    }
  }
}

template <int kPerLane>
__global__ void MlaAttentionKernel(DType type, const float* q, const uint8_t* pool, size_t row_bytes,
                                   int64_t page_tokens, int64_t width, int64_t value_dim, int64_t heads, TokenMap map,
                                   float scale, float* out) {
  __shared__ float warp_max[kWarps], warp_sum[kWarps];
  extern __shared__ float warp_acc[];  // [kWarps][value_dim]
  const int64_t h = blockIdx.x, token = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qt = q + (token * heads + h) * width;
  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t idx = lane + 32 * i;
    qr[i] = idx < width ? qt[idx] : 0.0f;
    acc[i] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  const int64_t visible = map.position[token] + 1;
  for (int64_t p = warp; p < visible; p += kWarps) {
    const uint8_t* row = pool + PoolRow(map, token, p, page_tokens) * row_bytes;
    float vals[kPerLane];
    float dot = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t idx = lane + 32 * i;
      vals[i] = idx < width ? LoadElement(type, row, idx) : 0.0f;
      dot += qr[i] * vals[i];
    }
    for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, offset);
    const float score = dot * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max), weight = expf(score - new_max);
    running_sum = running_sum * correction + weight;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] = acc[i] * correction + weight * vals[i];
    running_max = new_max;
  }
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t idx = lane + 32 * i;
    if (idx < value_dim) warp_acc[warp * value_dim + idx] = acc[i];
  }
  __syncthreads();
  float global_max = -INFINITY;
  for (int w = 0; w < kWarps; ++w) global_max = fmaxf(global_max, warp_max[w]);
  float total = 0;
  for (int w = 0; w < kWarps; ++w) total += warp_sum[w] * (warp_sum[w] > 0 ? expf(warp_max[w] - global_max) : 0.0f);
  float* dst = out + (token * heads + h) * value_dim;
  for (int64_t c = threadIdx.x; c < value_dim; c += blockDim.x) {
    float v = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_sum[w] > 0) v += warp_acc[w * value_dim + c] * expf(warp_max[w] - global_max);
    }
    dst[c] = v / total;
  }
}

// All heads per block, split along the KV length (flash-decoding): block (split, token) walks
// tiles of kTile cached rows of its split; each row is dequantised once into shared memory
// and scored against every head's query there, so a row is read once per token instead of
// once per head. Partial (max, sum, acc) per split are merged by MlaCombineKernel.
constexpr int kTile = 32;
constexpr int kSplitThreads = 256;
constexpr int kMaxDimsPerThread = 64;

__global__ void __launch_bounds__(kSplitThreads) MlaSplitKernel(
    DType type, const float* q, const uint8_t* pool, size_t row_bytes, int64_t page_tokens, int64_t width,
    int64_t value_dim, int64_t heads, TokenMap map, float scale, int64_t split_len, float* part_max, float* part_sum,
    float* part_acc) {
  extern __shared__ float smem[];
  const int64_t stride = width + 1;                 // padded: row r, element i at r * stride + i
  float* qs = smem;                                 // [heads][stride]
  float* rows = qs + heads * stride;                // [kTile][stride]
  float* probs = rows + kTile * stride;             // [heads][kTile]
  float* head_max = probs + heads * kTile;          // [heads]
  float* head_sum = head_max + heads;               // [heads]
  float* head_corr = head_sum + heads;              // [heads]
  const int64_t split = blockIdx.x, splits = gridDim.x, token = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, warps = kSplitThreads / 32;
  for (int64_t i = tid; i < heads * width; i += kSplitThreads) qs[(i / width) * stride + i % width] = q[token * heads * width + i];
  for (int64_t h = tid; h < heads; h += kSplitThreads) {
    head_max[h] = -INFINITY;
    head_sum[h] = 0.0f;
  }
  const int64_t visible = map.position[token] + 1;
  const int64_t begin = split * split_len, end = min(visible, begin + split_len);
  const int threads_per_head = kSplitThreads / static_cast<int>(heads);
  const int my_head = tid / threads_per_head, my_lane = tid % threads_per_head;
  const int dims = static_cast<int>((value_dim + threads_per_head - 1) / threads_per_head);
  float acc[kMaxDimsPerThread];
#pragma unroll
  for (int j = 0; j < kMaxDimsPerThread; ++j) acc[j] = 0.0f;
  __syncthreads();
  for (int64_t p0 = begin; p0 < end; p0 += kTile) {
    const int count = static_cast<int>(min(static_cast<int64_t>(kTile), end - p0));
    for (int64_t i = tid; i < count * width; i += kSplitThreads) {
      const int r = static_cast<int>(i / width);
      const int64_t e = i % width;
      rows[r * stride + e] = LoadElement(type, pool + PoolRow(map, token, p0 + r, page_tokens) * row_bytes, e);
    }
    __syncthreads();
    for (int64_t pair = tid; pair < heads * kTile; pair += kSplitThreads) {
      const int h = static_cast<int>(pair / kTile), r = static_cast<int>(pair % kTile);
      float dot = -INFINITY;
      if (r < count) {
        dot = 0;
        const float* qh = qs + h * stride;
        const float* row = rows + r * stride;
        for (int64_t i = 0; i < width; ++i) dot += qh[i] * row[i];
        dot *= scale;
      }
      probs[h * kTile + r] = dot;
    }
    __syncthreads();
    for (int64_t h = warp; h < heads; h += warps) {  // a warp per head: lanes are the tile's rows
      const float score = probs[h * kTile + lane];
      float tile_max = score;
      for (int offset = 16; offset > 0; offset >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, offset));
      const float new_max = fmaxf(head_max[h], tile_max);
      const float p = lane < count ? expf(score - new_max) : 0.0f;
      float tile_sum = p;
      for (int offset = 16; offset > 0; offset >>= 1) tile_sum += __shfl_xor_sync(0xffffffff, tile_sum, offset);
      probs[h * kTile + lane] = p;
      __syncwarp();
      if (lane == 0) {
        const float corr = expf(head_max[h] - new_max);
        head_corr[h] = corr;
        head_sum[h] = head_sum[h] * corr + tile_sum;
        head_max[h] = new_max;
      }
    }
    __syncthreads();
    if (my_head < heads) {
      const float corr = head_corr[my_head];
      const float* p = probs + my_head * kTile;
#pragma unroll
      for (int j = 0; j < kMaxDimsPerThread; ++j) {
        if (j < dims) {
          const int64_t d = my_lane + static_cast<int64_t>(j) * threads_per_head;
          float a = acc[j] * corr;
          if (d < value_dim) {
            for (int r = 0; r < count; ++r) a += p[r] * rows[r * stride + d];
          }
          acc[j] = a;
        }
      }
    }
    __syncthreads();
  }
  const int64_t base = (token * splits + split) * heads;
  for (int64_t h = tid; h < heads; h += kSplitThreads) {
    part_max[base + h] = head_max[h];
    part_sum[base + h] = head_sum[h];
  }
  if (my_head < heads) {
#pragma unroll
    for (int j = 0; j < kMaxDimsPerThread; ++j) {
      const int64_t d = my_lane + static_cast<int64_t>(j) * threads_per_head;
      if (j < dims && d < value_dim) part_acc[(base + my_head) * value_dim + d] = acc[j];
    }
  }
}

__global__ void MlaCombineKernel(const float* part_max, const float* part_sum, const float* part_acc, int64_t splits,
                                 int64_t heads, int64_t value_dim, float* out) {
  const int64_t h = blockIdx.x, token = blockIdx.y;
  float global_max = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) global_max = fmaxf(global_max, part_max[(token * splits + s) * heads + h]);
  float total = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const int64_t i = (token * splits + s) * heads + h;
    if (part_sum[i] > 0) total += part_sum[i] * expf(part_max[i] - global_max);
  }
  for (int64_t d = threadIdx.x; d < value_dim; d += blockDim.x) {
    float v = 0;
    for (int64_t s = 0; s < splits; ++s) {
      const int64_t i = (token * splits + s) * heads + h;
      if (part_sum[i] > 0) v += part_acc[i * value_dim + d] * expf(part_max[i] - global_max);
    }
    out[(token * heads + h) * value_dim + d] = v / total;
  }
}

// Uploads the per-token map for a batch; returns device pointers.
TokenMap UploadTokenMap(CudaBackend& backend, absl::Span<const LatentSeqView> seqs, int64_t tokens) {
  std::vector<int32_t> data(2 * tokens);
  int32_t table_offset = 0;
  std::vector<int32_t> pages;
  for (const LatentSeqView& seq : seqs) {
    for (int64_t t = 0; t < seq.token_count; ++t) {
      data[seq.first_token + t] = static_cast<int32_t>(seq.cached_tokens + t);
      data[tokens + seq.first_token + t] = table_offset;
    }
    pages.insert(pages.end(), seq.page_table.begin(), seq.page_table.end());
    table_offset += static_cast<int32_t>(seq.page_table.size());
  }
  data.insert(data.end(), pages.begin(), pages.end());
  auto* device = static_cast<int32_t*>(backend.UploadScratch(4, data.data(), data.size() * sizeof(int32_t)));
  return TokenMap{device, device + tokens, device + 2 * tokens};
}

int64_t BatchTokens(absl::Span<const LatentSeqView> seqs) {
  int64_t n = 0;
  for (const LatentSeqView& seq : seqs) n = std::max(n, seq.first_token + seq.token_count);
  return n;
}

}  // namespace

void CudaBackend::LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs, const Tensor& pool) {
  CU_CHECK(pool.ne[0] == latent.ne[0] && latent.dtype == DType::kF32);
  for (const LatentSeqView& seq : seqs) {
    CU_CHECK((seq.cached_tokens + seq.token_count + pool.ne[1] - 1) / pool.ne[1] <= static_cast<int64_t>(seq.page_table.size()));
  }
  const int64_t tokens = BatchTokens(seqs);
  if (tokens == 0) return;
  TokenMap map = UploadTokenMap(*this, seqs, tokens);
  LatentStoreKernel<<<static_cast<unsigned>(tokens), 128, 0, stream_>>>(pool.dtype, DevF32(latent), latent.ne[0], map,
                                                                       pool.ne[1], pool.row_bytes(), DevPtr(pool));
  LAUNCH_OK();
}

void CudaBackend::MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs, float scale,
                               const Tensor& out) {
  const int64_t width = q.ne[0], heads = q.ne[1], value_dim = out.ne[0];
  CU_CHECK(pool.ne[0] == width && out.ne[1] == heads && value_dim <= width && width <= 1024);
  const int64_t tokens = BatchTokens(seqs);
  if (tokens == 0) return;
  bool prefill = false;
  for (const LatentSeqView& seq : seqs) prefill |= seq.token_count > kPrefillTokens;
  if (prefill) {
    for (const LatentSeqView& seq : seqs) MlaPrefillAttention(q, pool, seq, scale, out);
    return;
  }
  TokenMap map = UploadTokenMap(*this, seqs, tokens);
  const int64_t stride = width + 1;
  const size_t split_smem = static_cast<size_t>(heads * stride + kTile * stride + heads * kTile + 3 * heads) * sizeof(float);
  const bool heads_fit = heads <= 32 && kSplitThreads % heads == 0 &&
                         (value_dim + kSplitThreads / heads - 1) / (kSplitThreads / heads) <= kMaxDimsPerThread;
  // Decode batches (few queries, long contexts): the all-heads split-KV kernel.
  if (heads_fit && split_smem <= 200 * 1024) {
    int64_t longest = 0;
    for (const LatentSeqView& seq : seqs) longest = std::max(longest, seq.cached_tokens + seq.token_count);
    // Enough splits to fill the GPU for short batches, bounded by the partials' scratch size.
    const int64_t per_split_floats = tokens * heads * (value_dim + 2);
    int64_t splits = std::max<int64_t>(1, std::min<int64_t>({(longest + 511) / 512, 264 / std::max<int64_t>(1, tokens) + 1,
                                                              (int64_t{64} << 20) / per_split_floats}));
    const int64_t split_len = ((longest + splits - 1) / splits + kTile - 1) / kTile * kTile;
    splits = (longest + split_len - 1) / split_len;
    auto* parts = static_cast<float*>(Scratch(7, static_cast<size_t>(splits * per_split_floats) * sizeof(float)));
    float* part_max = parts;
    float* part_sum = part_max + splits * tokens * heads;
    float* part_acc = part_sum + splits * tokens * heads;
    static size_t configured = 0;
    if (split_smem > 48 * 1024 && split_smem > configured) {
      CUDA_OK(cudaFuncSetAttribute(MlaSplitKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(split_smem)));
      configured = split_smem;
    }
    MlaSplitKernel<<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(tokens)), kSplitThreads, split_smem, stream_>>>(
        pool.dtype, DevF32(q), DevPtr(pool), pool.row_bytes(), pool.ne[1], width, value_dim, heads, map, scale, split_len,
        part_max, part_sum, part_acc);
    LAUNCH_OK();
    MlaCombineKernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(tokens)), 128, 0, stream_>>>(
        part_max, part_sum, part_acc, splits, heads, value_dim, DevF32(out));
    LAUNCH_OK();
    return;
  }
  dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(tokens));
  const size_t smem = kWarps * value_dim * sizeof(float);
  const int64_t per_lane = (width + 31) / 32;
#define LS_MLA_LAUNCH(N)                                                                                        \
  MlaAttentionKernel<N><<<grid, kWarps * 32, smem, stream_>>>(pool.dtype, DevF32(q), DevPtr(pool), pool.row_bytes(), \
                                                              pool.ne[1], width, value_dim, heads, map, scale, DevF32(out))
  if (per_lane <= 2) {
    LS_MLA_LAUNCH(2);
  } else if (per_lane <= 4) {
    LS_MLA_LAUNCH(4);
  } else if (per_lane <= 8) {
    LS_MLA_LAUNCH(8);
  } else if (per_lane <= 18) {
    LS_MLA_LAUNCH(18);
  } else {
    LS_MLA_LAUNCH(32);
  }
#undef LS_MLA_LAUNCH
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
