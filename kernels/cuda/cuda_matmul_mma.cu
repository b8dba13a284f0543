// q4_0 / q8_0 weights x 9..64 activation columns on the int8 tensor cores (quant_mma.h), the
// scheme of llama.cpp's MMQ written for our layouts: activations rounded once to 8-bit blocks of
// 32 (q8_0's rule, as the CPU backend and the decode GEMVs round them), one
// mma.m16n8k32.s8 per block of 32 values, 16 activation columns by 8 weight rows, its integer
// sums scaled by the weight's and the activation's block scales into f32.
//
// A CTA of 4 warps owns 64 weight rows (16 a warp) over one slice of the reduction. The rows'
// bytes and the activation fragments of each run of 8 blocks come into shared memory by
// cp.async through a ring of stages, so the next runs are in flight while one is multiplied; the
// weights do not depend on the kernel before, so their first stages start before the
// dependent-launch wait. The activations are rounded once per input (cuda_quant_mma_round.cu;
// Backend::RoundActivations shares them among the projections of one normalised hidden state).
// The loop is bound by instruction latency with few warps (ncu, 2304x163840x32: 0.5 issued per
// scheduler, 2 warps each), so up to 32 columns a CTA keeps 3 stages and 128 registers, and 4
// (of q4_0 weights) fit a multiprocessor. Few rows (a 2,304-row projection is 36 CTAs) split the
// reduction, in whole runs, toward that many CTAs: the splits write partial sums and the last
// CTA of each row tile to finish (a ticket) adds them in split order, so a product is the same
// on every run (graph replay gives the un-recorded tokens).
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/quant_mma.h"
#include "kernels/cuda/row_pipeline.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 16;  // two 8-row MMA tiles; four lost (call 6: 20.3 against 15.6 us, 2304x4096x32)
constexpr int kRowTiles = kRowsPerWarp / 8;
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
constexpr int kRunBlocks = 8;  // slices and stages are whole runs of 8 blocks: 16-byte aligned
// Up to 2 column tiles: 3 stages and at most 128 registers, so that 4 CTAs of q4_0 weights (55
// KB each at 2 tiles) share a multiprocessor (against 4 stages and 206 registers, 2 CTAs: a
// batch-32 step 10.29 -> 9.30 ms at 8K prompts, H200, docs/benchmarks.md). q8_0 weights' stages
// are larger (78 KB at 2 tiles: 2 CTAs fit), and the plan still splits for 4: not measured. 3 or
// 4 tiles spill at 128 registers and keep 4 stages (2 CTAs fit) and a split for one CTA a
// multiprocessor.
constexpr int StagesFor(int m_tiles) { return m_tiles <= 2 ? 3 : 4; }
constexpr int CtasPerSmFor(int m_tiles) { return m_tiles <= 2 ? 4 : 1; }

constexpr int BlockBytes(DType t) { return t == DType::kQ4_0 ? 18 : 34; }

// Four bytes at a 2-byte aligned shared address (a block's values follow its 2-byte scale).
__device__ __forceinline__ uint32_t Load32At2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return uint32_t{h[0]} | (uint32_t{h[1]} << 16);
}

__device__ __forceinline__ float BlockScale(const uint8_t* block) {
  return __half2float(*reinterpret_cast<const __half*>(block));
}

// c = a (16x32 s8, row) . b (32x8 s8, col), s32.
__device__ __forceinline__ void MmaS8(int (&c)[4], const int4& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "r"(0));
}

// Shared-memory layout of one pipeline stage (a run of kRunBlocks blocks): the CTA's weight
// rows' bytes of the run (row stride padded so that the 8 rows one MMA reads start in different
// banks: 4 words mod 8), then the run's activation fragments (512 bytes per block and tile),
// then their scales (kMt * 16 floats per block).
template <DType T, int kMt>
struct Stage {
  static constexpr int kRowStride = kRunBlocks * BlockBytes(T) + ((kRunBlocks * BlockBytes(T) / 4) % 8 == 4 ? 0 : 16);
  static constexpr int kWeights = kRowsPerCta * kRowStride;
  static constexpr int kFragments = kRunBlocks * kMt * 512;
  static constexpr int kScales = kRunBlocks * kMt * 16 * 4;
  static constexpr int kBytes = kWeights + kFragments + kScales;
  static constexpr int kSmem = StagesFor(kMt) * kBytes;
};

