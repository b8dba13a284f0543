// q4_0 / q8_0 weights x 9..64 activation columns (a batched decode step) on the f16 tensor
// cores: each weight block is dequantised to f16 in registers (its scale folded in) and is the
// A operand of mma.m16n8k16 (16 weight rows), the activations are f16 B fragments of 8 columns
// (quant_mma.h's layout, written once per input by cuda_quant_mma_round.cu), and the sums stay
// in f32 accumulators across the whole reduction.
//
// Why f16 and not the int8 MMA on q8_0-rounded activations (the kernel this replaced, llama.cpp's
// MMQ scheme): with 8-bit activation blocks every MMA's integer sums need their block's two
// scales (a conversion, a multiply and an add per output and block). Here the per-block work is
// per weight value (a LOP3, an HSUB2 and an HMUL2 per two values), none is per output,
// and with the weights as A an expert holding 8 tokens fills its MMA's 8 columns (the int8
// form's 16 activation rows were half padding). Both forms are bound by latency with ~4 warps a
// scheduler, not by issue (ncu, 2304x163840x32: int8 0.65 issued a scheduler a cycle, 173.7 us;
// this form before its accumulator chains 0.53, 179.2 us, its first stall "wait" on the MMA
// before): the chains below are what made it faster (a batch-32 step at 8K prompts 9.31 -> 9.02
// ms, docs/benchmarks.md). The numerics are the cuBLAS prefill path's: weights exactly (v - 8) * d
// rounded to f16, activations rounded to f16, f32 sums.
//
// A CTA of 8 warps owns 128 weight rows (16 a warp) over one slice of the reduction. The rows'
// bytes and the activation fragments of each run of 8 blocks come into shared memory by
// cp.async through a ring of stages, so the next runs are in flight while one is multiplied; the
// weights do not depend on the kernel before, so their first stages start before the
// dependent-launch wait. Few rows (a 2,304-row projection is 18 CTAs) split the reduction, in
// whole runs, toward two CTAs a multiprocessor: the splits write partial sums and the last CTA of
// each row tile to finish (a ticket) adds them in split order, so a product is the same on every
// run (graph replay gives the un-recorded tokens).
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/quant_mma.h"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 16;  // one m16 A tile
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
constexpr int kRunBlocks = 8;  // slices and stages are whole runs of 8 blocks: 16-byte aligned
// Up to 4 column tiles two CTAs share a multiprocessor (128 registers a thread); at 8 tiles the
// accumulators spill at 128 (448 bytes a thread with one chain, ptxas), so those run one CTA a
// multiprocessor (255 registers, no spill).
constexpr int CtasPerSmFor(int tiles) { return tiles <= 4 ? 2 : 1; }
constexpr int StageBudgetFor(int tiles) { return 220 * 1024 / CtasPerSmFor(tiles); }  // shared bytes a CTA

constexpr int BlockBytes(DType t) { return t == DType::kQ4_0 ? 18 : 34; }

// Shared-memory layout of one pipeline stage (a run of kRunBlocks blocks): the CTA's weight
// rows' bytes of the run (row stride padded so that the 8 rows one MMA reads start in different
// banks: 4 words mod 8), then the run's activation fragments, kNt 8-column tiles a block (512
// bytes each: a lane's 16). As many stages as fit the CTA's share of shared memory, 2 to 4.
template <DType T, int kNt>
struct Stage {
  static constexpr int kRowStride = kRunBlocks * BlockBytes(T) + ((kRunBlocks * BlockBytes(T) / 4) % 8 == 4 ? 0 : 16);
  static constexpr int kWeights = kRowsPerCta * kRowStride;
  static constexpr int kFragments = kRunBlocks * kNt * 512;
  static constexpr int kBytes = kWeights + kFragments;
  static constexpr int kFit = StageBudgetFor(kNt) / kBytes;
  static constexpr int kStages = kFit > 4 ? 4 : (kFit < 2 ? 2 : kFit);
  static constexpr int kSmem = kStages * kBytes;
};

// Four bytes at a 2-byte aligned shared address (a block's values follow its 2-byte scale).
__device__ __forceinline__ uint32_t Load32At2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return uint32_t{h[0]} | (uint32_t{h[1]} << 16);
}

// One weight row's values of block b for lane (g, t): a q4_0 or q8_0 block's 4-byte word at
// byte 4t of its values gives the row's f16 pairs of both MMAs of the block (k 0..15, 16..31):
// pair p of MMA h holds the values {4t, 4t + 2} (p 0) or {4t + 1, 4t + 3} (p 1), plus 16 h. The
// activation fragments put the same values of their columns in the same places.
struct RowPairs {
  uint32_t lo[2];  // MMA 0 (values 0..15): pairs 0, 1
  uint32_t hi[2];  // MMA 1 (values 16..31)
};

