// Element types shared by GGUF files, backend tensors and the latent cache.
// The numeric values are ggml's type ids, so a GGUF tensor's type maps 1:1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

// Small helpers below are shared with the CUDA kernels.
#ifndef LS_HOST_DEVICE
#if defined(__CUDACC__)
#define LS_HOST_DEVICE __host__ __device__
#else
#define LS_HOST_DEVICE
#endif
#endif

namespace latentserve {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kI32 = 26,
  kBF16 = 30,
};

struct DTypeTraits {
  const char* name;        // "f32", "q8_0", ... (also the CLI spelling)
  int64_t block_elements;  // elements per block along ne[0] (1 for plain types)
  int64_t block_bytes;     // bytes per block
};

// Traits of a supported type; nullopt for an id we do not handle (e.g. q5_0, q2_K, iq4_xs).
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

// q5_0 / q5_1 (ggml's layouts): 32 values, 5-bit codes q; fifth bit of element i at bit i of
// qh (little-endian), low 4 bits as q4_0's nibbles. q5_0: value = (q - 16) * d;
// q5_1: value = q * d + m. (llama.cpp's fallback in K-quant files: dtype_q5.cc.)
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ5_0) == 22, "q5_0 block is 22 bytes");
static_assert(sizeof(BlockQ5_1) == 24, "q5_1 block is 24 bytes");
void QuantizeRowQ5(DType type, const float* src, void* dst, int64_t elements);
void DequantizeRowQ5(DType type, const void* src, float* dst, int64_t elements);

// K-quants (ggml's layouts): super-blocks of 256 values along ne[0].
constexpr int64_t kSuperBlock = 256;

// q4_K: 8 sub-blocks of 32, each with a 6-bit scale sc and a 6-bit min m;
// value = d * sc * q - dmin * m, q in 0..15. qs[32 * c + l] holds elements 64 c + l (low
// nibble) and 64 c + 32 + l (high nibble), c = 0..3, l = 0..31.
// scales (12 bytes, KQuantScaleMin): sub-block j < 4: sc = scales[j] & 63,
// m = scales[j + 4] & 63; j >= 4: sc = (scales[j + 4] & 15) | (scales[j - 4] >> 6) << 4,
// m = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4.
struct BlockQ4_K {
  uint16_t d;          // f16 scale of the sub-block scales
  uint16_t dmin;       // f16 scale of the sub-block mins
  uint8_t scales[12];  // 8 scales and 8 mins, 6 bits each
  uint8_t qs[128];     // 4-bit values
};
// q5_K: q4_K plus a fifth bit: bit 2 c of qh[l] is the high bit of element 64 c + l, bit
// 2 c + 1 that of element 64 c + 32 + l; q in 0..31.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];   // fifth bits
  uint8_t qs[128];  // low 4 bits, as q4_K
};
// q6_K: 16 sub-blocks of 16 with int8 scales; value = d * scales[s] * (q - 32), q in 0..63.
// Per half h (elements 128 h .. 128 h + 127) and l = 0..31, the four elements
// 128 h + l + 32 i (i = 0..3) take their low 4 bits from ql[64 h + l] (i = 0: low nibble,
// i = 2: high) and ql[64 h + 32 + l] (i = 1: low, i = 3: high), their high 2 bits from bits
// 2 i .. 2 i + 1 of qh[32 h + l]. Element e's scale is scales[e / 16].
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;  // f16 super-block scale
};
static_assert(sizeof(BlockQ4_K) == 144, "q4_K block is 144 bytes");
static_assert(sizeof(BlockQ5_K) == 176, "q5_K block is 176 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "q6_K block is 210 bytes");

LS_HOST_DEVICE inline bool IsKQuant(DType type) {
  return type == DType::kQ4_K || type == DType::kQ5_K || type == DType::kQ6_K;
}

// What llama.cpp's quantiser stores instead of a K-quant when a row is not whole super-blocks
// (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0); other types unchanged.
inline DType SuperBlockFallback(DType type) {
  switch (type) {
    case DType::kQ4_K: return DType::kQ5_0;
    case DType::kQ5_K: return DType::kQ5_1;
    case DType::kQ6_K: return DType::kQ8_0;
    default: return type;
  }
}

// Sub-block j's (0..7) 6-bit scale and min from a q4_K / q5_K `scales` array.
LS_HOST_DEVICE inline void KQuantScaleMin(int j, const uint8_t* scales, int* scale, int* min) {
  if (j < 4) {
    *scale = scales[j] & 63;
    *min = scales[j + 4] & 63;
  } else {
    *scale = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
    *min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// K-quant rows (common/dtype_kquant.cc); QuantizeRow / DequantizeRow dispatch here.
void QuantizeRowK(DType type, const float* src, void* dst, int64_t elements);
void DequantizeRowK(DType type, const void* src, float* dst, int64_t elements);

}  // namespace latentserve
