// K-quant (q4_K, q5_K, q6_K) rows against q8_K-rounded activation columns (quant_dot.h).
//
// Each stored row is read once per group of up to 4 columns: per super-block the sub-block
// scales are decoded once and the 4-/5-/6-bit values unpacked once for the whole group.
// Integer sums stay exact within a super-block (bounds at each step below); one convert and one
// FMA per super-block and column apply d_w * d_x.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "kernels/cpu/quant_dot.h"

namespace latentserve::kernels::cpu {
namespace {

constexpr int kColumnGroup = 4;                           // columns sharing one unpacking
constexpr int64_t kBlocksPerSuper = kSuperBlock / kQ8Block;  // 32-blocks per super-block

// Sum of each 32-block of each column: sums [cols][k / 32] (the min terms of q4_K / q5_K).
void BlockSums(const int8_t* xq, int64_t k, int64_t cols, std::vector<int32_t>& sums) {
  const int64_t blocks = k / kQ8Block;
  sums.resize(cols * blocks);
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int8_t* q = xq + c * k + b * kQ8Block;
#if defined(__AVX2__)
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1))),
                                 _mm256_extracti128_si256(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), 1));
      s4 = _mm_hadd_epi32(s4, s4);
      sums[c * blocks + b] = _mm_cvtsi128_si32(_mm_hadd_epi32(s4, s4));
#else
      int32_t sum = 0;
      for (int i = 0; i < kQ8Block; ++i) sum += q[i];
      sums[c * blocks + b] = sum;
#endif
    }
  }
}

// The 8 sub-block scales and mins of a q4_K / q5_K super-block.
template <class Block>
void ScalesMins(const Block& block, int sc[8], int m[8]) {
  for (int j = 0; j < 8; ++j) KQuantScaleMin(j, block.scales, &sc[j], &m[j]);
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

inline __m256i Load(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// The 256 values of one super-block as 8 vectors of 32 int8 (element order), with per-vector
// int16 scales (lanes 0..7 weight elements 0..15, lanes 8..15 elements 16..31).
struct Unpacked {
  __m256i values[8];
  __m256i scales[8];
  bool is_signed;  // q6_K: values q - 32 (sign trick); q4_K / q5_K: unsigned 0..31
};

inline void UnpackQ4K(const BlockQ4_K& block, const int sc[8], Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(15);
  for (int c = 0; c < 4; ++c) {
    const __m256i bytes = Load(block.qs + 32 * c);
    u.values[2 * c] = _mm256_and_si256(bytes, low4);
    u.values[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
    u.scales[2 * c] = _mm256_set1_epi16(static_cast<short>(sc[2 * c]));
    u.scales[2 * c + 1] = _mm256_set1_epi16(static_cast<short>(sc[2 * c + 1]));
  }
  u.is_signed = false;
}

inline void UnpackQ5K(const BlockQ5_K& block, const int sc[8], Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(15), bit = _mm256_set1_epi8(1);
  const __m256i high = Load(block.qh);
  for (int c = 0; c < 4; ++c) {
    const __m256i bytes = Load(block.qs + 32 * c);
    // Bit 2c of qh[l] (element 64c + l) and bit 2c + 1 (element 64c + 32 + l), moved to bit 4.
    const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * c)), bit);
    const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * c + 1)), bit);
    u.values[2 * c] = _mm256_or_si256(_mm256_and_si256(bytes, low4), _mm256_slli_epi16(h0, 4));
    u.values[2 * c + 1] =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4), _mm256_slli_epi16(h1, 4));
    u.scales[2 * c] = _mm256_set1_epi16(static_cast<short>(sc[2 * c]));
    u.scales[2 * c + 1] = _mm256_set1_epi16(static_cast<short>(sc[2 * c + 1]));
  }
  u.is_signed = false;
}

