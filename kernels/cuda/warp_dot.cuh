// One warp's dot product of a stored weight row (any dtype) with an f32 vector, reading the
// row once with coalesced accesses: q4_0 lanes take 4 bytes (8 values) of a block each, 4
// lanes per block; q8_0 lanes take 4 bytes, 8 lanes per block. Returns the lane's partial
// sum (reduce with WarpSum). x must be 16-byte aligned at the row start.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dtype.h"
#include "kernels/cuda/mma_sync.cuh"

namespace latentserve::kernels::cuda {

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

__device__ __forceinline__ uint32_t Load4Bytes(const uint8_t* p) {  // p is 2-byte aligned
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}

template <DType T>
__device__ __forceinline__ float WarpDotPartial(const uint8_t* row, const float* x, int64_t k, int lane) {
  float acc = 0;
  if constexpr (T == DType::kQ4_0) {
    const int part = lane & 3;
    for (int64_t b = lane >> 2; b < k / 32; b += 8) {
      const uint8_t* block = row + b * 18;
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const uint32_t q = Load4Bytes(block + 2 + part * 4);
      const float4 lo = *reinterpret_cast<const float4*>(x + b * 32 + part * 4);
      const float4 hi = *reinterpret_cast<const float4*>(x + b * 32 + 16 + part * 4);
      const float s = (static_cast<int>(q & 15) - 8) * lo.x + (static_cast<int>((q >> 8) & 15) - 8) * lo.y +
                      (static_cast<int>((q >> 16) & 15) - 8) * lo.z + (static_cast<int>((q >> 24) & 15) - 8) * lo.w +
                      (static_cast<int>((q >> 4) & 15) - 8) * hi.x + (static_cast<int>((q >> 12) & 15) - 8) * hi.y +
                      (static_cast<int>((q >> 20) & 15) - 8) * hi.z + (static_cast<int>((q >> 28) & 15) - 8) * hi.w;
      acc += d * s;
    }
  } else if constexpr (T == DType::kQ8_0) {
    const int part = lane & 7;
    for (int64_t b = lane >> 3; b < k / 32; b += 4) {
      const uint8_t* block = row + b * 34;
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const uint32_t q = Load4Bytes(block + 2 + part * 4);
      const float4 xv = *reinterpret_cast<const float4*>(x + b * 32 + part * 4);
      const float s = static_cast<int8_t>(q & 255) * xv.x + static_cast<int8_t>((q >> 8) & 255) * xv.y +
                      static_cast<int8_t>((q >> 16) & 255) * xv.z + static_cast<int8_t>(q >> 24) * xv.w;
      acc += d * s;
    }
  } else if constexpr (T == DType::kF16) {
    if (k & 1) {  // rows are not 4-byte aligned: scalar loads
      const __half* h = reinterpret_cast<const __half*>(row);
      for (int64_t i = lane; i < k; i += 32) acc += __half2float(h[i]) * x[i];
      return acc;
    }
    const __half2* h = reinterpret_cast<const __half2*>(row);
    for (int64_t i = lane; i < k / 2; i += 32) {
      const float2 w = __half22float2(h[i]);
      acc += w.x * x[2 * i] + w.y * x[2 * i + 1];
    }
  } else if constexpr (T == DType::kBF16) {
    const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(row);
    for (int64_t i = lane; i < k; i += 32) acc += __bfloat162float(h[i]) * x[i];
  } else {
    const float* w = reinterpret_cast<const float*>(row);
    for (int64_t i = lane; i < k; i += 32) acc += w[i] * x[i];
  }
  return acc;
}

// Staged rows: a warp copies a chunk of its weight row into shared memory with 16-byte
// cp.async copies issued back to back, then takes the dot products from there. The plain
// WarpDotPartial waits for each 4-byte load before the next, so a warp has ~150 bytes in
// flight and decode GEMVs ran at a sixth of HBM bandwidth (ncu, docs/benchmarks.md); staged,
// the whole chunk is in flight at once. Chunk sizes keep a warp's stage at most 2,304 bytes.
template <DType T>
struct RowChunk {
  static constexpr int kValues = T == DType::kQ4_0 ? 4096 : T == DType::kQ8_0 ? 2048 : 1024;
  static constexpr int kBytes = T == DType::kQ4_0 ? kValues / 32 * 18 : T == DType::kQ8_0 ? kValues / 32 * 34 : kValues * 2;
};

// Staging needs every chunk to be whole 16-byte copies from a 16-byte aligned row.
template <DType T>
__host__ __device__ inline bool StagedRowsFit(int64_t k, size_t row_bytes, const void* base) {
  const bool aligned = (reinterpret_cast<uintptr_t>(base) % 16) == 0 && row_bytes % 16 == 0;
  if constexpr (T == DType::kQ4_0 || T == DType::kQ8_0) return aligned && k % 256 == 0;
  if constexpr (T == DType::kF16 || T == DType::kBF16) return aligned && k % 8 == 0;
  return false;
}

template <DType T>
__device__ __forceinline__ int64_t RowBytesFor(int64_t values) {
  if constexpr (T == DType::kQ4_0) return values / 32 * 18;
  if constexpr (T == DType::kQ8_0) return values / 32 * 34;
  return values * 2;
}

// Issues the copies of values [first, first + count) of `row` into `stage` (no wait).
template <DType T>
__device__ __forceinline__ void StageChunk(const uint8_t* row, int64_t first, int count, uint8_t* stage, int lane) {
  const uint8_t* src = row + RowBytesFor<T>(first);
  const int bytes = static_cast<int>(RowBytesFor<T>(count));
  for (int i = lane * 16; i < bytes; i += 32 * 16) CpAsync16(stage + i, src + i, true);
}

// Waits for this lane's staged copies; with __syncwarp the whole chunk is visible to the warp.
__device__ __forceinline__ void StageWait() {
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncwarp();
}

}  // namespace latentserve::kernels::cuda
