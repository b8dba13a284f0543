// MLA decode over the paged latent cache, read in place (no gather into a dense matrix): the
// absorbed form, one new token per sequence, every head of a token in one CTA so each cache
// row is read once for all heads. The keys are split into ranges sized so the launch has
// about two CTAs per multiprocessor (at least 128 keys a range); one CTA per (range, sequence) walks its range in 64-row tiles straight from the pages
// (cp.async, double buffered, f16 caches; other cache types dequantised on the way in):
//   S [H x 64] = Q [H x L] . rows^T          (mma.sync f16, f32 accumulation; warps split
//                                            keys x dimensions, queries held in registers)
//   online softmax per head (base 2, queries pre-scaled by scale * log2 e)
//   O [H x R] += P [H x 64] . rows[:, 0:R]   (each warp owns 64 of the R output columns)
// and writes its unnormalised O with the range's max and sum; a second kernel merges the
// ranges (flash-decoding; the Hopper kernel, cuda_mla_decode_wgmma.cu, mostly merges its own).
// Shapes: L = 576, R = 512, H a multiple of 16 up to 32.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_mla_decode.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kWidth = kMlaDecodeWidth;  // L: latent row
constexpr int kValue = kMlaDecodeValue;  // R: value part of the row
constexpr int kMaxHeads = 32;
constexpr int kTile = kMlaDecodeTile;    // cache rows per tile
constexpr int kMaxRanges = 1024; // ranges per sequence at most (the merge keeps their weights in shared memory)
constexpr int kMaxRangePages = 1024;  // page-table entries a range may span (copied to shared memory)
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowChunks = kWidth / 8;  // 16-byte chunks per row (72)
constexpr size_t kRowsBytes = size_t{kTile} * kWidth * 2;
constexpr int kDimGroups = 4;   // warps that split a tile's 576 dimensions (kWarps / 2)
constexpr size_t kSmemBytes = size_t{kMaxHeads} * kWidth * 2 + 2 * kRowsBytes +
                              size_t{kDimGroups} * kMaxHeads * kTile * 4 + size_t{kMaxHeads} * kTile * 2 +
                              3 * kMaxHeads * 4 + kMaxRangePages * 4;

using DecodeSeq = MlaDecodeSeq;
__device__ __forceinline__ int64_t VisibleKeys(const DecodeSeq& seq, const int32_t* positions, int index) {
  return MlaDecodeVisibleKeys(seq, positions, index);
}
__host__ __device__ __forceinline__ int64_t SplitKeys(int64_t keys, int ranges) { return MlaDecodeSplitKeys(keys, ranges); }

__device__ __forceinline__ int Swizzle(int row, int chunk) { return row * kRowChunks + (chunk ^ (row & 7)); }