// Run `run`'s weight rows into stage buffer `stage` (cp.async, uncommitted).
template <DType T, int kMt>
__device__ __forceinline__ void IssueWeights(uint8_t* stage, const uint8_t* w, size_t row_bytes, int64_t row0,
                                             int64_t n, int run) {
  constexpr int kChunks = kRunBlocks * BlockBytes(T) / 16;  // per row
  for (int i = threadIdx.x; i < kRowsPerCta * kChunks; i += kWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = row0 + r;
    CpAsync16(stage + r * Stage<T, kMt>::kRowStride + c * 16,
              w + (row < n ? row : n - 1) * row_bytes + size_t(run) * (kRunBlocks * BlockBytes(T)) + c * 16, row < n);
  }
}

// Run `run`'s activation fragments and scales into stage buffer `stage` (uncommitted).
template <DType T, int kMt>
__device__ __forceinline__ void IssueActivations(uint8_t* stage, const int4* q, const float* d, int run) {
  constexpr int kFragmentChunks = Stage<T, kMt>::kFragments / 16, kScaleChunks = Stage<T, kMt>::kScales / 16;
  const int4* q_run = q + size_t(run) * kFragmentChunks;
  const auto* d_run = reinterpret_cast<const int4*>(d + size_t(run) * kRunBlocks * kMt * 16);
  uint8_t* fragments = stage + Stage<T, kMt>::kWeights;
  for (int i = threadIdx.x; i < kFragmentChunks + kScaleChunks; i += kWarps * 32) {
    if (i < kFragmentChunks) {
      CpAsync16(fragments + i * 16, q_run + i, true);
    } else {
      CpAsync16(fragments + Stage<T, kMt>::kFragments + (i - kFragmentChunks) * 16, d_run + (i - kFragmentChunks), true);
    }
  }
}

// Grouped launches (MoE experts): blockIdx.z is the expert; its weights, rounded rows and (with
// out_rows null) outputs are `*_stride` bytes / elements after the previous expert's.
struct DeviceGroups {
  const int32_t* counts = nullptr;     // rows of each expert; null: one dense product
  const int32_t* first_row = nullptr;  // each expert's first sorted row
  const int32_t* out_rows = nullptr;   // sorted row -> output row, or null: [expert][m_tiles * 16][n]
  size_t w_stride = 0;
  size_t fragment_stride = 0;
};

// Up to kMaxQuantMmaParts products of one x in one launch (QuantMmaPart): the grid's row tiles
// are the parts' row tiles one part after another.
struct DeviceParts {
  int count = 0;
  int tile_begin[kMaxQuantMmaParts + 1] = {};  // each part's first row tile
  const uint8_t* w[kMaxQuantMmaParts] = {};
  float* y[kMaxQuantMmaParts] = {};
  int64_t n[kMaxQuantMmaParts] = {};
  size_t partial_offset[kMaxQuantMmaParts] = {};  // floats: each part's [slices][m][n] partial sums
};