template <DType T>
__device__ __forceinline__ RowPairs DequantRow(const uint8_t* block, int t) {
  const __half2 scale = __half2half2(*reinterpret_cast<const __half*>(block));
  RowPairs r;
  if constexpr (T == DType::kQ4_0) {
    // The nibbles of bytes 0 and 2 (1 and 3) of the word, under 0x6400 (dequant.cuh's Scaled).
    const __half2 offset = __float2half2_rn(1032.0f);
    const uint32_t w = Load32At2(block + 2 + 4 * t), w8 = w >> 8;
    r.lo[0] = Scaled((w & 0x000F000Fu) | 0x64006400u, offset, scale);
    r.lo[1] = Scaled((w8 & 0x000F000Fu) | 0x64006400u, offset, scale);
    r.hi[0] = Scaled(((w >> 4) & 0x000F000Fu) | 0x64006400u, offset, scale);
    r.hi[1] = Scaled(((w8 >> 4) & 0x000F000Fu) | 0x64006400u, offset, scale);
  } else {
    // Bytes 0 and 2 (1 and 3) of each word, sign-flipped under 0x64 (dequant.cuh's Scaled).
    const __half2 offset = __float2half2_rn(1152.0f);
    const uint32_t lo = Load32At2(block + 2 + 4 * t) ^ 0x80808080u, hi = Load32At2(block + 18 + 4 * t) ^ 0x80808080u;
    r.lo[0] = Scaled(__byte_perm(lo, 0x64646464u, 0x4240), offset, scale);
    r.lo[1] = Scaled(__byte_perm(lo, 0x64646464u, 0x4341), offset, scale);
    r.hi[0] = Scaled(__byte_perm(hi, 0x64646464u, 0x4240), offset, scale);
    r.hi[1] = Scaled(__byte_perm(hi, 0x64646464u, 0x4341), offset, scale);
  }
  return r;
}

// Run `run`'s weight rows into stage buffer `stage` (cp.async, uncommitted).
template <DType T, int kNt>
__device__ __forceinline__ void IssueWeights(uint8_t* stage, const uint8_t* w, size_t row_bytes, int64_t row0,
                                             int64_t n, int run) {
  constexpr int kChunks = kRunBlocks * BlockBytes(T) / 16;  // per row
  for (int i = threadIdx.x; i < kRowsPerCta * kChunks; i += kWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = row0 + r;
    CpAsync16(stage + r * Stage<T, kNt>::kRowStride + c * 16,
              w + (row < n ? row : n - 1) * row_bytes + size_t(run) * (kRunBlocks * BlockBytes(T)) + c * 16, row < n);
  }
}

// Run `run`'s activation fragments of the first `tiles` column tiles (of `x_tiles` a block in
// global memory) into stage buffer `stage` (uncommitted).
template <DType T, int kNt>
__device__ __forceinline__ void IssueActivations(uint8_t* stage, const int4* x, int x_tiles, int tiles, int run) {
  const int lanes = tiles * 32;
  int4* fragments = reinterpret_cast<int4*>(stage + Stage<T, kNt>::kWeights);
  for (int i = threadIdx.x; i < kRunBlocks * lanes; i += kWarps * 32) {
    const int b = i / lanes, l = i % lanes;
    CpAsync16(fragments + b * kNt * 32 + l, x + (size_t(run) * kRunBlocks + b) * x_tiles * 32 + l, true);
  }
}