// One CTA per (key range, sequence). kMTiles = heads / 16.
template <int kMTiles>
__global__ void __launch_bounds__(kThreads, 1)
    MlaDecodePagedKernel(const float* q, float scale_log2, DType type, const uint8_t* pool, size_t row_bytes,
                         int64_t page_tokens, const int32_t* tables, const DecodeSeq* seqs, const int32_t* positions,
                         float* partial, float* partial_max, float* partial_sum) {
  constexpr int kHeads = kMTiles * 16;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* s_q = reinterpret_cast<__half*>(smem);                      // [H][576], swizzled
  __half* s_rows = s_q + kMaxHeads * kWidth;                          // 2 x [64][576], swizzled
  float* s_scores = reinterpret_cast<float*>(s_rows + 2 * kTile * kWidth);  // [dim group][H][64]
  __half* s_p = reinterpret_cast<__half*>(s_scores + kDimGroups * kMaxHeads * kTile);  // [H][64], swizzled
  float* s_max = reinterpret_cast<float*>(s_p + kMaxHeads * kTile);        // [H]
  float* s_sum = s_max + kMaxHeads;
  float* s_correction = s_sum + kMaxHeads;
  int32_t* s_table = reinterpret_cast<int32_t*>(s_correction + kMaxHeads);  // this range's pages
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const DecodeSeq seq = seqs[blockIdx.y];
  const int64_t keys = VisibleKeys(seq, positions, blockIdx.y);
  const int64_t split_keys = SplitKeys(keys, seq.ranges);
  const int64_t begin = int64_t{blockIdx.x} * split_keys;
  if (begin >= keys) return;  // this sequence needs fewer ranges than the grid has
  AllowDependents();  // the merge may be placed as CTAs finish; it waits for all of them
  const int64_t end = min(keys, begin + split_keys);
  const int tiles = static_cast<int>((end - begin + kTile - 1) / kTile);
  const int32_t* table = tables + seq.table_offset;
  const int split = seq.first_split + static_cast<int>(blockIdx.x);

  const float* q_token = q + seq.token * kHeads * kWidth;
  for (int i = tid; i < kHeads * kWidth; i += kThreads) {
    const int h = i / kWidth, e = i % kWidth;
    s_q[Swizzle(h, e / 8) * 8 + e % 8] = __float2half_rn(q_token[i] * scale_log2);
  }
  if (tid < kHeads) {
    s_max[tid] = -INFINITY;
    s_sum[tid] = 0.0f;
  }
  // The range's page ids, once: the tile loads then take row addresses from shared memory
  // instead of waiting on a global page-table read per 16-byte copy.
  const uint32_t pt = static_cast<uint32_t>(page_tokens);
  const uint32_t first_page = static_cast<uint32_t>(begin) / pt;
  const int range_pages = static_cast<int>((static_cast<uint32_t>(end - 1) / pt) - first_page + 1);
  for (int i = tid; i < range_pages; i += kThreads) s_table[i] = table[first_page + i];
  __syncthreads();
  // S is split over the warps by (keys, dimensions): warp w takes keys 32 (w % 2) .. + 31 of
  // each tile and k-steps 9 (w / 2) .. + 8 of the 36 over the 576 dimensions, so every cache
  // row element is read from shared memory once, and this warp's query fragments (all heads,
  // its 9 k-steps) stay in registers for the whole range. Each dimension group stores its
  // partial scores in its own slice of s_scores; the softmax adds the four (shared-memory
  // float atomics are compare-and-swap loops, and cost more than the rest of the tile).
  constexpr int kStepsPerWarp = kWidth / 16 / 4;
  const int key_group = warp % 2, dim_group = warp / 2;
  uint32_t q_frag[kStepsPerWarp][kMTiles][4];
#pragma unroll
  for (int kk = 0; kk < kStepsPerWarp; ++kk) {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      const int qr = m * 16 + (lane & 15), qc = 2 * (dim_group * kStepsPerWarp + kk) + (lane >> 4);
      LdMatrixX4(q_frag[kk][m], s_q + Swizzle(qr, qc) * 8);
    }
  }
  auto load_tile = [&](int tile, int stage) {
    __half* dst = s_rows + stage * kTile * kWidth;
    const int64_t first = begin + int64_t{tile} * kTile;
    if (type == DType::kF16) {
      for (int i = tid; i < kTile * kRowChunks; i += kThreads) {
        const int r = i / kRowChunks, c = i % kRowChunks;
        const int64_t p = first + r;
        const bool valid = p < end;
        const uint32_t pu = static_cast<uint32_t>(p);  // positions < 2^31 (checked by the launcher)
        const int64_t row = valid ? int64_t{s_table[pu / pt - first_page]} * pt + pu % pt : 0;
        CpAsync16(dst + Swizzle(r, c) * 8, pool + row * row_bytes + c * 16, valid);
      }
    } else {
      for (int i = tid; i < kTile * kWidth; i += kThreads) {
        const int r = i / kWidth, e = i % kWidth;
        const int64_t p = first + r;
        float v = 0.0f;
        if (p < end) {
          const uint32_t pu = static_cast<uint32_t>(p);
          v = LoadElement(type, pool + (int64_t{s_table[pu / pt - first_page]} * pt + pu % pt) * row_bytes, e);
        }
        dst[Swizzle(r, e / 8) * 8 + e % 8] = __float2half_rn(v);
      }
    }
  };
  load_tile(0, 0);
  CpAsyncCommit();

  // This warp's output columns: 64 of the 512, for every head (kMTiles x 8 n-tiles of 8).
  float o[kMTiles][8][4];
