// Decode GEMVs as a pipeline of whole weight rows per warp. The activation vector(s) go to
// shared memory once per CTA; each warp then walks its rows (r, r + step, ...) with a ring of
// kRowStages row buffers filled by 16-byte cp.async copies, so while it takes the dot product
// of one row the next kRowStages - 1 rows are in flight. A CTA per row pair (the previous
// design) waited one DRAM round trip per 2.6 KB and ran the q4_0 GEMVs at 6-15% of HBM
// bandwidth (docs/benchmarks.md); here the grid is a few CTAs per multiprocessor and each keeps
// ~10 rows per warp-pair in flight.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/warp_dot.cuh"

namespace latentserve::kernels::cuda {

constexpr int kRowWarps = 8;   // warps per CTA
constexpr int kRowStages = 3;  // rows in a warp's ring
constexpr size_t kRowSmemLimit = 200 * 1024;  // dynamic shared memory a pipelined CTA may take

// Copies one row (row_bytes % 16 == 0, both ends 16-byte aligned) into a ring slot; no wait.
__device__ __forceinline__ void IssueRow(uint8_t* slot, const uint8_t* row, size_t row_bytes, int lane) {
  for (size_t i = size_t(lane) * 16; i < row_bytes; i += 32 * 16) CpAsync16(slot + i, row + i, true);
}

// K-quant rows are staged as the 16-byte-aligned span that covers them (q6_K rows of 210 bytes a
// super-block are rarely 16-byte multiples): the slot holds Align16(row_bytes) + 16 bytes and the
// row starts (row address % 16) bytes into it. The span reads at most 15 bytes either side of
// the row, inside the allocation (device allocations are 512-byte multiples; views lie in one).
template <DType T>
constexpr bool kSpanStaged = T == DType::kQ4_K || T == DType::kQ5_K || T == DType::kQ6_K;

template <DType T>
__host__ __device__ inline size_t StagedSlotBytes(size_t row_bytes) {
  return kSpanStaged<T> ? (row_bytes + 15) / 16 * 16 + 16 : row_bytes;
}

// Issues the copy of `row` into `slot` (IssueRow for 16-byte rows, the covering span otherwise).
template <DType T>
__device__ __forceinline__ void IssueStagedRow(uint8_t* slot, const uint8_t* row, size_t row_bytes,
                                               int lane) {
  if constexpr (kSpanStaged<T>) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(row) & ~uintptr_t{15};
    const uintptr_t end = (reinterpret_cast<uintptr_t>(row) + row_bytes + 15) & ~uintptr_t{15};
    IssueRow(slot, reinterpret_cast<const uint8_t*>(begin), end - begin, lane);
  } else {
    IssueRow(slot, row, row_bytes, lane);
  }
}

// Where the staged copy of `row` starts inside its slot.
template <DType T>
__device__ __forceinline__ const uint8_t* StagedRow(const uint8_t* slot, const uint8_t* row) {
  return kSpanStaged<T> ? slot + (reinterpret_cast<uintptr_t>(row) & 15) : slot;
}

// Runs consume(slot, r) for r = first, first + step, ... < end after issue(slot, r) has been
// waited for, keeping kRowStages - 1 rows ahead in flight. One commit group per row, empty
// groups past the end, so the wait count is the same every iteration. `ready()` runs once
// after the first rows are issued (every thread of the CTA calls it: it may synchronise the
// CTA), so loading the activations overlaps the first rows' trip from memory.
template <typename Issue, typename Ready, typename Consume>
__device__ __forceinline__ void WarpRowPipeline(int64_t first, int64_t end, int64_t step, Issue issue, Ready ready,
                                                Consume consume) {
#pragma unroll
  for (int s = 0; s < kRowStages - 1; ++s) {
    if (first + s * step < end) issue(s, first + s * step);
    CpAsyncCommit();
  }
  ready();
  int slot = 0;
  for (int64_t r = first; r < end; r += step) {
    const int64_t ahead = r + (kRowStages - 1) * step;
    if (ahead < end) issue((slot + kRowStages - 1) % kRowStages, ahead);
    CpAsyncCommit();
    CpAsyncWait<kRowStages - 1>();
    __syncwarp();
    consume(slot, r);
    __syncwarp();  // the slot is refilled next
    slot = (slot + 1) % kRowStages;
  }
  CpAsyncWait<0>();
}