// Grouped launches (MoE experts): blockIdx.z is the expert; its weights, fragments and (with
// out_rows null) outputs are `*_stride` bytes / elements after the previous expert's.
struct DeviceGroups {
  const int32_t* counts = nullptr;     // rows of each expert; null: one dense product
  const int32_t* first_row = nullptr;  // each expert's first sorted row
  const int32_t* out_rows = nullptr;   // sorted row -> output row, or null: [expert][x_tiles * 8][n]
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

// Runs [first_run, first_run + runs) of the reduction through a ring of stage buffers: while run
// r is multiplied, the next kStages - 1 are in flight. x_tiles: 8-column tiles a block of x's
// fragments holds; kNt >= the tiles multiplied.
template <DType T, int kNt>
__global__ void __launch_bounds__(kWarps * 32, CtasPerSmFor(kNt))
    QuantMmaKernel(DeviceParts parts, size_t row_bytes, int total_runs, int slice_runs, const int4* x, int x_tiles,
                   int m, float* partials, int* tickets, DeviceGroups groups) {
  extern __shared__ __align__(16) uint8_t smem[];
  using S = Stage<T, kNt>;
  AllowDependents();
  constexpr int kBytes = BlockBytes(T), kStages = S::kStages;
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
  const int32_t* out_rows = nullptr;
  if (groups.counts != nullptr) {
    // An expert's row count comes from the routing kernels before: no early weight loads.
    WaitForPredecessor();
    const int e = blockIdx.z;
    m = groups.counts[e];
    if (m == 0) return;
    w += e * groups.w_stride;
    x = reinterpret_cast<const int4*>(reinterpret_cast<const uint8_t*>(x) + e * groups.fragment_stride);
    if (groups.out_rows != nullptr) {
      out_rows = groups.out_rows + groups.first_row[e];
    } else {
      y += size_t(e) * x_tiles * 8 * size_t(n);
    }
  }
  const int tiles = (m + 7) / 8;  // 8-column tiles with columns
  // The weights do not depend on the kernels before: their first stages start before the wait.
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < runs) IssueWeights<T, kNt>(smem + s * S::kBytes, w, row_bytes, row0, n, first_run + s);
  }
  WaitForPredecessor();  // the activation fragments
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < runs) IssueActivations<T, kNt>(smem + s * S::kBytes, x, x_tiles, tiles, first_run + s);
    CpAsyncCommit();
  }

  // Independent accumulator chains: each MMA waits for the last one on its accumulators (ncu:
  // "wait" was the first stall, 2.6 cycles an instruction, with an expert's one tile a chain of
  // 16 MMAs a run). The two MMAs of a block take chains 0 / 1, and up to 4 tiles (the experts at
  // batch 32 included) odd blocks take 2 / 3; the chains are added in a fixed order at the end.
  constexpr int kChains = kNt <= 4 ? 4 : 2;
  float acc[kChains][kNt][4] = {};
  for (int r = 0; r < runs; ++r) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // run r landed for every thread; stage (r - 1) % kStages is free again
    const int next = r + kStages - 1;
    if (next < runs) {
      uint8_t* stage = smem + (next % kStages) * S::kBytes;
      IssueWeights<T, kNt>(stage, w, row_bytes, row0, n, first_run + next);
      IssueActivations<T, kNt>(stage, x, x_tiles, tiles, first_run + next);
    }
    CpAsyncCommit();
    const uint8_t* stage = smem + (r % kStages) * S::kBytes;
    const uint8_t* row_g = stage + (warp * kRowsPerWarp + g) * S::kRowStride;
    const auto* fragments = reinterpret_cast<const int4*>(stage + S::kWeights);
    for (int b0 = 0; b0 < kRunBlocks; b0 += 2) {
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int b = b0 + p, chain = kChains == 4 ? 2 * p : 0;
        const RowPairs top = DequantRow<T>(row_g + b * kBytes, t);
        const RowPairs bottom = DequantRow<T>(row_g + 8 * S::kRowStride + b * kBytes, t);
        // A fragments: rows g and g + 8, slots {2t, 2t + 1} then {2t + 8, 2t + 9}.
        const uint32_t a_lo[4] = {top.lo[0], bottom.lo[0], top.lo[1], bottom.lo[1]};
        const uint32_t a_hi[4] = {top.hi[0], bottom.hi[0], top.hi[1], bottom.hi[1]};
#pragma unroll
        for (int i = 0; i < kNt; ++i) {
          if (i >= tiles) break;  // an expert's tiles past its rows
          const int4 f = fragments[(b * kNt + i) * 32 + lane];
          MmaF16(acc[chain][i], a_lo, uint32_t(f.x), uint32_t(f.y));
          MmaF16(acc[chain + 1][i], a_hi, uint32_t(f.z), uint32_t(f.w));
        }
      }
    }
  }
#pragma unroll
  for (int c = 1; c < kChains; ++c) {
#pragma unroll
    for (int i = 0; i < kNt; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[0][i][e] += acc[c][i][e];
    }
  }
  // Weight row row0 + 16 warp + g (+ 8), column (token) 8 i + 2 t (+ 1).
  const bool split = gridDim.y > 1;
  float* dst = split ? partials + size_t{blockIdx.y} * size_t(m) * size_t(n) : y;
#pragma unroll
  for (int i = 0; i < kNt; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int col = i * 8 + 2 * t + (c & 1);
      const int64_t row = row0 + warp * kRowsPerWarp + g + (c >= 2 ? 8 : 0);
      if (col < m && row < n) dst[(out_rows != nullptr ? out_rows[col] : col) * n + row] = acc[0][i][c];
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
  // thread's elements are independent: a serial loop waited an L2 trip per element). Offsets
  // are recomputed rather than held (registers).
  constexpr int kPerThread = kNt * 8 * kRowsPerCta / (kWarps * 32);
  auto offset = [&](int u, bool& valid) {
    const int e = threadIdx.x + u * kWarps * 32, col = e / kRowsPerCta;
    const int64_t row = row0 + e % kRowsPerCta;
    valid = col < m && row < n;
    return size_t(col) * size_t(n) + size_t(valid ? row : 0);
  };
  float sum[kPerThread];
  for (unsigned s = 0; s < gridDim.y; ++s) {
    const float* slice = partials + size_t(s) * size_t(m) * size_t(n);
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      bool valid;
      const size_t at = offset(u, valid);
      const float v = valid ? __ldcg(slice + at) : 0.0f;
      sum[u] = s == 0 ? v : sum[u] + v;
    }
  }
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    bool valid;
    const size_t at = offset(u, valid);
    if (valid) y[at] = sum[u];
  }
  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;
}

