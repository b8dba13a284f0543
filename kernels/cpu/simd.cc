#include "kernels/cpu/simd.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"

namespace latentserve::kernels::cpu {
namespace {

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

inline __m256 Int8x8ToFloat(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// The 32 values of a q4_0 block as four vectors of 8 (before scaling by d).
inline void Q4Values(const uint8_t* qs, __m256 out[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i low = _mm_sub_epi8(_mm_and_si128(bytes, _mm_set1_epi8(15)), _mm_set1_epi8(8));
  const __m128i high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15)), _mm_set1_epi8(8));
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(low, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(high, 8)));
}
#define LS_SIMD 1
#endif

}  // namespace

float RowDot(DType type, const uint8_t* row, const float* x, int64_t k) {
#ifdef LS_SIMD
  switch (type) {
    case DType::kF32:
      return Dot(reinterpret_cast<const float*>(row), x, k);
    case DType::kQ8_0: {
      const auto* blocks = reinterpret_cast<const BlockQ8_0*>(row);
      __m256 acc = _mm256_setzero_ps();
      for (int64_t b = 0; b < k / 32; ++b) {
        const float* xb = x + b * 32;
        __m256 s = _mm256_mul_ps(Int8x8ToFloat(blocks[b].qs), _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(Int8x8ToFloat(blocks[b].qs + 8), _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(Int8x8ToFloat(blocks[b].qs + 16), _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(Int8x8ToFloat(blocks[b].qs + 24), _mm256_loadu_ps(xb + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfToFloat(blocks[b].d)), s, acc);
      }
      return HorizontalSum(acc);
    }
    case DType::kQ4_0: {
      const auto* blocks = reinterpret_cast<const BlockQ4_0*>(row);
      __m256 acc = _mm256_setzero_ps();
      __m256 v[4];
      for (int64_t b = 0; b < k / 32; ++b) {
        const float* xb = x + b * 32;
        Q4Values(blocks[b].qs, v);
        __m256 s = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfToFloat(blocks[b].d)), s, acc);
      }
      return HorizontalSum(acc);
    }
    case DType::kF16: {
      const auto* h = reinterpret_cast<const uint16_t*>(row);
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 16 <= k; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))),
                               _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i + 8))),
                               _mm256_loadu_ps(x + i + 8), acc1);
      }
      float sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
      for (; i < k; ++i) sum += HalfToFloat(h[i]) * x[i];
      return sum;
    }
    default:
      break;
  }
#endif
  float buffer[4096];
  float sum = 0;
  for (int64_t i0 = 0; i0 < k; i0 += 4096) {
    const int64_t n = std::min<int64_t>(4096, k - i0);
    DequantizeRowFast(type, row + RowBytes(type, i0), buffer, n);
    sum += Dot(buffer, x + i0, n);
  }
  return sum;
}

void ExpRow(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#ifdef LS_SIMD
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Exp8(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}

void SoftplusRow(const float* x, const float* bias, float scale, float* y, int64_t n) {
  int64_t i = 0;
#ifdef LS_SIMD
  const __m256 one = _mm256_set1_ps(1.0f), limit = _mm256_set1_ps(20.0f), vscale = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(bias + i));
    const __m256 ev = Exp8(_mm256_min_ps(v, limit));
    // log1p(ev) as ln(u) - ((u - 1) - ev) / u with u = 1 + ev: the division restores what
    // rounding 1 + ev lost (tiny ev would otherwise give 0).
    const __m256 u = _mm256_add_ps(one, ev);
    const __m256 log1p = _mm256_sub_ps(Log8(u), _mm256_div_ps(_mm256_sub_ps(_mm256_sub_ps(u, one), ev), u));
    const __m256 softplus = _mm256_blendv_ps(log1p, v, _mm256_cmp_ps(v, limit, _CMP_GT_OQ));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(vscale, softplus));
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i] + bias[i];
    y[i] = scale * (v > 20.0f ? v : std::log1p(std::exp(v)));
  }
}