// Runs [first_run, first_run + runs) of the reduction through a ring of kStages stage buffers:
// while run r is multiplied, runs r + 1 .. r + kStages - 1 are in flight.
template <DType T, int kMt>
__global__ void __launch_bounds__(kWarps * 32, CtasPerSmFor(kMt))
    QuantMmaKernel(DeviceParts parts, size_t row_bytes, int total_runs, int slice_runs, const int4* q, const float* d,
                   int m, float* partials, int* tickets, DeviceGroups groups) {
  extern __shared__ __align__(16) uint8_t smem[];
  using S = Stage<T, kMt>;
  AllowDependents();
  constexpr int kBytes = BlockBytes(T), kStages = StagesFor(kMt);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int part = 0;
  while (part + 1 < parts.count && int(blockIdx.x) >= parts.tile_begin[part + 1]) ++part;
  const uint8_t* w = parts.w[part];
  float* y = parts.y[part];
  const int64_t n = parts.n[part];
  partials += parts.partial_offset[part];
  const int64_t row0 = int64_t{int(blockIdx.x) - parts.tile_begin[part]} * kRowsPerCta;
  const int first_run = blockIdx.y * slice_runs;
  const int runs = slice_runs < total_runs - first_run ? slice_runs : total_runs - first_run;
  int tiles = kMt;  // 16-column tiles with columns
  const int32_t* out_rows = nullptr;
  if (groups.counts != nullptr) {
    // An expert's row count comes from the routing kernels before: no early weight loads.
    WaitForPredecessor();
    const int e = blockIdx.z;
    m = groups.counts[e];
    if (m == 0) return;
    tiles = (m + 15) / 16;
    w += e * groups.w_stride;
    q = reinterpret_cast<const int4*>(reinterpret_cast<const uint8_t*>(q) + e * groups.fragment_stride);
    d = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(d) + e * groups.fragment_stride);
    if (groups.out_rows != nullptr) {
      out_rows = groups.out_rows + groups.first_row[e];
    } else {
      y += size_t(e) * kMt * 16 * size_t(n);
    }
  }
  // The weights do not depend on the kernels before: their first stages start before the wait.
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < runs) IssueWeights<T, kMt>(smem + s * S::kBytes, w, row_bytes, row0, n, first_run + s);
  }
  WaitForPredecessor();  // the rounded activations
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < runs) IssueActivations<T, kMt>(smem + s * S::kBytes, q, d, first_run + s);
    CpAsyncCommit();
  }

  float acc[kMt][kRowTiles][4] = {};
  for (int r = 0; r < runs; ++r) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // run r landed for every thread; stage (r - 1) % kStages is free again
    const int next = r + kStages - 1;
    if (next < runs) {
      uint8_t* stage = smem + (next % kStages) * S::kBytes;
      IssueWeights<T, kMt>(stage, w, row_bytes, row0, n, first_run + next);
      IssueActivations<T, kMt>(stage, q, d, first_run + next);
    }
    CpAsyncCommit();
    const uint8_t* stage = smem + (r % kStages) * S::kBytes;
    const uint8_t* rows = stage + warp * kRowsPerWarp * S::kRowStride;
    const auto* fragments = reinterpret_cast<const int4*>(stage + S::kWeights);
    const auto* scales = reinterpret_cast<const float*>(stage + S::kWeights + S::kFragments);
#pragma unroll 2
    for (int b = 0; b < kRunBlocks; ++b) {
      int4 a[kMt];
      float d_lo[kMt], d_hi[kMt];
#pragma unroll
      for (int i = 0; i < kMt; ++i) {
        a[i] = fragments[(b * kMt + i) * 32 + lane];
        d_lo[i] = scales[b * kMt * 16 + i * 16 + g];
        d_hi[i] = scales[b * kMt * 16 + i * 16 + g + 8];
      }
#pragma unroll
      for (int j = 0; j < kRowTiles; ++j) {
        const uint8_t* tile = rows + j * 8 * S::kRowStride + b * kBytes;
        const uint8_t* block = tile + g * S::kRowStride;
        uint32_t b0, b1;
        if constexpr (T == DType::kQ4_0) {
          const uint32_t v = Load32At2(block + 2 + 4 * t);
          b0 = __vsub4(v & 0x0F0F0F0Fu, 0x08080808u);
          b1 = __vsub4((v >> 4) & 0x0F0F0F0Fu, 0x08080808u);
        } else {
          b0 = Load32At2(block + 2 + 4 * t);
          b1 = Load32At2(block + 18 + 4 * t);
        }
        const float w0 = BlockScale(tile + 2 * t * S::kRowStride), w1 = BlockScale(tile + (2 * t + 1) * S::kRowStride);
#pragma unroll
        for (int i = 0; i < kMt; ++i) {
          if (i >= tiles) break;  // an expert's tiles past its rows
          int c[4];
          MmaS8(c, a[i], b0, b1);
          acc[i][j][0] += static_cast<float>(c[0]) * (d_lo[i] * w0);
          acc[i][j][1] += static_cast<float>(c[1]) * (d_lo[i] * w1);
          acc[i][j][2] += static_cast<float>(c[2]) * (d_hi[i] * w0);
          acc[i][j][3] += static_cast<float>(c[3]) * (d_hi[i] * w1);
        }
      }
    }
  }
  // Column (token) i * 16 + g (+ 8), weight row row0 + 16 warp + 8 j + 2 t (+ 1).
  const bool split = gridDim.y > 1;
  float* dst = split ? partials + size_t{blockIdx.y} * size_t(m) * size_t(n) : y;
