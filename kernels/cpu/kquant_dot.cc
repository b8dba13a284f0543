// K-quant (q4_K, q5_K, q6_K) rows against q8_K-rounded activation columns (quant_dot.h), and
// that rounding.
//
// Each stored super-block is unpacked once per call (values to int8, the 6-bit scales and mins
// to int16, Decoded) and then met by every group of up to 4 columns: with many columns 16 rows
// are unpacked at a time and each 4-column group (4 k bytes, in L1) walks all 16. Integer sums
// stay exact within a super-block (bounds at RowTimesColumns); one convert and one FMA per
// super-block and column apply d_w * d_x. The order of every float operation is fixed per
// (row, column), so a result does not depend on the column count or the row range of the call.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/kquant_internal.h"
#include "kernels/cpu/quant_dot.h"

namespace latentserve::kernels::cpu {
namespace {

constexpr int kColumnGroup = 4;   // columns sharing each load of a row
constexpr int64_t kRowBlock = 16;  // rows unpacked together (many columns)
using kquant::Columns;
using kquant::Decoded;
using kquant::kBlocksPerSuper;

// Sum of each 32-block of each column: sums [cols][k / 32] (the min terms of q4_K / q5_K;
// |sum| <= 32 * 128 fits int16).
void BlockSums(const int8_t* xq, int64_t k, int64_t cols, std::vector<int16_t>& sums) {
  const int64_t blocks = k / kQ8Block;
  sums.resize(cols * blocks);
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int8_t* q = xq + c * k + b * kQ8Block;
#if defined(__AVX2__)
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      const __m256i quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      sums[c * blocks + b] = static_cast<int16_t>(_mm_cvtsi128_si32(_mm_hadd_epi32(s4, s4)));
#else
      int32_t sum = 0;
      for (int i = 0; i < kQ8Block; ++i) sum += q[i];
      sums[c * blocks + b] = static_cast<int16_t>(sum);
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
inline void Store(void* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// The 8 6-bit scales and mins of a q4_K / q5_K super-block (layout in common/dtype.h), as
// four words of 4 bytes each: sub-blocks 0..3 take the low 6 bits of bytes 0..3 (scales) and
// 4..7 (mins); 4..7 take the nibbles of bytes 8..11 plus the top 2 bits of bytes 0..3 / 4..7.
inline void DecodeScalesMins(const uint8_t* packed, Decoded& out) {
  uint32_t a, b, c;
  std::memcpy(&a, packed, 4);
  std::memcpy(&b, packed + 4, 4);
  std::memcpy(&c, packed + 8, 4);
  const uint32_t scales_lo = a & 0x3f3f3f3fu, mins_lo = b & 0x3f3f3f3fu;
  const uint32_t scales_hi = (c & 0x0f0f0f0fu) | (((a >> 6) & 0x03030303u) << 4);
  const uint32_t mins_hi = ((c >> 4) & 0x0f0f0f0fu) | (((b >> 6) & 0x03030303u) << 4);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out.scales),
                   _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(scales_hi), static_cast<int>(scales_lo))));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out.mins),
                   _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(mins_hi), static_cast<int>(mins_lo))));
}

inline void Decode(const BlockQ4_K& block, Decoded& out) {
  const __m256i low4 = _mm256_set1_epi8(15);
  for (int c = 0; c < 4; ++c) {
    const __m256i bytes = Load(block.qs + 32 * c);
    Store(out.values + 64 * c, _mm256_and_si256(bytes, low4));
    Store(out.values + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4));
  }
  DecodeScalesMins(block.scales, out);
  out.d = _cvtsh_ss(block.d);
  out.dmin = _cvtsh_ss(block.dmin);
}

inline void Decode(const BlockQ5_K& block, Decoded& out) {
  const __m256i low4 = _mm256_set1_epi8(15), bit = _mm256_set1_epi8(1);
  const __m256i high = Load(block.qh);
  for (int c = 0; c < 4; ++c) {
    const __m256i bytes = Load(block.qs + 32 * c);
    // Bit 2c of qh[l] (element 64c + l) and bit 2c + 1 (element 64c + 32 + l), moved to bit 4.
    const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * c)), bit);
    const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * c + 1)), bit);
    Store(out.values + 64 * c, _mm256_or_si256(_mm256_and_si256(bytes, low4), _mm256_slli_epi16(h0, 4)));
    Store(out.values + 64 * c + 32,
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4), _mm256_slli_epi16(h1, 4)));
  }
  DecodeScalesMins(block.scales, out);
  out.d = _cvtsh_ss(block.d);
  out.dmin = _cvtsh_ss(block.dmin);
}

inline void Decode(const BlockQ6_K& block, Decoded& out) {
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
      const __m256i values = _mm256_sub_epi8(_mm256_or_si256(lows[i], _mm256_slli_epi16(highs[i], 4)), offset);
      Store(out.signs + 32 * v, values);
      Store(out.values + 32 * v, _mm256_sign_epi8(values, values));
    }
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.scales),
                      _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block.scales))));
  out.d = _cvtsh_ss(block.d);
  out.dmin = 0;
}

