// One warp's dot product of a stored weight row (any dtype) with an f32 vector, reading the
// row once with coalesced accesses: q4_0 lanes take 4 bytes (8 values) of a block each, 4
// lanes per block; q8_0 lanes take 4 bytes, 8 lanes per block; K-quants: the warp takes one
// super-block at a time, each lane 4 bytes of its 4-bit array (8 values). Returns the lane's partial
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

// Small integers to float without I2F (a quarter-rate instruction on Hopper, which made the
// decode GEMVs compute-bound at 6-15% of HBM bandwidth in bench-ops): v in [0, 2^23) OR'd into
// the mantissa of 2^23 is the float 2^23 + v, and subtracting 2^23 + bias is exact.
__device__ __forceinline__ float SmallIntToFloat(uint32_t v, float bias_plus_2p23) {
  return __int_as_float(static_cast<int>(0x4B000000u | v)) - bias_plus_2p23;
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
      constexpr float kBias = 8388608.0f + 8.0f;  // 2^23 + the q4_0 offset
      const float s = SmallIntToFloat(q & 15, kBias) * lo.x + SmallIntToFloat((q >> 8) & 15, kBias) * lo.y +
                      SmallIntToFloat((q >> 16) & 15, kBias) * lo.z + SmallIntToFloat((q >> 24) & 15, kBias) * lo.w +
                      SmallIntToFloat((q >> 4) & 15, kBias) * hi.x + SmallIntToFloat((q >> 12) & 15, kBias) * hi.y +
                      SmallIntToFloat((q >> 20) & 15, kBias) * hi.z + SmallIntToFloat((q >> 28) & 15, kBias) * hi.w;
      acc += d * s;
    }
  } else if constexpr (T == DType::kQ8_0) {
    const int part = lane & 7;
    for (int64_t b = lane >> 3; b < k / 32; b += 4) {
      const uint8_t* block = row + b * 34;
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const uint32_t q = Load4Bytes(block + 2 + part * 4);
      const float4 xv = *reinterpret_cast<const float4*>(x + b * 32 + part * 4);
      // Signed bytes: flipping the sign bit maps [-128, 127] to [0, 255], then bias 128.
      constexpr float kBias = 8388608.0f + 128.0f;
      const uint32_t u = q ^ 0x80808080u;
      const float s = SmallIntToFloat(u & 255, kBias) * xv.x + SmallIntToFloat((u >> 8) & 255, kBias) * xv.y +
                      SmallIntToFloat((u >> 16) & 255, kBias) * xv.z + SmallIntToFloat(u >> 24, kBias) * xv.w;
      acc += d * s;
    }
  } else if constexpr (T == DType::kQ4_K || T == DType::kQ5_K) {
    // Lane: qs bytes 4 lane .. 4 lane + 3 = elements 64 c + l0 + t (low nibbles, sub-block 2c)
    // and 64 c + 32 + l0 + t (high nibbles, sub-block 2c + 1), c = lane / 8, l0 = 4 (lane % 8).
    constexpr bool kFive = T == DType::kQ5_K;
    constexpr int kBlockBytes = kFive ? 176 : 144, kQs = kFive ? 48 : 16;
    const int c = lane / 8, l0 = (lane % 8) * 4;
    for (int64_t b = 0; b < k / 256; ++b) {
      const uint8_t* block = row + b * kBlockBytes;
      int sc0, m0, sc1, m1;
      KQuantScaleMin(2 * c, block + 4, &sc0, &m0);
      KQuantScaleMin(2 * c + 1, block + 4, &sc1, &m1);
      const uint32_t q = Load4Bytes(block + kQs + 32 * c + l0);
      const uint32_t h = kFive ? Load4Bytes(block + 16 + l0) : 0;
      const float4 lo = *reinterpret_cast<const float4*>(x + b * 256 + 64 * c + l0);
      const float4 hi = *reinterpret_cast<const float4*>(x + b * 256 + 64 * c + 32 + l0);
      const float xl[4] = {lo.x, lo.y, lo.z, lo.w}, xh[4] = {hi.x, hi.y, hi.z, hi.w};
      float dot_lo = 0, dot_hi = 0, sum_lo = 0, sum_hi = 0;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const uint32_t byte = (q >> (8 * t)) & 255, bits = (h >> (8 * t)) & 255;
        const int q_lo = static_cast<int>(byte & 15) + (kFive ? static_cast<int>((bits >> (2 * c)) & 1) << 4 : 0);
        const int q_hi = static_cast<int>(byte >> 4) + (kFive ? static_cast<int>((bits >> (2 * c + 1)) & 1) << 4 : 0);
        dot_lo += q_lo * xl[t];
        dot_hi += q_hi * xh[t];
        sum_lo += xl[t];
        sum_hi += xh[t];
      }
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const float dmin = __half2float(*reinterpret_cast<const __half*>(block + 2));
      acc += d * (sc0 * dot_lo + sc1 * dot_hi) - dmin * (m0 * sum_lo + m1 * sum_hi);
    }
  } else if constexpr (T == DType::kQ6_K) {
    // Lane: ql bytes 4 lane .. 4 lane + 3 of half = lane / 16; the first 32 bytes of a half hold
    // quarters 0 (low nibbles) and 2 (high), the next 32 quarters 1 and 3; qh bits 2 quarter.
    const int half = lane / 16, r = (lane % 16) * 4, l0 = r % 32, first_quarter = r / 32;
    for (int64_t b = 0; b < k / 256; ++b) {
      const uint8_t* block = row + b * 210;
      const uint32_t ql = Load4Bytes(block + 64 * half + r);
      const uint32_t qh = Load4Bytes(block + 128 + 32 * half + l0);
      const float d = __half2float(*reinterpret_cast<const __half*>(block + 208));
      float part = 0;
#pragma unroll
      for (int nibble = 0; nibble < 2; ++nibble) {
        const int quarter = first_quarter + 2 * nibble, e0 = 128 * half + 32 * quarter + l0;
        const float4 xv = *reinterpret_cast<const float4*>(x + b * 256 + e0);
        const float xs[4] = {xv.x, xv.y, xv.z, xv.w};
        float dot = 0;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const int lo = static_cast<int>((ql >> (8 * t + 4 * nibble)) & 15);
          const int hi = static_cast<int>((qh >> (8 * t + 2 * quarter)) & 3);
          dot += ((lo | (hi << 4)) - 32) * xs[t];
        }
        part += static_cast<int8_t>(block[192 + e0 / 16]) * dot;
      }
      acc += d * part;
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

// The lane's part of a q4_0 / q8_0 / K-quant row's dot product with activations rounded to
// 8-bit blocks (xq values, xd one scale per 32, K-quants: q8_K, the super-block's scale in each
// of its 8; xs each 32-block's sum of values, q4_0 only; row_pipeline.cuh makes them): an exact
// integer dot (dp4a) per block (K-quants: super-block, scales applied as integers) and lane,
// scaled by d_w * d_x. q4_0 lanes take whole blocks (lane b: blocks b, b + 32, ...); q8_0 lanes
// 4 bytes, 8 lanes per block. The row must be 16-byte aligned (staged rows are), xq 16-byte
// aligned.
template <DType T>
__device__ __forceinline__ float WarpDotQ8(const uint8_t* row, const int8_t* xq, const float* xd, const int32_t* xs,
                                           int64_t k, int lane) {
  float acc = 0.0f;
  if constexpr (T == DType::kQ4_0) {
    // Block b's 18 bytes start at 18 b: on a word boundary for even b, 2 bytes past one for odd
    // b. The five words from there cover d and the 16 quant bytes (an even block's fifth word
    // ends 2 bytes into block b + 1, in the row: rows hold whole groups of 8 blocks); funnel
    // shifts align the quants, 4 lanes' worth of work in one lane's 5 loads where 4 lanes per
    // block took 2 loads each and 4 dp4a for 8 values. sum (n - 8) x = sum n x - 8 sum x: the
    // same integer as the CPU's per block.
    for (int64_t b = lane; b < k / 32; b += 32) {
      const uint32_t* words = reinterpret_cast<const uint32_t*>(row + ((b * 18) & ~int64_t{3}));
      const uint32_t odd = static_cast<uint32_t>(b & 1);
      const uint32_t shift = odd ? 32u : 16u;
      uint32_t w[5];
#pragma unroll
      for (int i = 0; i < 5; ++i) w[i] = words[i];
      const int4 x_lo = *reinterpret_cast<const int4*>(xq + b * 32);
      const int4 x_hi = *reinterpret_cast<const int4*>(xq + b * 32 + 16);
      const int xl[4] = {x_lo.x, x_lo.y, x_lo.z, x_lo.w}, xh[4] = {x_hi.x, x_hi.y, x_hi.z, x_hi.w};
      int nibbles = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t q = __funnelshift_rc(w[i], w[i + 1], shift);
        nibbles = __dp4a(static_cast<int>(q & 0x0F0F0F0Fu), xl[i], nibbles);
        nibbles = __dp4a(static_cast<int>((q >> 4) & 0x0F0F0F0Fu), xh[i], nibbles);
      }
      const int sum = nibbles - 8 * xs[b];
      const __half_raw d_raw{static_cast<unsigned short>((w[0] >> (16 * odd)) & 0xFFFFu)};
      acc += __half2float(__half(d_raw)) * xd[b] * static_cast<float>(sum);
    }
  } else if constexpr (T == DType::kQ4_K || T == DType::kQ5_K) {
    // Lanes as in WarpDotPartial: qs bytes 32 c + l0 .. + 3 hold elements 64 c + l0 + t (low
    // nibbles, sub-block 2c) and 64 c + 32 + l0 + t (high, 2c + 1). The min term needs each
    // lane's activation sums, a dp4a against ones. xd holds one scale per super-block.
    constexpr bool kFive = T == DType::kQ5_K;
    constexpr int kBlockBytes = kFive ? 176 : 144, kQs = kFive ? 48 : 16;
    const int c = lane / 8, l0 = (lane % 8) * 4;
    for (int64_t b = 0; b < k / 256; ++b) {
      const uint8_t* block = row + b * kBlockBytes;
      int sc0, m0, sc1, m1;
      KQuantScaleMin(2 * c, block + 4, &sc0, &m0);
      KQuantScaleMin(2 * c + 1, block + 4, &sc1, &m1);
      const uint32_t q = Load4Bytes(block + kQs + 32 * c + l0);
      uint32_t lo = q & 0x0F0F0F0Fu, hi = (q >> 4) & 0x0F0F0F0Fu;
      if constexpr (kFive) {
        const uint32_t h = Load4Bytes(block + 16 + l0);
        lo |= ((h >> (2 * c)) & 0x01010101u) << 4;
        hi |= ((h >> (2 * c + 1)) & 0x01010101u) << 4;
      }
      const int x_lo = *reinterpret_cast<const int*>(xq + b * 256 + 64 * c + l0);
      const int x_hi = *reinterpret_cast<const int*>(xq + b * 256 + 64 * c + 32 + l0);
      const int dot =
          sc0 * __dp4a(static_cast<int>(lo), x_lo, 0) + sc1 * __dp4a(static_cast<int>(hi), x_hi, 0);
      const int sum = m0 * __dp4a(0x01010101, x_lo, 0) + m1 * __dp4a(0x01010101, x_hi, 0);
      const float dx = xd[b * 8];
      acc +=
          __half2float(*reinterpret_cast<const __half*>(block)) * dx * static_cast<float>(dot) -
          __half2float(*reinterpret_cast<const __half*>(block + 2)) * dx * static_cast<float>(sum);
    }
  } else if constexpr (T == DType::kQ6_K) {
    // Lanes as in WarpDotPartial; values q - 32 as signed bytes, one int8 scale per 16.
    const int half = lane / 16, r = (lane % 16) * 4, l0 = r % 32, first_quarter = r / 32;
    for (int64_t b = 0; b < k / 256; ++b) {
      const uint8_t* block = row + b * 210;
      const uint32_t ql = Load4Bytes(block + 64 * half + r);
      const uint32_t qh = Load4Bytes(block + 128 + 32 * half + l0);
      int part = 0;
#pragma unroll
      for (int nibble = 0; nibble < 2; ++nibble) {
        const int quarter = first_quarter + 2 * nibble, e0 = 128 * half + 32 * quarter + l0;
        const uint32_t v =
            ((ql >> (4 * nibble)) & 0x0F0F0F0Fu) | (((qh >> (2 * quarter)) & 0x03030303u) << 4);
        const int x = *reinterpret_cast<const int*>(xq + b * 256 + e0);
        part += static_cast<int8_t>(block[192 + e0 / 16]) *
                __dp4a(static_cast<int>(__vsub4(v, 0x20202020u)), x, 0);
      }
      acc += __half2float(*reinterpret_cast<const __half*>(block + 208)) * xd[b * 8] *
             static_cast<float>(part);
    }
  } else {
    static_assert(T == DType::kQ8_0, "q4_0, q8_0 or K-quant rows");
    const int part = lane % 8;
    for (int64_t b = lane / 8; b < k / 32; b += 4) {
      const uint8_t* block = row + b * 34;
      const int q = static_cast<int>(Load4Bytes(block + 2 + part * 4));
      const int x = *reinterpret_cast<const int*>(xq + b * 32 + part * 4);
      acc += __half2float(*reinterpret_cast<const __half*>(block)) * xd[b] * static_cast<float>(__dp4a(q, x, 0));
    }
  }
  return acc;
}

// Staging rows through shared memory (row_pipeline.cuh) needs whole 16-byte copies from
// 16-byte aligned rows; quantised rows whole super-blocks of 8 blocks. K-quant rows are staged
// as their covering 16-byte span (StagedSlotBytes), at any 2-byte alignment.
template <DType T>
__host__ __device__ inline bool StagedRowsFit(int64_t k, size_t row_bytes, const void* base) {
  const bool aligned = (reinterpret_cast<uintptr_t>(base) % 16) == 0 && row_bytes % 16 == 0;
  if constexpr (T == DType::kQ4_0 || T == DType::kQ8_0) return aligned && k % 256 == 0;
  if constexpr (T == DType::kF16 || T == DType::kBF16) return aligned && k % 8 == 0;
  if constexpr (T == DType::kQ4_K || T == DType::kQ5_K || T == DType::kQ6_K) {
    return k % 256 == 0 && reinterpret_cast<uintptr_t>(base) % 2 == 0 && row_bytes % 2 == 0;
  }
  return false;
}

}  // namespace latentserve::kernels::cuda