#pragma unroll
  for (int i = 0; i < kMt; ++i) {
#pragma unroll
    for (int j = 0; j < kRowTiles; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = i * 16 + g + (c >= 2 ? 8 : 0);
        const int64_t row = row0 + warp * kRowsPerWarp + j * 8 + 2 * t + (c & 1);
        if (col < m && row < n) dst[(out_rows != nullptr ? out_rows[col] : col) * n + row] = acc[i][j][c];
      }
    }
  }
  if (!split) return;
  // The last CTA of this row tile to finish sums every split's partials, in split order.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&tickets[blockIdx.x], 1) == int(gridDim.y) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Every element's loads of all splits are issued before any sum is stored (the loads of one
  // thread's elements are independent: a serial loop waited an L2 trip per element).
  constexpr int kPerThread = kMt * 16 * kRowsPerCta / (kWarps * 32);
  size_t at[kPerThread];
  bool valid[kPerThread];
  float sum[kPerThread];
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int e = threadIdx.x + u * kWarps * 32, col = e / kRowsPerCta;
    const int64_t row = row0 + e % kRowsPerCta;
    valid[u] = col < m && row < n;
    at[u] = size_t(col) * size_t(n) + size_t(valid[u] ? row : 0);
    sum[u] = valid[u] ? __ldcg(partials + at[u]) : 0.0f;
  }
  for (unsigned s = 1; s < gridDim.y; ++s) {
    const float* slice = partials + size_t(s) * size_t(m) * size_t(n);
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      if (valid[u]) sum[u] += __ldcg(slice + at[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    if (valid[u]) y[at[u]] = sum[u];
  }
  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;
}

template <DType T, int kMt>
void Launch(cudaStream_t stream, const QuantMmaPlan& plan, const DeviceParts& parts, size_t row_bytes, int64_t k,
            const int4* q, const float* d, int64_t m, float* partials, int* tickets, const DeviceGroups& groups,
            int experts) {
  constexpr int kSmem = Stage<T, kMt>::kSmem;
  static const bool configured =
      cudaFuncSetAttribute(QuantMmaKernel<T, kMt>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) == cudaSuccess;
  CU_CHECK(configured);
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.k_slices),
                  static_cast<unsigned>(experts));
  CUDA_OK(LaunchDependent(QuantMmaKernel<T, kMt>, grid, dim3(kWarps * 32), kSmem, stream, parts, row_bytes,
                          static_cast<int>(k / 32 / kRunBlocks), plan.slice_runs, q, d,
                          static_cast<int>(m), partials, tickets, groups));
}

template <DType T>
void LaunchTiles(cudaStream_t stream, const QuantMmaPlan& plan, const DeviceParts& parts, size_t row_bytes, int64_t k,
                 const int4* q, const float* d, int64_t m, float* partials, int* tickets,
                 const DeviceGroups& groups = {}, int experts = 1) {
  switch (plan.m_tiles) {
#define LS_QUANT_MMA_TILES(N) \
  case N: Launch<T, N>(stream, plan, parts, row_bytes, k, q, d, m, partials, tickets, groups, experts); break;
    LS_QUANT_MMA_TILES(1)
    LS_QUANT_MMA_TILES(2)
    LS_QUANT_MMA_TILES(3)
    LS_QUANT_MMA_TILES(4)
#undef LS_QUANT_MMA_TILES
    default: CU_CHECK(false);
  }
}

}  // namespace