// Activations of a pipelined CTA in shared memory, f32 or (kQ8: q4_0 / q8_0 / K-quant rows)
// rounded to 8-bit blocks exactly as the CPU backend rounds them for those rows
// (kernels/cpu/quant_dot.h, IEEE operations): q4_0 / q8_0 per 32 values, d = max|x| / 127,
// q = round-half-even(x * (1 / d)); K-quants ggml's q8_K per 256 values, d = 1 / (-127 / max)
// with max the first value of largest magnitude, q = min(127, round-half-even(x * (-127 / max))),
// d repeated for the super-block's 8 blocks. Met through integer dot products. Rounding costs
// each CTA a pass over x before its first dot product, which pays off only when its warps have
// many rows (QuantiseRows). Layout for m columns of k: q8 [m][k] int8, then d [m][k / 32] f32
// at a 16-byte boundary (RoundedBytes: the layout of RoundActivations' copy), then in shared
// memory each 32-block's sum of values [m][k / 32] i32 (q4_0's offset term); f32 [m][k].
template <DType T>
constexpr bool kQ8Rows = T == DType::kQ4_0 || T == DType::kQ8_0 || kSpanStaged<T>;

__host__ __device__ inline size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Columns up to which activations are rounded once ahead of their products (RoundActivations,
// AddRmsNormRounded): the GEMVs' column counts.
constexpr int64_t kRoundedMaxColumns = 8;

__host__ __device__ inline size_t RoundedBytes(int64_t k, int64_t m) {
  const size_t values = static_cast<size_t>(k) * static_cast<size_t>(m);
  return Align16(values) + values / 32 * 4;
}

template <bool kQ8>
__host__ __device__ inline size_t ActivationSmem(int64_t k, int64_t m) {
  const size_t values = static_cast<size_t>(k) * static_cast<size_t>(m);
  return kQ8 ? RoundedBytes(k, m) + values / 32 * 4 : values * 4;
}

// The block sums of the shared-memory layout for m columns of k.
__device__ __forceinline__ int32_t* BlockSums(uint8_t* acts, int64_t k, int64_t m) {
  return reinterpret_cast<int32_t*>(acts + RoundedBytes(k, m));
}

// q8_0's rounding of a block of 32 values whose largest magnitude is amax, as the CPU backend
// rounds (the rule above): the scale amax / 127, each value round-half-even(x * (1 / scale)).
// Every kernel that rounds activations for the 8-bit products uses it.
struct Q8Rounding {
  float scale, inv;
  __device__ __forceinline__ int Value(float x) const { return __float2int_rn(__fmul_rn(x, inv)); }
  // Four consecutive values as the 4 bytes of a word, the first lowest.
  __device__ __forceinline__ uint32_t Word(float4 v) const {
    const auto byte = [this](float x) { return static_cast<uint32_t>(static_cast<uint8_t>(Value(x))); };
    return byte(v.x) | byte(v.y) << 8 | byte(v.z) << 16 | byte(v.w) << 24;
  }
};
__device__ __forceinline__ Q8Rounding Q8RoundingOf(float amax) {
  const float scale = __fdiv_rn(amax, 127.0f);
  return {scale, scale != 0.0f ? __frcp_rn(scale) : 0.0f};
}

// Block b (32 values of x) of the layout above, by one warp: q8_0 rounding, d = max|x| / 127;
// the block's sum of values into sums[b] unless null.
__device__ __forceinline__ void RoundBlock32(const float* x, int64_t b, int lane, int8_t* qs, float* ds,
                                             int32_t* sums) {
  const float v = x[b * 32 + lane];
  float amax = fabsf(v);
  for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
  const Q8Rounding rounding = Q8RoundingOf(amax);
  const float d = rounding.scale;
  const int q = rounding.Value(v);
  qs[b * 32 + lane] = static_cast<int8_t>(q);
  const int sum = __reduce_add_sync(0xffffffff, q);
  if (lane == 0) {
    ds[b] = d;
    if (sums != nullptr) sums[b] = sum;
  }
}

// Columns [first, first + cols) of activations already rounded into RoundedBytes' layout for
// m columns (Backend::RoundActivations) copied into the shared-memory layout for `cols`
// columns, with the block sums, by the whole CTA: a thread per 32-value block (16-byte copies:
// k % 32 == 0 and the copy's 16-byte alignment keep each block's values aligned).
__device__ __forceinline__ void CopyRoundedColumns(const uint8_t* rounded, int64_t k, int64_t m, int64_t first,
                                                   int64_t cols, uint8_t* smem) {
  const auto* qs = reinterpret_cast<const int4*>(rounded + first * k);
  const auto* ds = reinterpret_cast<const float*>(rounded + Align16(static_cast<size_t>(k * m))) + first * (k / 32);
  auto* out_qs = reinterpret_cast<int4*>(smem);
  auto* out_ds = reinterpret_cast<float*>(smem + Align16(static_cast<size_t>(k * cols)));
  int32_t* out_sums = BlockSums(smem, k, cols);
  for (int64_t b = threadIdx.x; b < cols * k / 32; b += blockDim.x) {
    const int4 lo = qs[2 * b], hi = qs[2 * b + 1];
    out_qs[2 * b] = lo;
    out_qs[2 * b + 1] = hi;
    out_ds[b] = ds[b];
    int sum = 0;
    for (const int word : {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w}) sum = __dp4a(word, 0x01010101, sum);
    out_sums[b] = sum;
  }
}

// Fills the layout above from x [m][k] (contiguous columns) with the whole CTA; for f32 x must
// be 16-byte aligned and k % 4 == 0, for q8 k % 32 == 0 (K-quants: k % 256 == 0).
template <DType T, bool kQ8>
__device__ __forceinline__ void LoadActivations(const float* x, int64_t k, int64_t m,
                                                uint8_t* smem) {
  if constexpr (kQ8) {
    int8_t* qs = reinterpret_cast<int8_t*>(smem);
    float* ds = reinterpret_cast<float*>(smem + Align16(static_cast<size_t>(k * m)));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if constexpr (kSpanStaged<T>) {  // q8_K: a warp per 256 values, lane l holds values l + 32 j
      for (int64_t b = warp; b < m * k / 256; b += warps) {
        float v[8], amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          v[j] = x[b * 256 + 32 * j + lane];
          amax = fmaxf(amax, fabsf(v[j]));
        }
        for (int offset = 16; offset > 0; offset >>= 1)
          amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
        int first = 256;  // the smallest index holding a value of magnitude amax
#pragma unroll
        for (int j = 7; j >= 0; --j) first = fabsf(v[j]) == amax ? 32 * j + lane : first;
        for (int offset = 16; offset > 0; offset >>= 1)
          first = min(first, __shfl_xor_sync(0xffffffff, first, offset));
        const float max = amax != 0.0f ? x[b * 256 + first] : 0.0f;
        const float inverse = amax != 0.0f ? __fdiv_rn(-127.0f, max) : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          qs[b * 256 + 32 * j + lane] =
              static_cast<int8_t>(min(127, __float2int_rn(__fmul_rn(inverse, v[j]))));
        if (lane < 8) ds[b * 8 + lane] = amax != 0.0f ? __fdiv_rn(1.0f, inverse) : 0.0f;
      }
    } else {
      int32_t* sums = BlockSums(smem, k, m);
      for (int64_t b = warp; b < m * k / 32; b += warps) RoundBlock32(x, b, lane, qs, ds, sums);
    }
  } else {
    for (int64_t i = threadIdx.x; i < m * k / 4; i += blockDim.x)
      reinterpret_cast<float4*>(smem)[i] = reinterpret_cast<const float4*>(x)[i];
  }
}

