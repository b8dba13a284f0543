// Element access to weight / cache rows of every supported dtype, on the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace latentserve::kernels::cuda {

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
    default:
      return 0.0f;
  }
}

}  // namespace latentserve::kernels::cuda
