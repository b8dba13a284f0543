// K-quant rows (q4_K, q5_K, q6_K) in ggml's block layouts (common/dtype.h).
//
// Dequantisation computes every value with the same float operations in the same order as
// ggml's reference, so a dequantised row matches llama.cpp's to the bit.
//
// Quantisation is ours and simpler than llama.cpp's (no search for the best scale per
// sub-block): it only has to produce valid, reasonable blocks for generated test models.
// Files quantised by llama.cpp itself are what the conformance tests read.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/dtype.h"

namespace latentserve {
namespace {

int RoundToInt(float x) { return static_cast<int>(std::nearbyint(x)); }

// Sub-block scales and mins of one q4_K / q5_K super-block: the 6-bit codes, their f16
// super-scales, and the values that decode from them.
struct ScaleMinCodes {
  uint16_t d = 0, dmin = 0;
  uint8_t scales[12] = {};
  float step[8] = {};    // d * sc: value of one quantisation step per sub-block
  float offset[8] = {};  // dmin * m: subtracted from every value of the sub-block
};

// Each sub-block of 32 covers [min(x, 0), max(x)] with `levels` steps; the scales and mins are
// then rounded to 6 bits against the largest of each.
ScaleMinCodes ChooseScaleMins(const float* x, int levels) {
  float scale[8], min[8], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* v = x + 32 * j;
    float lo = std::min(0.0f, *std::min_element(v, v + 32));
    float hi = *std::max_element(v, v + 32);
    scale[j] = (hi - lo) / levels;
    min[j] = -lo;
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, min[j]);
  }
  ScaleMinCodes out;
  out.d = FloatToHalf(max_scale / 63.0f);
  out.dmin = FloatToHalf(max_min / 63.0f);
  const float d = HalfToFloat(out.d), dmin = HalfToFloat(out.dmin);
  int sc[8], m[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0 ? std::clamp(RoundToInt(scale[j] / d), 0, 63) : 0;
    m[j] = dmin > 0 ? std::clamp(RoundToInt(min[j] / dmin), 0, 63) : 0;
    // A scale that rounds to 0 would lose the sub-block; keep one step where it has values.
    if (sc[j] == 0 && scale[j] > 0 && d > 0) sc[j] = 1;
  }
  for (int j = 0; j < 4; ++j) {
    out.scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    out.scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    out.scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
  for (int j = 0; j < 8; ++j) {
    int s, mm;
    KQuantScaleMin(j, out.scales, &s, &mm);
    out.step[j] = d * s;
    out.offset[j] = dmin * mm;
  }
  return out;
}

// 256 unsigned codes 0..levels for one q4_K / q5_K super-block.
void QuantizeCodes(const float* x, const ScaleMinCodes& codes, int levels, uint8_t* q) {
  for (int i = 0; i < 256; ++i) {
    const int j = i / 32;
    const float step = codes.step[j];
    q[i] = static_cast<uint8_t>(step > 0 ? std::clamp(RoundToInt((x[i] + codes.offset[j]) / step), 0, levels) : 0);
  }
}

void QuantizeQ4K(const float* x, BlockQ4_K* block) {
  const ScaleMinCodes codes = ChooseScaleMins(x, 15);
  uint8_t q[256];
  QuantizeCodes(x, codes, 15, q);
  block->d = codes.d;
  block->dmin = codes.dmin;
  std::memcpy(block->scales, codes.scales, 12);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) block->qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  }
}

void QuantizeQ5K(const float* x, BlockQ5_K* block) {
  const ScaleMinCodes codes = ChooseScaleMins(x, 31);
  uint8_t q[256];
  QuantizeCodes(x, codes, 31, q);
  block->d = codes.d;
  block->dmin = codes.dmin;
  std::memcpy(block->scales, codes.scales, 12);
  std::memset(block->qh, 0, sizeof(block->qh));
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
      block->qs[32 * c + l] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
      block->qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
    }
  }
}