inline void UnpackQ6K(const BlockQ6_K& block, Unpacked& u) {
  const __m256i low4 = _mm256_set1_epi8(15), two = _mm256_set1_epi8(3), offset = _mm256_set1_epi8(32);
  for (int h = 0; h < 2; ++h) {
    const __m256i ql0 = Load(block.ql + 64 * h), ql1 = Load(block.ql + 64 * h + 32);
    const __m256i qh = Load(block.qh + 32 * h);
    // Value i (element 128h + 32i + l): low 4 bits from ql0 / ql1 / ql0 >> 4 / ql1 >> 4, high 2
    // bits from bits 2i, 2i + 1 of qh. Shifts within 16-bit lanes, then masks per byte.
    const __m256i lows[4] = {_mm256_and_si256(ql0, low4), _mm256_and_si256(ql1, low4),
                             _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                             _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4)};
    const __m256i highs[4] = {_mm256_and_si256(qh, two), _mm256_and_si256(_mm256_srli_epi16(qh, 2), two),
                              _mm256_and_si256(_mm256_srli_epi16(qh, 4), two),
                              _mm256_and_si256(_mm256_srli_epi16(qh, 6), two)};
    for (int i = 0; i < 4; ++i) {
      const int v = 4 * h + i;
      u.values[v] = _mm256_sub_epi8(_mm256_or_si256(lows[i], _mm256_slli_epi16(highs[i], 4)), offset);
      u.scales[v] = _mm256_set_m128i(_mm_set1_epi16(block.scales[2 * v + 1]), _mm_set1_epi16(block.scales[2 * v]));
    }
  }
  u.is_signed = true;
}

// Bounds: maddubs pair sums <= 2 * 32 * 127 = 8128 (q6_K |q - 32| <= 32; q5_K 2 * 31 * 127);
// times a scale |s| <= 128, two pairs per lane: <= 2.1e6 per 32-block, <= 1.7e7 per super-block.
template <int C>
void SuperBlockTimesColumns(const Unpacked& u, const int8_t* const x[C], __m256i sums[C]) {
  for (int c = 0; c < C; ++c) sums[c] = _mm256_setzero_si256();
  for (int v = 0; v < 8; ++v) {
    const __m256i w_abs = u.is_signed ? _mm256_sign_epi8(u.values[v], u.values[v]) : u.values[v];
    for (int c = 0; c < C; ++c) {
      __m256i xv = Load(x[c] + v * kQ8Block);
      if (u.is_signed) xv = _mm256_sign_epi8(xv, u.values[v]);
      sums[c] = _mm256_add_epi32(sums[c], _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, xv), u.scales[v]));
    }
  }
}

template <int C>
void RowTimesColumns(DType type, const uint8_t* row, int64_t supers, const int8_t* xq, int64_t k, const float* xd,
                     const int32_t* xsums, float* y, int64_t y_col_stride) {
  const int64_t blocks = k / kQ8Block;
  __m256 acc[C];
  float min_acc[C];
  for (int c = 0; c < C; ++c) {
    acc[c] = _mm256_setzero_ps();
    min_acc[c] = 0;
  }
  Unpacked u;
  for (int64_t s = 0; s < supers; ++s) {
    float d = 0, dmin = 0;
    int sc[8] = {}, m[8] = {};
    if (type == DType::kQ4_K) {
      const auto& block = reinterpret_cast<const BlockQ4_K*>(row)[s];
      ScalesMins(block, sc, m);
      UnpackQ4K(block, sc, u);
      d = _cvtsh_ss(block.d);
      dmin = _cvtsh_ss(block.dmin);
    } else if (type == DType::kQ5_K) {
      const auto& block = reinterpret_cast<const BlockQ5_K*>(row)[s];
      ScalesMins(block, sc, m);
      UnpackQ5K(block, sc, u);
      d = _cvtsh_ss(block.d);
      dmin = _cvtsh_ss(block.dmin);
    } else {
      const auto& block = reinterpret_cast<const BlockQ6_K*>(row)[s];
      UnpackQ6K(block, u);
      d = _cvtsh_ss(block.d);
    }
    const int8_t* x[C];
    for (int c = 0; c < C; ++c) x[c] = xq + c * k + s * kSuperBlock;
    __m256i sums[C];
    SuperBlockTimesColumns<C>(u, x, sums);
    for (int c = 0; c < C; ++c) {
      const float dx = xd[c * blocks + s * kBlocksPerSuper];
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[c]), _mm256_set1_ps(d * dx), acc[c]);
      if (type != DType::kQ6_K) {
        const int32_t* bs = xsums + c * blocks + s * kBlocksPerSuper;
        int32_t msum = 0;
        for (int j = 0; j < 8; ++j) msum += m[j] * bs[j];
        min_acc[c] += dmin * dx * static_cast<float>(msum);
      }
    }
  }
  for (int c = 0; c < C; ++c) y[c * y_col_stride] = HorizontalSum(acc[c]) - min_acc[c];
}

#else  // scalar: the same integer sums, one value at a time