void SiluMulRow(const float* gate, const float* up, float* y, int64_t n) {
  int64_t i = 0;
#ifdef LS_SIMD
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sigmoid = _mm256_div_ps(one, _mm256_add_ps(one, Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void DequantizeRowFast(DType type, const uint8_t* row, float* out, int64_t k) {
#ifdef LS_SIMD
  if (type == DType::kQ8_0) {
    const auto* blocks = reinterpret_cast<const BlockQ8_0*>(row);
    for (int64_t b = 0; b < k / 32; ++b) {
      const __m256 d = _mm256_set1_ps(HalfToFloat(blocks[b].d));
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + j * 8, _mm256_mul_ps(d, Int8x8ToFloat(blocks[b].qs + j * 8)));
    }
    return;
  }
  if (type == DType::kQ4_0) {
    const auto* blocks = reinterpret_cast<const BlockQ4_0*>(row);
    __m256 v[4];
    for (int64_t b = 0; b < k / 32; ++b) {
      const __m256 d = _mm256_set1_ps(HalfToFloat(blocks[b].d));
      Q4Values(blocks[b].qs, v);
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + j * 8, _mm256_mul_ps(d, v[j]));
    }
    return;
  }
  if (type == DType::kQ5_0) {  // (code - 16) * d per value, as DequantizeRow computes it
    const auto* blocks = reinterpret_cast<const BlockQ5_0*>(row);
    // Bit i of qh (the fifth bit of value i) to byte i: each byte picks its qh byte, then its bit.
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    for (int64_t b = 0; b < k / 32; ++b) {
      uint32_t qh;
      std::memcpy(&qh, blocks[b].qh, 4);
      const __m256i high = _mm256_and_si256(
          _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)), pick), bit), bit),
          _mm256_set1_epi8(16));
      const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks[b].qs));
      const __m256i low = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), _mm_set1_epi8(15)),
                                           _mm_and_si128(qs, _mm_set1_epi8(15)));
      const __m256i codes = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(16));
      const __m256 d = _mm256_set1_ps(HalfToFloat(blocks[b].d));
      alignas(32) int8_t values[32];
      _mm256_store_si256(reinterpret_cast<__m256i*>(values), codes);
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + j * 8, _mm256_mul_ps(Int8x8ToFloat(values + j * 8), d));
    }
    return;
  }
  if (type == DType::kF16) {
    const auto* h = reinterpret_cast<const uint16_t*>(row);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    for (; i < k; ++i) out[i] = HalfToFloat(h[i]);
    return;
  }
#endif
  DequantizeRow(type, row, out, k);
}

namespace {

template <int R, int C>
void Tile(const float* w, int64_t k, const float* x, int64_t x_stride, float* y, int64_t y_row_stride,
          int64_t y_col_stride) {
#ifdef LS_SIMD
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * k + i);
    for (int c = 0; c < C; ++c) {
      const __m256 xv = _mm256_loadu_ps(x + c * x_stride + i);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float sum = HorizontalSum(acc[r][c]);
      for (int64_t j = i; j < k; ++j) sum += w[r * k + j] * x[c * x_stride + j];
      y[r * y_row_stride + c * y_col_stride] = sum;
    }
  }
#else
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r * y_row_stride + c * y_col_stride] = Dot(w + r * k, x + c * x_stride, k);
#endif
}

template <int R>
void TileRows(const float* w, int64_t k, const float* x, int64_t x_stride, int64_t cols, float* y, int64_t y_row_stride,
              int64_t y_col_stride) {
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) Tile<R, 4>(w, k, x + c * x_stride, x_stride, y + c * y_col_stride, y_row_stride, y_col_stride);
  switch (cols - c) {
    case 3: Tile<R, 3>(w, k, x + c * x_stride, x_stride, y + c * y_col_stride, y_row_stride, y_col_stride); break;
    case 2: Tile<R, 2>(w, k, x + c * x_stride, x_stride, y + c * y_col_stride, y_row_stride, y_col_stride); break;
    case 1: Tile<R, 1>(w, k, x + c * x_stride, x_stride, y + c * y_col_stride, y_row_stride, y_col_stride); break;
    default: break;
  }
}

}  // namespace

void GemmTile(const float* w, int64_t rows, int64_t k, const float* x, int64_t x_stride, int64_t cols, float* y,
              int64_t y_row_stride, int64_t y_col_stride) {
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3) TileRows<3>(w + r * k, k, x, x_stride, cols, y + r * y_row_stride, y_row_stride, y_col_stride);
  switch (rows - r) {
    case 2: TileRows<2>(w + r * k, k, x, x_stride, cols, y + r * y_row_stride, y_row_stride, y_col_stride); break;
    case 1: TileRows<1>(w + r * k, k, x, x_stride, cols, y + r * y_row_stride, y_row_stride, y_col_stride); break;
    default: break;
  }
}

}  // namespace latentserve::kernels::cpu