template <class Block>
void DecodeRow(const uint8_t* row, int64_t supers, Decoded* out) {
  const Block* blocks = reinterpret_cast<const Block*>(row);
  for (int64_t s = 0; s < supers; ++s) Decode(blocks[s], out[s]);
}

void DecodeRow(DType type, const uint8_t* row, int64_t supers, Decoded* out) {
  if (type == DType::kQ4_K) {
    DecodeRow<BlockQ4_K>(row, supers, out);
  } else if (type == DType::kQ5_K) {
    DecodeRow<BlockQ5_K>(row, supers, out);
  } else {
    DecodeRow<BlockQ6_K>(row, supers, out);
  }
}

// The int16 scale of each value of 32-block v: q4_K / q5_K one scale for all 32; q6_K
// scales[2v] for the low 16 bytes and scales[2v + 1] for the high 16 (pshufb works per 128-bit
// lane, so one control picks the first int16 of the pair in the low lane, the second in the high).
template <bool kSigned>
inline __m256i ScaleVector(const Decoded& block, int v) {
  if (!kSigned) return _mm256_set1_epi16(block.scales[v]);
  int32_t pair;
  std::memcpy(&pair, block.scales + 2 * v, 4);
  const __m256i pick = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  //
                                        2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  return _mm256_shuffle_epi8(_mm256_set1_epi32(pair), pick);
}

// y[c * y_col_stride] for C columns starting at c0 against one decoded row.
// Per super-block: integer sums per lane exact (maddubs pairs <= 2 * 32 * 127 = 8128 (q6_K
// |q - 32| <= 32; q5_K 2 * 31 * 127); times a scale |s| <= 128, two pairs per lane: <= 2.1e6 per
// 32-block, <= 1.7e7 per super-block); then one convert and FMA by d_w * d_x per lane, and the
// q4_K / q5_K min term dmin * d_x * sum(m * block sums) in one fused step per column.
template <bool kSigned, int C>
void RowTimesColumns(const Decoded* row, int64_t supers, const Columns& x, int64_t c0, float* y,
                     int64_t y_col_stride) {
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  __m128 min_acc = _mm_setzero_ps();
  for (int64_t s = 0; s < supers; ++s) {
    const Decoded& block = row[s];
    __m256i sums[C];
    for (int c = 0; c < C; ++c) sums[c] = _mm256_setzero_si256();
    const int8_t* xs = x.q + c0 * x.k + s * kSuperBlock;
    for (int v = 0; v < 8; ++v) {
      const __m256i w = Load(block.values + 32 * v);
      const __m256i scale = ScaleVector<kSigned>(block, v);
      const __m256i sign = kSigned ? Load(block.signs + 32 * v) : w;
      for (int c = 0; c < C; ++c) {
        __m256i xv = Load(xs + c * x.k + 32 * v);
        if (kSigned) xv = _mm256_sign_epi8(xv, sign);
        sums[c] = _mm256_add_epi32(sums[c], _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), scale));
      }
    }
    const int64_t b = s * kBlocksPerSuper;
    alignas(16) float dx[4] = {};
    for (int c = 0; c < C; ++c) {
      dx[c] = x.d[(c0 + c) * x.blocks + b];
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[c]), _mm256_set1_ps(block.d * dx[c]), acc[c]);
    }
    if (!kSigned) {
      const __m128i mins = _mm_load_si128(reinterpret_cast<const __m128i*>(block.mins));
      __m128i m[4];
      for (int c = 0; c < 4; ++c) {
        m[c] = c < C ? _mm_madd_epi16(mins, _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                 x.sums + (c0 + c) * x.blocks + b)))
                     : _mm_setzero_si128();
      }
      const __m128i msum = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
      min_acc = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(block.dmin), _mm_load_ps(dx)), _mm_cvtepi32_ps(msum), min_acc);
    }
  }
  alignas(16) float mins[4];
  _mm_store_ps(mins, min_acc);
  for (int c = 0; c < C; ++c) y[c * y_col_stride] = HorizontalSum(acc[c]) - mins[c];
}