template <DType T, int kNt>
void Launch(cudaStream_t stream, const QuantMmaPlan& plan, const DeviceParts& parts, size_t row_bytes, int64_t k,
            const int4* x, int x_tiles, int64_t m, float* partials, int* tickets, const DeviceGroups& groups,
            int experts) {
  constexpr int kSmem = Stage<T, kNt>::kSmem;
  static const bool configured =
      cudaFuncSetAttribute(QuantMmaKernel<T, kNt>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) == cudaSuccess;
  CU_CHECK(configured);
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.k_slices),
                  static_cast<unsigned>(experts));
  CUDA_OK(LaunchDependent(QuantMmaKernel<T, kNt>, grid, dim3(kWarps * 32), kSmem, stream, parts, row_bytes,
                          static_cast<int>(k / 32 / kRunBlocks), plan.slice_runs, x, x_tiles, static_cast<int>(m),
                          partials, tickets, groups));
}

// The kernel for x_tiles 8-column tiles a block: shared memory for 2, 4 or 8.
template <DType T>
void LaunchTiles(cudaStream_t stream, const QuantMmaPlan& plan, const DeviceParts& parts, size_t row_bytes, int64_t k,
                 const int4* x, int x_tiles, int64_t m, float* partials, int* tickets,
                 const DeviceGroups& groups = {}, int experts = 1) {
  CU_CHECK(x_tiles >= 1 && x_tiles <= 8);
  if (x_tiles <= 2) {
    Launch<T, 2>(stream, plan, parts, row_bytes, k, x, x_tiles, m, partials, tickets, groups, experts);
  } else if (x_tiles <= 4) {
    Launch<T, 4>(stream, plan, parts, row_bytes, k, x, x_tiles, m, partials, tickets, groups, experts);
  } else {
    Launch<T, 8>(stream, plan, parts, row_bytes, k, x, x_tiles, m, partials, tickets, groups, experts);
  }
}

template <typename... Args>
void LaunchFor(DType type, Args&&... args) {
  if (type == DType::kQ4_0) {
    LaunchTiles<DType::kQ4_0>(std::forward<Args>(args)...);
  } else {
    LaunchTiles<DType::kQ8_0>(std::forward<Args>(args)...);
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
  plan.x_tiles = static_cast<int>(QuantMmaTiles(m));
  const int64_t runs = k / 32 / kRunBlocks;
  int64_t row_tiles = 0, rows = 0;
  for (const QuantMmaPart& part : parts) {
    row_tiles += (part.n + kRowsPerCta - 1) / kRowsPerCta;
    rows += part.n;
  }
  plan.row_tiles = static_cast<int>(row_tiles);
  // Enough slices of the reduction for every CTA the multiprocessors hold.
  const int64_t ctas = int64_t{sms} * CtasPerSmFor(plan.x_tiles);
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
  LaunchFor(type, stream, plan, device, row_bytes, k, static_cast<const int4*>(fragments), plan.x_tiles, m, partials,
            tickets);
}

void LaunchGroupedQuantMma(cudaStream_t stream, const QuantMmaGroups& groups, DType type, const uint8_t* w,
                           size_t row_bytes, int64_t k, int64_t n, const void* fragments, bool to_slots, float* y) {
  QuantMmaPlan plan;
  plan.x_tiles = groups.x_tiles;
  plan.row_tiles = static_cast<int>((n + kRowsPerCta - 1) / kRowsPerCta);
  plan.slice_runs = static_cast<int>(k / 32 / kRunBlocks);
  DeviceGroups device;
  device.counts = groups.counts;
  device.first_row = groups.first_row;
  device.out_rows = to_slots ? groups.row_slot : nullptr;
  device.w_stride = row_bytes * static_cast<size_t>(n);
  device.fragment_stride = QuantMmaFragmentBytes(k, groups.x_tiles * 8);
  DeviceParts part;
  part.count = 1;
  part.w[0] = w;
  part.y[0] = y;
  part.n[0] = n;
  part.tile_begin[1] = plan.row_tiles;
  LaunchFor(type, stream, plan, part, row_bytes, k, static_cast<const int4*>(fragments), groups.x_tiles, 0, nullptr,
            nullptr, device, groups.experts);
}

bool QuantMmaEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LATENTSERVE_CUDA_QUANT_MMA");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

}  // namespace latentserve::kernels::cuda