// The lane's part of the dot product of a staged row with activation column `col`.
template <DType T, bool kQ8>
__device__ __forceinline__ float RowDot(const uint8_t* row, const uint8_t* acts, int64_t k, int64_t m, int64_t col,
                                        int lane) {
  if constexpr (kQ8) {
    static_assert(kQ8Rows<T>, "8-bit activations meet q4_0 / q8_0 / K-quant rows only");
    const int8_t* xq = reinterpret_cast<const int8_t*>(acts) + col * k;
    const float* xd = reinterpret_cast<const float*>(acts + Align16(static_cast<size_t>(k * m))) + col * (k / 32);
    const int32_t* xs = reinterpret_cast<const int32_t*>(acts + RoundedBytes(k, m)) + col * (k / 32);
    return WarpDotQ8<T>(row, xq, xd, xs, k, lane);
  } else {
    return WarpDotPartial<T>(row, reinterpret_cast<const float*>(acts) + col * k, k, lane);
  }
}

// Whether a pipelined launch rounds its activations: q4_0 / q8_0 / K-quant rows and at least 8 rows
// per warp (the lm_head at 164K rows gained 3x from the integer dot products, GEMVs of a few
// thousand rows lost ~25% to the rounding pass; ncu, docs/benchmarks.md).
template <DType T>
inline bool QuantiseRows(int64_t rows, unsigned blocks) {
  return kQ8Rows<T> && rows >= int64_t{8} * kRowWarps * blocks;
}