#pragma unroll
  for (int m = 0; m < kMTiles; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) o[m][j][0] = o[m][j][1] = o[m][j][2] = o[m][j][3] = 0.0f;

  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < tiles) {
      load_tile(tile + 1, stage ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const __half* rows = s_rows + stage * kTile * kWidth;
    {
      float s[kMTiles][4][4] = {};  // heads x this warp's 4 n-tiles of 8 keys
#pragma unroll
      for (int kk = 0; kk < kStepsPerWarp; ++kk) {
        const int step = dim_group * kStepsPerWarp + kk;
#pragma unroll
        for (int np = 0; np < 2; ++np) {  // 16 keys: n-tiles 2 np, 2 np + 1
          uint32_t b[4];
          const int r = key_group * 32 + np * 16 + (lane & 7) + ((lane >> 4) << 3), c = 2 * step + ((lane >> 3) & 1);
          LdMatrixX4(b, rows + Swizzle(r, c) * 8);
#pragma unroll
          for (int m = 0; m < kMTiles; ++m) {
            MmaF16(s[m][2 * np], q_frag[kk][m], b[0], b[1]);
            MmaF16(s[m][2 * np + 1], q_frag[kk][m], b[2], b[3]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        const int h = m * 16 + lane / 4;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int key = key_group * 32 + j * 8 + 2 * (lane & 3);
          float* part = s_scores + dim_group * kHeads * kTile;
          *reinterpret_cast<float2*>(&part[h * kTile + key]) = make_float2(s[m][j][0], s[m][j][1]);
          *reinterpret_cast<float2*>(&part[(h + 8) * kTile + key]) = make_float2(s[m][j][2], s[m][j][3]);
        }
      }
    }
    __syncthreads();
    // Online softmax: warp w takes heads w, w + 8, ...; two keys per lane.
    for (int h = warp; h < kHeads; h += kWarps) {
      // The four dimension groups' partial scores added; keys past the range masked.
      const int64_t key0 = begin + int64_t{tile} * kTile;
      float a = 0.0f, b = 0.0f;
#pragma unroll
      for (int g = 0; g < kDimGroups; ++g) {
        a += s_scores[(g * kHeads + h) * kTile + lane];
        b += s_scores[(g * kHeads + h) * kTile + lane + 32];
      }
      a = key0 + lane < end ? a : -INFINITY;
      b = key0 + lane + 32 < end ? b : -INFINITY;
      float m = fmaxf(a, b);
      for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
      const float old_max = s_max[h], new_max = fmaxf(old_max, m);  // the range's first key is visible
      const float pa = exp2f(a - new_max), pb = exp2f(b - new_max);
      float sum = pa + pb;
      for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
      s_p[(h * 8 + ((lane / 8) ^ (h & 7))) * 8 + lane % 8] = __float2half_rn(pa);
      s_p[(h * 8 + ((4 + lane / 8) ^ (h & 7))) * 8 + lane % 8] = __float2half_rn(pb);
      __syncwarp();  // every lane has read s_max[h] (racecheck does not count the shuffles as order)
      if (lane == 0) {
        const float correction = exp2f(old_max - new_max);
        s_correction[h] = correction;
        s_sum[h] = s_sum[h] * correction + sum;
        s_max[h] = new_max;
      }
    }
    __syncthreads();
    // O: rescale, then += P V over the tile's 64 keys for this warp's 64 value columns.
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      const float c0 = s_correction[m * 16 + lane / 4], c1 = s_correction[m * 16 + lane / 4 + 8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        o[m][j][0] *= c0;
        o[m][j][1] *= c0;
        o[m][j][2] *= c1;
        o[m][j][3] *= c1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        const int pr = m * 16 + (lane & 15), pc = 2 * kk + (lane >> 4);
        const unsigned addr = (pr * 8 + (pc ^ (pr & 7))) * 8;
        LdMatrixX4(a[m], s_p + addr);
      }
#pragma unroll
      for (int dp = 0; dp < 4; ++dp) {  // 16 value columns per step
        uint32_t b[4];
        const int r = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), c = warp * 8 + 2 * dp + (lane >> 4);
        LdMatrixX4<true>(b, rows + Swizzle(r, c) * 8);
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
          MmaF16(o[m][2 * dp], a[m], b[0], b[1]);
          MmaF16(o[m][2 * dp + 1], a[m], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // buffers are refilled next
  }
  // Unnormalised partial output of this range: [split][H][R].
#pragma unroll
  for (int m = 0; m < kMTiles; ++m) {
    const int h = m * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int col = warp * 64 + j * 8 + 2 * (lane & 3);
      float* dst = partial + (int64_t{split} * kHeads + h) * kValue + col;
      *reinterpret_cast<float2*>(dst) = make_float2(o[m][j][0], o[m][j][1]);
      *reinterpret_cast<float2*>(dst + 8 * kValue) = make_float2(o[m][j][2], o[m][j][3]);
    }
  }
  if (tid < kHeads) {
    partial_max[split * kHeads + tid] = s_max[tid];
    partial_sum[split * kHeads + tid] = s_sum[tid];
  }
}

// One block per (head, sequence, 32 value columns): out = sum_r 2^(m_r - M) O_r / sum_r 2^(m_r - M) l_r.
// The ranges' weights go to shared memory once; then each of the 8 warps sums every 8th range
// for the 32 columns (one 128-byte line per range and warp), and the warps' sums are added.
// Launched as a programmatic dependent: it waits for the decode kernel before reading.
constexpr int kMergeColumns = 32, kMergeGroups = 8;
__global__ void __launch_bounds__(kMergeColumns * kMergeGroups)
    MergeRangesKernel(const float* partial, const float* partial_max, const float* partial_sum, const DecodeSeq* seqs,
                      const int32_t* positions, int64_t heads, float* out) {
  AllowDependents();
  __shared__ float weight[kMaxRanges];
  __shared__ float total;
  __shared__ float sums[kMergeGroups][kMergeColumns];
  WaitForPredecessor();
  const DecodeSeq seq = seqs[blockIdx.y];
  const int64_t h = blockIdx.x;
  const int64_t keys = VisibleKeys(seq, positions, blockIdx.y);
  const int64_t split_keys = SplitKeys(keys, seq.ranges);
  const int ranges = static_cast<int>((keys + split_keys - 1) / split_keys);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) {
    float m = -INFINITY;
    for (int r = lane; r < ranges; r += 32) m = fmaxf(m, partial_max[(seq.first_split + r) * heads + h]);
    for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
    float sum = 0.0f;
    for (int r = lane; r < ranges; r += 32) {
      const int64_t i = (seq.first_split + r) * heads + h;
      weight[r] = exp2f(partial_max[i] - m);
      sum += weight[r] * partial_sum[i];
    }
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (lane == 0) total = sum;
  }
  __syncthreads();
  const int64_t d = blockIdx.z * int64_t{kMergeColumns} + lane;
  float acc = 0.0f;
#pragma unroll 4
  for (int r = warp; r < ranges; r += kMergeGroups) {
    acc += weight[r] * partial[((seq.first_split + r) * heads + h) * kValue + d];
  }
  sums[warp][lane] = acc;
  __syncthreads();
  if (warp == 0) {
    float x = 0.0f;
#pragma unroll
    for (int g = 0; g < kMergeGroups; ++g) x += sums[g][lane];
    out[(seq.token * heads + h) * kValue + d] = x / total;
  }
}

}  // namespace