// Each sub-block of 16 maps its value of largest magnitude to -32; the 16 sub-block scales are
// then rounded to int8 against the largest (which becomes -128).
void QuantizeQ6K(const float* x, BlockQ6_K* block) {
  float scale[16], max_scale = 0;
  for (int s = 0; s < 16; ++s) {
    float extreme = 0;
    for (int i = 0; i < 16; ++i) {
      if (std::fabs(x[16 * s + i]) > std::fabs(extreme)) extreme = x[16 * s + i];
    }
    scale[s] = extreme / -32.0f;
    if (std::fabs(scale[s]) > std::fabs(max_scale)) max_scale = scale[s];
  }
  std::memset(block, 0, sizeof(*block));
  uint8_t q[256];
  if (max_scale == 0) {
    std::fill(q, q + 256, 32);
  } else {
    const float inverse = -128.0f / max_scale;
    block->d = FloatToHalf(1.0f / inverse);
    const float d = HalfToFloat(block->d);
    for (int s = 0; s < 16; ++s) {
      block->scales[s] = static_cast<int8_t>(std::min(127, RoundToInt(inverse * scale[s])));
      const float step = d * block->scales[s];
      for (int i = 0; i < 16; ++i) {
        const int v = step != 0 ? std::clamp(RoundToInt(x[16 * s + i] / step), -32, 31) : 0;
        q[16 * s + i] = static_cast<uint8_t>(v + 32);
      }
    }
  }
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = q + 128 * h + l;  // e[0], e[32], e[64], e[96]
      block->ql[64 * h + l] = static_cast<uint8_t>((e[0] & 15) | ((e[64] & 15) << 4));
      block->ql[64 * h + 32 + l] = static_cast<uint8_t>((e[32] & 15) | ((e[96] & 15) << 4));
      block->qh[32 * h + l] =
          static_cast<uint8_t>((e[0] >> 4) | ((e[32] >> 4) << 2) | ((e[64] >> 4) << 4) | ((e[96] >> 4) << 6));
    }
  }
}

void DequantizeQ4K(const BlockQ4_K& block, float* y) {
  const float d = HalfToFloat(block.d), dmin = HalfToFloat(block.dmin);
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    KQuantScaleMin(2 * c, block.scales, &sc0, &m0);
    KQuantScaleMin(2 * c + 1, block.scales, &sc1, &m1);
    const float step0 = d * sc0, offset0 = dmin * m0, step1 = d * sc1, offset1 = dmin * m1;
    const uint8_t* qs = block.qs + 32 * c;
    for (int l = 0; l < 32; ++l) y[64 * c + l] = step0 * (qs[l] & 15) - offset0;
    for (int l = 0; l < 32; ++l) y[64 * c + 32 + l] = step1 * (qs[l] >> 4) - offset1;
  }
}

void DequantizeQ5K(const BlockQ5_K& block, float* y) {
  const float d = HalfToFloat(block.d), dmin = HalfToFloat(block.dmin);
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    KQuantScaleMin(2 * c, block.scales, &sc0, &m0);
    KQuantScaleMin(2 * c + 1, block.scales, &sc1, &m1);
    const float step0 = d * sc0, offset0 = dmin * m0, step1 = d * sc1, offset1 = dmin * m1;
    const uint8_t* qs = block.qs + 32 * c;
    const int low_bit = 1 << (2 * c), high_bit = 2 << (2 * c);
    for (int l = 0; l < 32; ++l) y[64 * c + l] = step0 * ((qs[l] & 15) + (block.qh[l] & low_bit ? 16 : 0)) - offset0;
    for (int l = 0; l < 32; ++l) y[64 * c + 32 + l] = step1 * ((qs[l] >> 4) + (block.qh[l] & high_bit ? 16 : 0)) - offset1;
  }
}

void DequantizeQ6K(const BlockQ6_K& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = block.ql + 64 * h;
    const uint8_t* qh = block.qh + 32 * h;
    const int8_t* sc = block.scales + 8 * h;
    float* out = y + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int s = l / 16;
      const int q0 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q1 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      out[l] = d * sc[s + 0] * q0;
      out[l + 32] = d * sc[s + 2] * q1;
      out[l + 64] = d * sc[s + 4] * q2;
      out[l + 96] = d * sc[s + 6] * q3;
    }
  }
}

}  // namespace

void QuantizeRowK(DType type, const float* src, void* dst, int64_t n) {
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float* x = src + b * kSuperBlock;
    switch (type) {
      case DType::kQ4_K: QuantizeQ4K(x, static_cast<BlockQ4_K*>(dst) + b); break;
      case DType::kQ5_K: QuantizeQ5K(x, static_cast<BlockQ5_K*>(dst) + b); break;
      case DType::kQ6_K: QuantizeQ6K(x, static_cast<BlockQ6_K*>(dst) + b); break;
      default: std::abort();
    }
  }
}

void DequantizeRowK(DType type, const void* src, float* dst, int64_t n) {
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    float* y = dst + b * kSuperBlock;
    switch (type) {
      case DType::kQ4_K: DequantizeQ4K(static_cast<const BlockQ4_K*>(src)[b], y); break;
      case DType::kQ5_K: DequantizeQ5K(static_cast<const BlockQ5_K*>(src)[b], y); break;
      case DType::kQ6_K: DequantizeQ6K(static_cast<const BlockQ6_K*>(src)[b], y); break;
      default: std::abort();
    }
  }
}

}  // namespace latentserve
