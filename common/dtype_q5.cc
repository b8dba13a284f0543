// q5_0 and q5_1 rows in ggml's layouts (common/dtype.h). llama.cpp's quantiser falls back to
// them in K-quant files (Q4_K_M -> q5_0, Q5_K_M -> q5_1) for matrices whose rows are not whole
// 256-value super-blocks, e.g. Kimi-Linear's attn_k_b and ssm_f_b / ssm_g_b (ne[0] = 128).
// Dequantisation follows ggml's float operations; quantisation follows ggml's reference.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/dtype.h"

namespace latentserve {
namespace {

// The 32 5-bit codes of a block: low nibbles of qs (elements 0..15 low, 16..31 high), fifth
// bit of element i at bit i of qh.
void Codes(const uint8_t qs[16], const uint8_t qh_bytes[4], int codes[32]) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int j = 0; j < 16; ++j) {
    codes[j] = (qs[j] & 15) | static_cast<int>(((qh >> j) & 1) << 4);
    codes[j + 16] = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
  }
}

void Pack(const int codes[32], uint8_t qs[16], uint8_t qh_bytes[4]) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((codes[j] & 15) | ((codes[j + 16] & 15) << 4));
    qh |= static_cast<uint32_t>((codes[j] >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((codes[j + 16] >> 4) & 1) << (j + 16);
  }
  std::memcpy(qh_bytes, &qh, 4);
}

}  // namespace

void QuantizeRowQ5(DType type, const float* src, void* dst, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* x = src + b * 32;
    int codes[32];
    if (type == DType::kQ5_0) {
      auto& block = static_cast<BlockQ5_0*>(dst)[b];
      float amax = 0, max = 0;
      for (int i = 0; i < 32; ++i) {
        if (std::fabs(x[i]) > amax) {
          amax = std::fabs(x[i]);
          max = x[i];
        }
      }
      const float d = max / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
      block.d = FloatToHalf(d);
      for (int i = 0; i < 32; ++i) codes[i] = std::min(31, static_cast<int>(static_cast<int8_t>(x[i] * id + 16.5f)));
      Pack(codes, block.qs, block.qh);
    } else if (type == DType::kQ5_1) {
      auto& block = static_cast<BlockQ5_1*>(dst)[b];
      const float min = *std::min_element(x, x + 32), max = *std::max_element(x, x + 32);
      const float d = (max - min) / 31.0f, id = d != 0 ? 1.0f / d : 0.0f;
      block.d = FloatToHalf(d);
      block.m = FloatToHalf(min);
      for (int i = 0; i < 32; ++i) codes[i] = static_cast<int>(static_cast<int8_t>((x[i] - min) * id + 0.5f));
      Pack(codes, block.qs, block.qh);
    } else {
      std::abort();
    }
  }
}

void DequantizeRowQ5(DType type, const void* src, float* dst, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    float* y = dst + b * 32;
    int codes[32];
    if (type == DType::kQ5_0) {
      const auto& block = static_cast<const BlockQ5_0*>(src)[b];
      Codes(block.qs, block.qh, codes);
      const float d = HalfToFloat(block.d);
      for (int i = 0; i < 32; ++i) y[i] = (codes[i] - 16) * d;
    } else if (type == DType::kQ5_1) {
      const auto& block = static_cast<const BlockQ5_1*>(src)[b];
      Codes(block.qs, block.qh, codes);
      const float d = HalfToFloat(block.d), m = HalfToFloat(block.m);
      for (int i = 0; i < 32; ++i) y[i] = codes[i] * d + m;
    } else {
      std::abort();
    }
  }
}

}  // namespace latentserve
