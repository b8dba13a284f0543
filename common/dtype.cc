#include "common/dtype.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace latentserve {
namespace {

constexpr DTypeTraits kF32Traits{"f32", 1, 4};
constexpr DTypeTraits kF16Traits{"f16", 1, 2};
constexpr DTypeTraits kBF16Traits{"bf16", 1, 2};
constexpr DTypeTraits kQ8Traits{"q8_0", 32, 34};
constexpr DTypeTraits kQ4Traits{"q4_0", 32, 18};
constexpr DTypeTraits kI32Traits{"i32", 1, 4};
constexpr DTypeTraits kQ50Traits{"q5_0", 32, 22};
constexpr DTypeTraits kQ51Traits{"q5_1", 32, 24};
constexpr DTypeTraits kQ4KTraits{"q4_k", 256, 144};
constexpr DTypeTraits kQ5KTraits{"q5_k", 256, 176};
constexpr DTypeTraits kQ6KTraits{"q6_k", 256, 210};

}  // namespace

std::optional<DTypeTraits> GetDTypeTraits(uint32_t id) {
  switch (id) {
    case 0: return kF32Traits;
    case 1: return kF16Traits;
    case 2: return kQ4Traits;
    case 6: return kQ50Traits;
    case 7: return kQ51Traits;
    case 8: return kQ8Traits;
    case 12: return kQ4KTraits;
    case 13: return kQ5KTraits;
    case 14: return kQ6KTraits;
    case 26: return kI32Traits;
    case 30: return kBF16Traits;
    default: return std::nullopt;
  }
}

const DTypeTraits& Traits(DType type) {
  switch (type) {
    case DType::kF32: return kF32Traits;
    case DType::kF16: return kF16Traits;
    case DType::kQ4_0: return kQ4Traits;
    case DType::kQ5_0: return kQ50Traits;
    case DType::kQ5_1: return kQ51Traits;
    case DType::kQ8_0: return kQ8Traits;
    case DType::kQ4_K: return kQ4KTraits;
    case DType::kQ5_K: return kQ5KTraits;
    case DType::kQ6_K: return kQ6KTraits;
    case DType::kI32: return kI32Traits;
    case DType::kBF16: return kBF16Traits;
  }
  std::abort();
}

std::optional<DType> ParseDType(std::string_view name) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1,
                  DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    if (name == Traits(t).name) return t;
  }
  return std::nullopt;
}

uint16_t FloatToHalf(float value) {
  // Hardware conversion (F16C on x86-64-v3) rounds to nearest even like ggml.
  _Float16 h = static_cast<_Float16>(value);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

float HalfToFloat(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

uint16_t FloatToBf16(float value) {
  uint32_t u;
  std::memcpy(&u, &value, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

void QuantizeRow(DType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16(src[i]);
      return;
    }
    case DType::kQ8_0: {
      auto* blocks = static_cast<BlockQ8_0*>(dst);
      for (int64_t b = 0; b < n / 32; ++b) {
        const float* x = src + b * 32;
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        blocks[b].d = FloatToHalf(d);
        for (int i = 0; i < 32; ++i) blocks[b].qs[i] = static_cast<int8_t>(std::roundf(x[i] * id));
      }
      return;
    }
    case DType::kQ4_0: {
      auto* blocks = static_cast<BlockQ4_0*>(dst);
      for (int64_t b = 0; b < n / 32; ++b) {
        const float* x = src + b * 32;
        float amax = 0, max = 0;
        for (int i = 0; i < 32; ++i) {
          if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        blocks[b].d = FloatToHalf(d);
        for (int i = 0; i < 16; ++i) {
          const float x0 = x[i] * id, x1 = x[16 + i] * id;
          const uint8_t q0 = static_cast<uint8_t>(std::fmin(15.0f, x0 + 8.5f));
          const uint8_t q1 = static_cast<uint8_t>(std::fmin(15.0f, x1 + 8.5f));
          blocks[b].qs[i] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      QuantizeRowK(type, src, dst, n);
      return;
    case DType::kQ5_0:
    case DType::kQ5_1:
      QuantizeRowQ5(type, src, dst, n);
      return;
    case DType::kI32:
      std::abort();
  }
}

void DequantizeRow(DType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(in[i]);
      return;
    }
    case DType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(in[i]);
      return;
    }
    case DType::kQ8_0: {
      const auto* blocks = static_cast<const BlockQ8_0*>(src);
      for (int64_t b = 0; b < n / 32; ++b) {
        const float d = HalfToFloat(blocks[b].d);
        for (int i = 0; i < 32; ++i) dst[b * 32 + i] = blocks[b].qs[i] * d;
      }
      return;
    }
    case DType::kQ4_0: {
      const auto* blocks = static_cast<const BlockQ4_0*>(src);
      for (int64_t b = 0; b < n / 32; ++b) {
        const float d = HalfToFloat(blocks[b].d);
        for (int i = 0; i < 16; ++i) {
          dst[b * 32 + i] = ((blocks[b].qs[i] & 0x0f) - 8) * d;
          dst[b * 32 + 16 + i] = ((blocks[b].qs[i] >> 4) - 8) * d;
        }
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      DequantizeRowK(type, src, dst, n);
      return;
    case DType::kQ5_0:
    case DType::kQ5_1:
      DequantizeRowQ5(type, src, dst, n);
      return;
    case DType::kI32:
      std::abort();
  }
}

}  // namespace latentserve