bool QuantMmaApplies(DType type, const void* w, size_t row_bytes, int64_t k, int64_t m) {
  return (type == DType::kQ4_0 || type == DType::kQ8_0) && m >= kQuantMmaMinColumns && m <= kQuantMmaMaxColumns &&
         k > 0 && k % (32 * kRunBlocks) == 0 && row_bytes == static_cast<size_t>(k / 32 * BlockBytes(type)) &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

QuantMmaPlan PlanQuantMma(int64_t k, absl::Span<const QuantMmaPart> parts, int64_t m, int sms) {
  QuantMmaPlan plan;
  plan.m_tiles = static_cast<int>((m + 15) / 16);
  const int64_t runs = k / 32 / kRunBlocks;
  int64_t row_tiles = 0, rows = 0;
  for (const QuantMmaPart& part : parts) {
    row_tiles += (part.n + kRowsPerCta - 1) / kRowsPerCta;
    rows += part.n;
  }
  plan.row_tiles = static_cast<int>(row_tiles);
  // Enough slices of the reduction for every CTA a multiprocessor holds (4 with 1..32 columns:
  // 2304x4096x16 in graph 8.1% -> 12.2% of the copy bandwidth against one CTA a multiprocessor).
  const int64_t ctas = int64_t{sms} * CtasPerSmFor(plan.m_tiles);
  const int64_t slices = row_tiles >= ctas ? 1 : std::min<int64_t>(runs, (ctas + row_tiles - 1) / row_tiles);
  const int64_t slice_runs = (runs + slices - 1) / slices;
  plan.slice_runs = static_cast<int>(slice_runs);
  plan.k_slices = static_cast<int>((runs + slice_runs - 1) / slice_runs);
  plan.partial_bytes = plan.k_slices > 1 ? static_cast<size_t>(plan.k_slices) * m * rows * 4 : 0;
  return plan;
}

void LaunchQuantMma(cudaStream_t stream, const QuantMmaPlan& plan, DType type, absl::Span<const QuantMmaPart> parts,
                    size_t row_bytes, int64_t k, const void* fragments, int64_t m, float* partials, int* tickets) {
  CU_CHECK(!parts.empty() && parts.size() <= kMaxQuantMmaParts);
  DeviceParts device;
  device.count = static_cast<int>(parts.size());
  size_t partial_offset = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    device.w[i] = parts[i].w;
    device.y[i] = parts[i].y;
    device.n[i] = parts[i].n;
    device.partial_offset[i] = partial_offset;
    device.tile_begin[i + 1] = device.tile_begin[i] + static_cast<int>((parts[i].n + kRowsPerCta - 1) / kRowsPerCta);
    partial_offset += static_cast<size_t>(plan.k_slices) * m * parts[i].n;
  }
  const auto* q = static_cast<const int4*>(fragments);
  const float* d = ScalesOf(static_cast<const int8_t*>(fragments), k, plan.m_tiles);
  if (type == DType::kQ4_0) {
    LaunchTiles<DType::kQ4_0>(stream, plan, device, row_bytes, k, q, d, m, partials, tickets);
  } else {
    LaunchTiles<DType::kQ8_0>(stream, plan, device, row_bytes, k, q, d, m, partials, tickets);
  }
}

void LaunchGroupedQuantMma(cudaStream_t stream, const QuantMmaGroups& groups, DType type, const uint8_t* w,
                           size_t row_bytes, int64_t k, int64_t n, const void* fragments, bool to_slots, float* y) {
  QuantMmaPlan plan;
  plan.m_tiles = groups.m_tiles;
  plan.row_tiles = static_cast<int>((n + kRowsPerCta - 1) / kRowsPerCta);
  plan.slice_runs = static_cast<int>(k / 32 / kRunBlocks);
  DeviceGroups device;
  device.counts = groups.counts;
  device.first_row = groups.first_row;
  device.out_rows = to_slots ? groups.row_slot : nullptr;
  device.w_stride = row_bytes * static_cast<size_t>(n);
  device.fragment_stride = QuantMmaRoundedBytes(k, groups.m_tiles * 16);
  DeviceParts part;
  part.count = 1;
  part.w[0] = w;
  part.y[0] = y;
  part.n[0] = n;
  part.tile_begin[1] = plan.row_tiles;
  const auto* q = static_cast<const int4*>(fragments);
  const float* d = ScalesOf(static_cast<const int8_t*>(fragments), k, groups.m_tiles);
  if (type == DType::kQ4_0) {
    LaunchTiles<DType::kQ4_0>(stream, plan, part, row_bytes, k, q, d, 0, nullptr, nullptr, device, groups.experts);
  } else {
    LaunchTiles<DType::kQ8_0>(stream, plan, part, row_bytes, k, q, d, 0, nullptr, nullptr, device, groups.experts);
  }
}

bool QuantMmaEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LATENTSERVE_CUDA_QUANT_MMA");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

}  // namespace latentserve::kernels::cuda
