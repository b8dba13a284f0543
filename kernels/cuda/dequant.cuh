// Element access to weight / cache rows of every supported dtype, on the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace latentserve::kernels::cuda {

// (bits as f16 pair - offset) * d, each rounded once: a dequantised pair as 32 bits. With a
// q4_0 nibble n or a sign-flipped q8_0 byte b under 0x64 (the f16 1024 + n, 1152 + b) and offset
// 1032 / 1152 the subtraction is exact, so the pair is (n - 8) * d or b * d rounded once.
__device__ __forceinline__ uint32_t Scaled(uint32_t bits, __half2 offset, __half2 d) {
  __half2 v;
  memcpy(&v, &bits, 4);
  v = __hmul2_rn(__hsub2_rn(v, offset), d);
  uint32_t out;
  memcpy(&out, &v, 4);
  return out;
}

// Value i of a row stored in `type`.
__device__ __forceinline__ float LoadElement(DType type, const uint8_t* row, int64_t i) {
  switch (type) {
    case DType::kF32:
      return reinterpret_cast<const float*>(row)[i];
    case DType::kF16:
      return __half2float(reinterpret_cast<const __half*>(row)[i]);
    case DType::kBF16:
      return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]);
    case DType::kQ8_0: {
      const uint8_t* block = row + (i / 32) * 34;
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      return d * static_cast<int8_t>(block[2 + i % 32]);
    }
    case DType::kQ4_0: {
      const uint8_t* block = row + (i / 32) * 18;
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const int j = static_cast<int>(i % 32);
      const uint8_t byte = block[2 + (j & 15)];
      return d * (static_cast<int>(j < 16 ? (byte & 15) : (byte >> 4)) - 8);
    }
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const bool one = type == DType::kQ5_1;
      const uint8_t* block = row + (i / 32) * (one ? 24 : 22);
      const uint8_t* qh = block + (one ? 4 : 2);
      const int j = static_cast<int>(i % 32);
      const uint8_t byte = block[(one ? 8 : 6) + (j & 15)];
      const int q = (j < 16 ? (byte & 15) : (byte >> 4)) | (((qh[j / 8] >> (j % 8)) & 1) << 4);
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      if (!one) return (q - 16) * d;
      return q * d + __half2float(*reinterpret_cast<const __half*>(block + 2));
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      // Super-block of 256 (common/dtype.h): value = d * sc * q - dmin * m per sub-block of 32.
      const bool five = type == DType::kQ5_K;
      const uint8_t* block = row + (i / 256) * (five ? 176 : 144);
      const int e = static_cast<int>(i % 256), j = e / 32, l = e % 32, chunk = e / 64;
      const uint8_t* scales = block + 4;
      int sc, m;
      KQuantScaleMin(j, scales, &sc, &m);
      const uint8_t byte = block[(five ? 48 : 16) + 32 * chunk + l];
      int q = (e % 64) < 32 ? (byte & 15) : (byte >> 4);
      if (five) q += ((block[16 + l] >> j) & 1) << 4;  // qh bit 2 chunk (+1 for the high half) = j
      const float d = __half2float(*reinterpret_cast<const __half*>(block));
      const float dmin = __half2float(*reinterpret_cast<const __half*>(block + 2));
      return d * sc * q - dmin * m;
    }
    case DType::kQ6_K: {
      const uint8_t* block = row + (i / 256) * 210;
      const int e = static_cast<int>(i % 256), half = e / 128, l = e % 32, quarter = (e % 128) / 32;
      const uint8_t lo_byte = block[64 * half + l + (quarter & 1) * 32];
      const int lo = quarter < 2 ? (lo_byte & 15) : (lo_byte >> 4);
      const int hi = (block[128 + 32 * half + l] >> (2 * quarter)) & 3;
      const float d = __half2float(*reinterpret_cast<const __half*>(block + 208));
      return d * static_cast<int8_t>(block[192 + e / 16]) * ((lo | (hi << 4)) - 32);
    }
    default:
      return 0.0f;
  }
}

}  // namespace latentserve::kernels::cuda