// Dynamic shared memory of a pipelined CTA: the activations (ActivationSmem), then each warp's
// ring of slots of `rows_per_slot` rows.
inline size_t RowPipelineSmem(size_t activation_bytes, size_t row_bytes, int rows_per_slot) {
  return Align16(activation_bytes) + size_t{kRowWarps} * kRowStages * rows_per_slot * row_bytes;
}

// CTAs of `kKernel` (kRowWarps warps, `smem` bytes of dynamic shared memory) that fit on one
// multiprocessor: the runtime's occupancy, so registers count as well as shared memory (sizing
// by shared memory alone gave the q4_0 GEMVs 6 CTAs per SM where 48 registers a thread fit 5,
// so a sixth of each grid ran as a second wave). Cached for the last `smem` asked.
template <auto kKernel>
inline int64_t RowPipelineCtasPerSm(size_t smem) {
  static std::atomic<uint64_t> cached{0};  // smem << 8 | CTAs (0: none yet)
  const uint64_t last = cached.load(std::memory_order_relaxed);
  if (last != 0 && last >> 8 == smem) return static_cast<int64_t>(last & 0xff);
  int ctas = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kKernel, kRowWarps * 32, smem) != cudaSuccess ||
      ctas < 1) {
    ctas = 1;
  }
  ctas = std::min(ctas, 8);
  cached.store(static_cast<uint64_t>(smem) << 8 | static_cast<uint64_t>(ctas), std::memory_order_relaxed);
  return ctas;
}

// CTAs for `rows` rows per grid column: `per_sm` (RowPipelineCtasPerSm) per multiprocessor
// across `columns` grid columns, never more warps than rows.
inline unsigned RowPipelineBlocks(int64_t rows, int64_t columns, int64_t per_sm) {
  static const int sms = [] {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return count > 0 ? count : 1;
  }();
  const int64_t wanted = std::max<int64_t>(1, (sms * per_sm + columns - 1) / columns);
  const int64_t enough = (rows + kRowWarps - 1) / kRowWarps;
  return static_cast<unsigned>(std::min(wanted, enough));
}

// Raises a kernel's dynamic shared-memory limit once per kernel (a host call, allowed while
// a step is recorded). Returns false when the runtime refused (callers then fall back).
template <auto kKernel>
inline bool AllowRowSmem() {
  static const bool done =
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kRowSmemLimit)) == cudaSuccess;
  return done;
}

}  // namespace latentserve::kernels::cuda