// One super-block's values (q4_K / q5_K: 0..31; q6_K: q - 32) and their 16-value scales.
void UnpackScalar(DType type, const uint8_t* row, int64_t s, int values[256], int scales[16], int m[8], float* d,
                  float* dmin) {
  if (type == DType::kQ6_K) {
    const auto& block = reinterpret_cast<const BlockQ6_K*>(row)[s];
    for (int i = 0; i < 16; ++i) scales[i] = block.scales[i];
    *d = HalfToFloat(block.d);
    *dmin = 0;
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo0 = block.ql[64 * h + l], lo1 = block.ql[64 * h + 32 + l], hi = block.qh[32 * h + l];
        values[128 * h + l] = ((lo0 & 15) | ((hi & 3) << 4)) - 32;
        values[128 * h + 32 + l] = ((lo1 & 15) | (((hi >> 2) & 3) << 4)) - 32;
        values[128 * h + 64 + l] = ((lo0 >> 4) | (((hi >> 4) & 3) << 4)) - 32;
        values[128 * h + 96 + l] = ((lo1 >> 4) | (((hi >> 6) & 3) << 4)) - 32;
      }
    }
    return;
  }
  int sc[8];
  const uint8_t* qs;
  const uint8_t* qh = nullptr;
  if (type == DType::kQ4_K) {
    const auto& block = reinterpret_cast<const BlockQ4_K*>(row)[s];
    ScalesMins(block, sc, m);
    *d = HalfToFloat(block.d);
    *dmin = HalfToFloat(block.dmin);
    qs = block.qs;
  } else {
    const auto& block = reinterpret_cast<const BlockQ5_K*>(row)[s];
    ScalesMins(block, sc, m);
    *d = HalfToFloat(block.d);
    *dmin = HalfToFloat(block.dmin);
    qs = block.qs;
    qh = block.qh;
  }
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      values[64 * c + l] = (qs[32 * c + l] & 15) + (qh && (qh[l] >> (2 * c) & 1) ? 16 : 0);
      values[64 * c + 32 + l] = (qs[32 * c + l] >> 4) + (qh && (qh[l] >> (2 * c + 1) & 1) ? 16 : 0);
    }
  }
  for (int i = 0; i < 16; ++i) scales[i] = sc[i / 2];
}

#endif

}  // namespace

void KQuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const int8_t* xq,
                  const float* xd, int64_t cols, float* y, int64_t y_row_stride, int64_t y_col_stride) {
  const int64_t supers = k / kSuperBlock, blocks = k / kQ8Block;
  static thread_local std::vector<int32_t> xsums;
  if (type != DType::kQ6_K) BlockSums(xq, k, cols, xsums);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * row_bytes;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    for (int64_t c0 = 0; c0 < cols; c0 += kColumnGroup) {
      const int8_t* x = xq + c0 * k;
      const float* d = xd + c0 * blocks;
      const int32_t* sums = type != DType::kQ6_K ? xsums.data() + c0 * blocks : nullptr;
      float* out = y + r * y_row_stride + c0 * y_col_stride;
      switch (std::min<int64_t>(kColumnGroup, cols - c0)) {
        case 4: RowTimesColumns<4>(type, row, supers, x, k, d, sums, out, y_col_stride); break;
        case 3: RowTimesColumns<3>(type, row, supers, x, k, d, sums, out, y_col_stride); break;
        case 2: RowTimesColumns<2>(type, row, supers, x, k, d, sums, out, y_col_stride); break;
        default: RowTimesColumns<1>(type, row, supers, x, k, d, sums, out, y_col_stride); break;
      }
    }
#else
    for (int64_t c = 0; c < cols; ++c) {
      float sum = 0;
      for (int64_t s = 0; s < supers; ++s) {
        int values[256], scales[16], m[8];
        float d, dmin;
        UnpackScalar(type, row, s, values, scales, m, &d, &dmin);
        const int8_t* x = xq + c * k + s * kSuperBlock;
        int32_t dot = 0;
        for (int i = 0; i < 256; ++i) dot += scales[i / 16] * values[i] * x[i];
        const float dx = xd[c * blocks + s * kBlocksPerSuper];
        float term = d * dx * static_cast<float>(dot);
        if (type != DType::kQ6_K) {
          int32_t msum = 0;
          for (int j = 0; j < 8; ++j) msum += m[j] * xsums[c * blocks + s * kBlocksPerSuper + j];
          term -= dmin * dx * static_cast<float>(msum);
        }
        sum += term;
      }
      y[r * y_row_stride + c * y_col_stride] = sum;
    }
#endif
  }
}

}  // namespace latentserve::kernels::cpu