bool CudaBackend::MlaDecodePaged(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs,
                                 float scale, const Tensor& out) {
  const int64_t heads = q.ne[1];
  if (q.ne[0] != kWidth || out.ne[0] != kValue || heads % 16 != 0 || heads > kMaxHeads) return false;
  // LATENTSERVE_MLA_DECODE: unset or "wgmma" the Hopper kernel where it applies, "mma" the
  // mma.sync kernel, "gather" neither (the caller gathers the rows; benchmarks).
  const char* forced = std::getenv("LATENTSERVE_MLA_DECODE");
  if (forced != nullptr && std::strcmp(forced, "gather") == 0) return false;
  if (seqs.empty()) return true;
  const int64_t page_tokens = pool.ne[1];
  const int64_t pool_rows = pool.ne[1] * pool.ne[2] * pool.ne[3];
  // The Hopper kernel: a Hopper GPU (it is built for sm_90a alone), f16 rows, tiles that never
  // cross a page, TMA row coordinates in 32 bits.
  int major = 0;
  CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
  const bool wgmma = !(forced != nullptr && std::strcmp(forced, "mma") == 0) && major == 9 &&
                     pool.dtype == DType::kF16 && page_tokens % kTile == 0 && pool_rows < (int64_t{1} << 31);
  // Both kernels fit one CTA per multiprocessor (222 KB and 220 KB of shared memory); the
  // mma.sync kernel's grid is two waves of them (its ranges are shorter), the wgmma kernel's one.
  const int ctas_per_sm = wgmma ? 1 : 2;
  const int device_sms = sms_;
  std::vector<DecodeSeq> meta;
  std::vector<int32_t> tables;
  const int32_t* device_tables = nullptr;
  const int32_t* positions = nullptr;
  int32_t splits = 0;
  int max_ranges = 0;
  const DeviceStep* step = seqs[0].device;
  if (step != nullptr) {
    // A recorded step: a fixed grid (ctas_per_sm per SM over the batch), each sequence's
    // ranges sized at run time from its position; pages straight from the step's tables.
    const int64_t batch = static_cast<int64_t>(seqs.size()), stride = step->page_tables.ne[0];
    if (step->positions.elements() < batch || step->page_tables.rows() < batch) return false;
    const int ranges =
        static_cast<int>(std::clamp<int64_t>(ctas_per_sm * int64_t{device_sms} / batch, 1, kMaxRanges));
    const int64_t max_keys = stride * page_tokens;
    if (max_keys >= (int64_t{1} << 31)) return false;
    if (!wgmma && SplitKeys(max_keys, ranges) / page_tokens + 2 > kMaxRangePages) return false;
    for (int64_t b = 0; b < batch; ++b) {
      if (seqs[b].device != step || seqs[b].token_count != 1 || seqs[b].first_token != b) return false;
      meta.push_back({max_keys, b, static_cast<int32_t>(b * stride), splits, ranges});
      splits += ranges;
    }
    max_ranges = ranges;
    device_tables = reinterpret_cast<const int32_t*>(DevPtr(step->page_tables));
    positions = reinterpret_cast<const int32_t*>(DevPtr(step->positions));
  } else {
    int64_t total_keys = 0;
    for (const LatentSeqView& seq : seqs) {
      if (seq.token_count != 1 || seq.cached_tokens + 1 >= (int64_t{1} << 31)) return false;  // 32-bit positions
      total_keys += seq.cached_tokens + 1;
    }
    const int64_t split = SplitKeys(std::max<int64_t>(1, total_keys / (ctas_per_sm * int64_t{device_sms})), 1);
    // The mma.sync kernel keeps a range's page ids in shared memory.
    if (!wgmma && split / page_tokens + 2 > kMaxRangePages) return false;
    std::vector<int32_t> plan_offsets;
    device_tables = SharedPlan(seqs, &plan_offsets);  // the forward's page plan, if any
    for (size_t i = 0; i < seqs.size(); ++i) {
      const LatentSeqView& seq = seqs[i];
      const int64_t keys = seq.cached_tokens + 1;
      const int64_t ranges = (keys + split - 1) / split;
      if (ranges > kMaxRanges) return false;
      const int32_t table = device_tables != nullptr ? plan_offsets[i] : static_cast<int32_t>(tables.size());
      meta.push_back({keys, seq.first_token, table, splits, static_cast<int32_t>(ranges)});
      if (device_tables == nullptr) tables.insert(tables.end(), seq.page_table.begin(), seq.page_table.end());
      splits += static_cast<int32_t>(ranges);
      max_ranges = std::max(max_ranges, static_cast<int>(ranges));
    }
    if (device_tables == nullptr) {
      device_tables = static_cast<int32_t*>(UploadScratch(14, tables.data(), tables.size() * sizeof(int32_t)));
    }
  }
  // The Hopper kernel merges the ranges itself for a batch of several sequences, where the
  // CTAs of sequences of several ranges (which wait for each other) number at most the
  // multiprocessors: one CTA each fits at once. bench-ops, one call (docs/benchmarks.md): 32
  // sequences of 32,768 keys 88.1% of the copy rate against 83.0% with the merge kernel, but
  // one sequence 64.0% against 65.3% at 131,072 keys and 91.0% against 93.5% at 1,048,576, so
  // a batch of one keeps the merge kernel. LATENTSERVE_MLA_DECODE_MERGE=kernel / inside forces
  // either (same-binary comparisons).
  const char* merge = std::getenv("LATENTSERVE_MLA_DECODE_MERGE");
  const bool forced_kernel = merge != nullptr && std::strcmp(merge, "kernel") == 0;
  const bool forced_inside = merge != nullptr && std::strcmp(merge, "inside") == 0;
  int64_t waiting_ctas = 0;
  for (const DecodeSeq& seq : meta) waiting_ctas += seq.ranges > 1 ? seq.ranges : 0;
  const bool merge_inside = wgmma && !forced_kernel && (forced_inside || meta.size() > 1) &&
                            waiting_ctas <= device_sms;
  // (In a recording the plan is one of the recording's constants, not a copy per replay.)
  auto* device_meta = static_cast<DecodeSeq*>(UploadScratch(13, meta.data(), meta.size() * sizeof(DecodeSeq)));
  auto* partial = static_cast<float*>(Scratch(15, static_cast<size_t>(splits) * heads * (kValue + 2) * 4));
  float* partial_max = partial + static_cast<int64_t>(splits) * heads * kValue;
  float* partial_sum = partial_max + static_cast<int64_t>(splits) * heads;
  const dim3 grid(static_cast<unsigned>(max_ranges), static_cast<unsigned>(meta.size()));
  const float scale_log2 = scale * 1.4426950408889634f;
  if (wgmma) {
    MlaDecodeWgmmaArgs args{DevF32(q),        scale_log2,   reinterpret_cast<const __half*>(DevPtr(pool)),
                            pool_rows,        static_cast<int64_t>(pool.row_bytes()), page_tokens,
                            device_tables,    device_meta,  positions,
                            partial,          partial_max,  partial_sum,
                            merge_inside ? Tickets(mla_tickets_, static_cast<int64_t>(meta.size())) : nullptr,
                            DevF32(out),      static_cast<int>(heads), max_ranges, static_cast<int>(meta.size())};
    CUDA_OK(LaunchMlaDecodeWgmma(args, stream_));
    if (merge_inside) return true;
  } else {
    auto kernel = heads == 16 ? MlaDecodePagedKernel<1> : MlaDecodePagedKernel<2>;
    CUDA_OK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)));
    kernel<<<grid, kThreads, kSmemBytes, stream_>>>(DevF32(q), scale_log2, pool.dtype, DevPtr(pool), pool.row_bytes(),
                                                    page_tokens, device_tables, device_meta, positions, partial,
                                                    partial_max, partial_sum);
    LAUNCH_OK();
  }
  CUDA_OK(LaunchDependent(MergeRangesKernel,
                          dim3(static_cast<unsigned>(heads), static_cast<unsigned>(meta.size()), kValue / kMergeColumns),
                          dim3(kMergeColumns * kMergeGroups), 0, stream_, static_cast<const float*>(partial),
                          static_cast<const float*>(partial_max), static_cast<const float*>(partial_sum),
                          static_cast<const DecodeSeq*>(device_meta), positions, heads, DevF32(out)));
  return true;
}

}  // namespace latentserve::kernels::cuda