template <bool kSigned>
void RowTimesGroup(const Decoded* row, int64_t supers, const Columns& x, int64_t c0, int64_t group, float* y,
                   int64_t y_col_stride) {
  switch (group) {
    case 4: RowTimesColumns<kSigned, 4>(row, supers, x, c0, y, y_col_stride); break;
    case 3: RowTimesColumns<kSigned, 3>(row, supers, x, c0, y, y_col_stride); break;
    case 2: RowTimesColumns<kSigned, 2>(row, supers, x, c0, y, y_col_stride); break;
    default: RowTimesColumns<kSigned, 1>(row, supers, x, c0, y, y_col_stride); break;
  }
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

void QuantizeActivationsQ8K(const float* x, int64_t x_stride, int64_t k, int64_t cols, int8_t* qs, float* ds) {
  constexpr int64_t kPerScale = kSuperBlock / kQ8Block;
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t s = 0; s < k / kSuperBlock; ++s) {
      const float* v = x + c * x_stride + s * kSuperBlock;
      int8_t* q = qs + c * k + s * kSuperBlock;
      float* d = ds + c * (k / kQ8Block) + s * kPerScale;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
      // The same rounding as the loop below: max is the first value of largest magnitude.
      const __m256 sign_bit = _mm256_set1_ps(-0.0f);
      __m256 amax8 = _mm256_setzero_ps();
      for (int64_t i = 0; i < kSuperBlock; i += 8) amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(v + i)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      float max = 0;
      for (int64_t i = 0; i < kSuperBlock && amax != 0; i += 8) {
        const __m256 a = _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(v + i));
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(amax), _CMP_EQ_OQ));
        if (hit != 0) {
          max = v[i + __builtin_ctz(static_cast<unsigned>(hit))];
          break;
        }
      }
      const float inverse = amax != 0 ? -127.0f / max : 0.0f;
      const __m256 inv = _mm256_set1_ps(inverse);
      for (int64_t i = 0; i < kSuperBlock; i += 32) {
        __m256i ints[4];
        for (int j = 0; j < 4; ++j) {
          ints[j] = _mm256_min_epi32(_mm256_set1_epi32(127),
                                     _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(inv, _mm256_loadu_ps(v + i + 8 * j)),
                                                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        }
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                            _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      }
      std::fill(d, d + kPerScale, amax != 0 ? 1.0f / inverse : 0.0f);
#else
      float amax = 0, max = 0;
      for (int64_t i = 0; i < kSuperBlock; ++i) {
        if (std::fabs(v[i]) > amax) {
          amax = std::fabs(v[i]);
          max = v[i];
        }
      }
      const float inverse = amax != 0 ? -127.0f / max : 0.0f;
      for (int64_t i = 0; i < kSuperBlock; ++i) {
        q[i] = static_cast<int8_t>(std::min(127, static_cast<int>(std::nearbyint(inverse * v[i]))));
      }
      std::fill(d, d + kPerScale, amax != 0 ? 1.0f / inverse : 0.0f);
#endif
    }
  }
}

void PrepareKQuantColumns(const int8_t* xq, const float* xd, int64_t k, int64_t cols, KQuantColumns& out) {
  const int64_t supers = k / kSuperBlock, blocks = k / kQ8Block;
  out.k = k;
  out.cols = cols;
  BlockSums(xq, k, cols, out.sums);
  out.d_super.resize(supers * cols);
  out.sums_super.resize(supers * cols * kBlocksPerSuper);
  for (int64_t s = 0; s < supers; ++s) {
    for (int64_t c = 0; c < cols; ++c) {
      out.d_super[s * cols + c] = xd[c * blocks + s * kBlocksPerSuper];
      std::copy_n(&out.sums[c * blocks + s * kBlocksPerSuper], kBlocksPerSuper,
                  &out.sums_super[(s * cols + c) * kBlocksPerSuper]);
    }
  }
}

void KQuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const int8_t* xq,
                  const float* xd, int64_t cols, float* y, int64_t y_row_stride, int64_t y_col_stride,
                  const KQuantColumns* prepared) {
  const int64_t supers = k / kSuperBlock, blocks = k / kQ8Block;
  if (prepared == nullptr) {
    static thread_local KQuantColumns own;
    PrepareKQuantColumns(xq, xd, k, cols, own);
    prepared = &own;
  }
  LS_CHECK(prepared->k == k && prepared->cols == cols);
  const std::vector<int16_t>& xsums = prepared->sums;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  const Columns x{xq, xd, xsums.data(), k, blocks, prepared->d_super.data(), prepared->sums_super.data(), cols};
  const bool is_signed = type == DType::kQ6_K;
  static thread_local std::vector<Decoded> decoded;
  // Rows are unpacked kRowBlock at a time; each group of kColumnGroup columns (4 k bytes, in L1)
  // then meets all of them, so activations are read once per row block, not once per row.
  const int64_t row_block = cols <= 2 ? 1 : kRowBlock;
  decoded.resize(row_block * supers);
  const bool avx512 = kquant::UseAvx512();
  const int64_t column_group = avx512 ? kquant::kAvx512ColumnGroup : kColumnGroup;
  for (int64_t r0 = 0; r0 < rows; r0 += row_block) {
    const int64_t block_rows = std::min(row_block, rows - r0);
    for (int64_t r = 0; r < block_rows; ++r) DecodeRow(type, w + (r0 + r) * row_bytes, supers, &decoded[r * supers]);
    for (int64_t c0 = 0; c0 < cols; c0 += column_group) {
      const int64_t group = std::min<int64_t>(column_group, cols - c0);
      for (int64_t r = 0; r < block_rows; ++r) {
        float* out = y + (r0 + r) * y_row_stride + c0 * y_col_stride;
        if (avx512) {
          kquant::RowTimesGroupAvx512(is_signed, &decoded[r * supers], supers, x, c0, group, out, y_col_stride);
        } else if (is_signed) {
          RowTimesGroup<true>(&decoded[r * supers], supers, x, c0, group, out, y_col_stride);
        } else {
          RowTimesGroup<false>(&decoded[r * supers], supers, x, c0, group, out, y_col_stride);
        }
      }
    }
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * row_bytes;
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
  }
#endif
}

}  // namespace latentserve::kernels::cpu
