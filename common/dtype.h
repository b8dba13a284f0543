// Element types shared by GGUF files, backend tensors and the latent cache.
// The numeric values are ggml's type ids, so a GGUF tensor's type maps 1:1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace latentserve {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ8_0 = 8,
  kI32 = 26,
  kBF16 = 30,
};

struct DTypeTraits {
  const char* name;        // "f32", "q8_0", ... (also the CLI spelling)
  int64_t block_elements;  // elements per block along ne[0] (1 for plain types)
  int64_t block_bytes;     // bytes per block
};

// Traits of a supported type; nullopt for an id we do not handle (e.g. a K-quant).
std::optional<DTypeTraits> GetDTypeTraits(uint32_t ggml_type_id);
const DTypeTraits& Traits(DType type);
inline const char* DTypeName(DType type) { return Traits(type).name; }
std::optional<DType> ParseDType(std::string_view name);

// Bytes of one row of `elements` values; elements must be a multiple of the block size.
inline int64_t RowBytes(DType type, int64_t elements) {
  const DTypeTraits& t = Traits(type);
  return elements / t.block_elements * t.block_bytes;
}

// Scalar conversions (round to nearest even, like ggml).
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);
inline float Bf16ToFloat(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// Row conversions between f32 and any type; `elements` must be a multiple of the block size.
void QuantizeRow(DType type, const float* src, void* dst, int64_t elements);
void DequantizeRow(DType type, const void* src, float* dst, int64_t elements);

// Quantised block layouts (ggml's): 32 values along ne[0].
struct BlockQ8_0 {
  uint16_t d;      // f16 scale
  int8_t qs[32];   // value = qs[i] * d
};
struct BlockQ4_0 {
  uint16_t d;       // f16 scale
  uint8_t qs[16];   // low nibbles: elements 0..15, high nibbles: 16..31; value = (q - 8) * d
};
static_assert(sizeof(BlockQ8_0) == 34, "q8_0 block is 34 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "q4_0 block is 18 bytes");

}  // namespace latentserve
