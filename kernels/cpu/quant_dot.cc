#include "kernels/cpu/quant_dot.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

namespace latentserve::kernels::cpu {
namespace {

// Tile shape: the 4 rows of a panel group (fixed by the layout) x kCols activation columns.
// 4 magnitudes, 4 products, kCols accumulators and the shared operands fill AVX2's 16
// registers at kCols = 4.
struct QuantTileTraits {
  static constexpr int kRows = 4;
  static constexpr int kCols = 4;
};
constexpr int kGroupRows = QuantTileTraits::kRows;

#if defined(__AVX2__) && defined(__FMA__)
#define LS_QUANT_SIMD 1

inline __m256i Load32(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// q4_0 block (16 bytes of nibbles) -> 32 signed values q - 8, in element order.
inline __m256i UnpackQ4(const uint8_t* qs) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(15));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15));
  return _mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8));
}
#endif

// Where a tile reads its 4 weight rows, block by block: Block(b) prepares block b and then
// W(r) is row r's 32 signed values, abs[r] their magnitudes, scale [d0 d1 d2 d3 | d0 d1 d2 d3].
#ifdef LS_QUANT_SIMD
struct PanelRows {  // a repacked QuantPanel group
  const int8_t *w, *w_abs;
  const float* d;
  const int8_t* wb = nullptr;
  __m256i abs[4];
  __m256 scale;
  void Block(int64_t b) {
    wb = w + b * kGroupRows * kQ8Block;
    const int8_t* ab = w_abs + b * kGroupRows * kQ8Block;
    for (int r = 0; r < 4; ++r) abs[r] = Load32(ab + r * kQ8Block);
    scale = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(d + b * kGroupRows));
  }
  const int8_t* W(int r) const { return wb + r * kQ8Block; }
};

// A repacked q4_0 group: values within [-8, 7] let the tile skip the sign trick (see TileSmall).
struct PanelSmallRows {
  const int8_t* w;
  const int32_t* corr;
  const float* d;
  const int8_t* wb = nullptr;
  __m256i offset;  // 128 * (sum of the row's values) per half, as Tile folds the rows
  __m256 scale;
  void Block(int64_t b) {
    wb = w + b * kGroupRows * kQ8Block;
    offset = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + b * 2 * kGroupRows));
    scale = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(d + b * kGroupRows));
  }
  const int8_t* W(int r) const { return wb + r * kQ8Block; }
};

inline __m256 HalfScales(uint16_t d0, uint16_t d1, uint16_t d2, uint16_t d3) {
  const __m128 s =
      _mm_cvtph_ps(_mm_setr_epi16(static_cast<short>(d0), static_cast<short>(d1),
                                  static_cast<short>(d2), static_cast<short>(d3), 0, 0, 0, 0));
  return _mm256_set_m128(s, s);
}


inline __m256i BlockValues(const BlockQ8_0& block) { return Load32(block.qs); }
inline __m256i BlockValues(const BlockQ4_0& block) { return UnpackQ4(block.qs); }

// 4 stored q8_0 / q4_0 rows, decoded to int8 a block at a time (aligned re-reads).
template <typename BlockT>
struct StoredRows {
  const BlockT* row[4];
  alignas(32) int8_t values[4 * kQ8Block];
  __m256i abs[4];
  __m256 scale;
  void Block(int64_t b) {
    for (int r = 0; r < 4; ++r) {
      const __m256i w = BlockValues(row[r][b]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(values + r * kQ8Block), w);
      abs[r] = _mm256_sign_epi8(w, w);
    }
    scale = HalfScales(row[0][b].d, row[1][b].d, row[2][b].d, row[3][b].d);
  }
  const int8_t* W(int r) const { return values + r * kQ8Block; }
};
#endif

#ifdef LS_QUANT_SIMD
// One group of 4 weight rows against C columns. Per block, each row's 32 products are summed
// pairwise by maddubs (|w| against x carrying w's sign: maddubs wants one unsigned operand;
// each pair sum <= 2 * 128 * 127 fits int16) and madd, then hadds fold the 4 rows into one
// vector [r0 r1 r2 r3 | r0 r1 r2 r3] (elements 0..15 | 16..31), so one convert and one FMA
// serve 4 rows. The two halves are added at the end. Every source gives the same values, so
// the result does not depend on the source either.
template <int C, class Rows>
void Tile(Rows& rows, int64_t blocks, const int8_t* xq, const float* xd, float* y,
          int64_t y_row_stride, int64_t y_col_stride, int valid_rows) {
  const int64_t k = blocks * kQ8Block;
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < blocks; ++b) {
    rows.Block(b);
    for (int c = 0; c < C; ++c) {
      const __m256i x = Load32(xq + c * k + b * kQ8Block);
      __m256i p[4];
      for (int r = 0; r < 4; ++r) {
        p[r] = _mm256_madd_epi16(
            _mm256_maddubs_epi16(rows.abs[r], _mm256_sign_epi8(x, Load32(rows.W(r)))), ones);
      }
      const __m256i h =
          _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
      const __m256 scale = _mm256_mul_ps(rows.scale, _mm256_broadcast_ss(xd + c * blocks + b));
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), scale, acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    alignas(16) float out[kGroupRows];
    _mm_store_ps(out, _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1)));
    for (int r = 0; r < valid_rows; ++r) y[r * y_row_stride + c * y_col_stride] = out[r];
  }
}

// Tile for values within [-8, 7] (q4_0): x + 128 is unsigned, so maddubs takes it directly
// (pair sums <= 2 * 255 * 8), hadds fold 16 products per row-half in int16 (<= 16 * 255 * 8
// fits) and one madd widens; subtracting 128 * (sum of the values) leaves exactly Tile's
// integers, so the result is bitwise Tile's.
template <int C>
void TileSmall(PanelSmallRows& rows, int64_t blocks, const int8_t* xq, const float* xd, float* y,
               int64_t y_row_stride, int64_t y_col_stride, int valid_rows) {
  const int64_t k = blocks * kQ8Block;
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < blocks; ++b) {
    rows.Block(b);
    for (int c = 0; c < C; ++c) {
      const __m256i x = _mm256_xor_si256(Load32(xq + c * k + b * kQ8Block), bias);
      const __m256i m01 = _mm256_hadd_epi16(_mm256_maddubs_epi16(x, Load32(rows.W(0))),
                                            _mm256_maddubs_epi16(x, Load32(rows.W(1))));
      const __m256i m23 = _mm256_hadd_epi16(_mm256_maddubs_epi16(x, Load32(rows.W(2))),
                                            _mm256_maddubs_epi16(x, Load32(rows.W(3))));
      const __m256i h = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_hadd_epi16(m01, m23), ones), rows.offset);
      const __m256 scale = _mm256_mul_ps(rows.scale, _mm256_broadcast_ss(xd + c * blocks + b));
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), scale, acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    alignas(16) float out[kGroupRows];
    _mm_store_ps(out, _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1)));
    for (int r = 0; r < valid_rows; ++r) y[r * y_row_stride + c * y_col_stride] = out[r];
  }
}

template <int C, class Rows>
void AnyTile(Rows& rows, int64_t blocks, const int8_t* xq, const float* xd, float* y, int64_t y_row_stride,
             int64_t y_col_stride, int valid_rows) {
  if constexpr (std::is_same_v<Rows, PanelSmallRows>) {
    TileSmall<C>(rows, blocks, xq, xd, y, y_row_stride, y_col_stride, valid_rows);
  } else {
    Tile<C>(rows, blocks, xq, xd, y, y_row_stride, y_col_stride, valid_rows);
  }
}

// All columns against one group of rows: 4-column tiles, then the remainder.
template <class Rows>
void GroupTimesColumns(Rows& rows, int64_t blocks, const int8_t* xq, const float* xd, int64_t cols,
                       float* y, int64_t y_row_stride, int64_t y_col_stride, int valid_rows) {
  constexpr int C = QuantTileTraits::kCols;
  static_assert(C == 4, "the column remainders below assume 4-column tiles");
  const int64_t k = blocks * kQ8Block;
  int64_t c = 0;
  for (; c + C <= cols; c += C) {
    AnyTile<C>(rows, blocks, xq + c * k, xd + c * blocks, y + c * y_col_stride, y_row_stride,
            y_col_stride, valid_rows);
  }
  const int64_t left = cols - c;
  xq += c * k;
  xd += c * blocks;
  y += c * y_col_stride;
  if (left == 3) AnyTile<3>(rows, blocks, xq, xd, y, y_row_stride, y_col_stride, valid_rows);
  if (left == 2) AnyTile<2>(rows, blocks, xq, xd, y, y_row_stride, y_col_stride, valid_rows);
  if (left == 1) AnyTile<1>(rows, blocks, xq, xd, y, y_row_stride, y_col_stride, valid_rows);
}
#endif

}  // namespace

void QuantizeActivations(const float* x, int64_t x_stride, int64_t k, int64_t cols, int8_t* qs,
                         float* ds) {
  const int64_t blocks = k / kQ8Block;
  for (int64_t c = 0; c < cols; ++c) {
    const float* xc = x + c * x_stride;
    int8_t* q = qs + c * k;
    float* d = ds + c * blocks;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* v = xc + b * kQ8Block;
#ifdef LS_QUANT_SIMD
      __m256 vals[4];
      __m256 amax = _mm256_setzero_ps();
      const __m256 sign_bit = _mm256_set1_ps(-0.0f);
      for (int j = 0; j < 4; ++j) {
        vals[j] = _mm256_loadu_ps(v + j * 8);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, vals[j]));
      }
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      const float scale = _mm_cvtss_f32(m) / 127.0f;
      d[b] = scale;
      const __m256 inv = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
      __m256i ints[4];
      for (int j = 0; j < 4; ++j) {
        ints[j] = _mm256_cvtps_epi32(_mm256_round_ps(
            _mm256_mul_ps(vals[j], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      // 4 x 8 int32 -> 32 int8: the packs interleave 128-bit lanes, the permute undoes it.
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]),
                                               _mm256_packs_epi32(ints[2], ints[3]));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(q + b * kQ8Block),
          _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
      float amax = 0;
      for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float scale = amax / 127.0f;
      d[b] = scale;
      const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
      for (int i = 0; i < kQ8Block; ++i)
        q[b * kQ8Block + i] = static_cast<int8_t>(std::nearbyint(v[i] * inv));
#endif
    }
  }
}

void QuantizeActivations(DType weights, const float* x, int64_t x_stride, int64_t k, int64_t cols, int8_t* qs,
                         float* ds) {
  if (IsKQuant(weights)) {
    QuantizeActivationsQ8K(x, x_stride, k, cols, qs, ds);
  } else {
    QuantizeActivations(x, x_stride, k, cols, qs, ds);
  }
}

#ifdef LS_QUANT_SIMD
namespace {

// Rows r0..r0+3 of the stored matrix (rows past the end repeat row 0; their results are dropped).
template <class Stored, class Block>
Stored StoredGroup(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t rows) {
  Stored s;
  for (int r = 0; r < kGroupRows; ++r) {
    s.row[r] = reinterpret_cast<const Block*>(w + (r0 + r < rows ? r0 + r : r0) * row_bytes);
  }
  return s;
}


// Rows past the end of the matrix are packed as copies of the group's first row (their results
// are dropped), so every group is whole.
template <class Block>
void Pack(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t blocks, QuantPanel& panel) {
  constexpr bool kSmall = std::is_same_v<Block, BlockQ4_0>;  // panel.small
  for (int64_t g = 0; g * kGroupRows < rows; ++g) {
    const Block* row[kGroupRows];
    for (int r = 0; r < kGroupRows; ++r) {
      const int64_t at = g * kGroupRows + r < rows ? g * kGroupRows + r : g * kGroupRows;
      row[r] = reinterpret_cast<const Block*>(w + at * row_bytes);
    }
    int8_t* w_out = panel.w.data() + g * blocks * kGroupRows * kQ8Block;
    int8_t* abs_out = kSmall ? nullptr : panel.abs.data() + g * blocks * kGroupRows * kQ8Block;
    float* d_out = panel.d.data() + g * blocks * kGroupRows;
    for (int64_t b = 0; b < blocks; ++b) {
      __m256i sums[kGroupRows];
      for (int r = 0; r < kGroupRows; ++r) {
        const __m256i values = BlockValues(row[r][b]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w_out + (b * kGroupRows + r) * kQ8Block), values);
        if constexpr (kSmall) {
          sums[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), values), _mm256_set1_epi16(1));
        } else {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(abs_out + (b * kGroupRows + r) * kQ8Block),
                              _mm256_sign_epi8(values, values));
        }
        d_out[b * kGroupRows + r] = _cvtsh_ss(row[r][b].d);
      }
      if constexpr (kSmall) {  // 128 * sum per row and half, folded like TileSmall's products
        const __m256i folded =
            _mm256_hadd_epi32(_mm256_hadd_epi32(sums[0], sums[1]), _mm256_hadd_epi32(sums[2], sums[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel.corr.data() + (g * blocks + b) * 2 * kGroupRows),
                            _mm256_slli_epi32(folded, 7));
      }
    }
  }
}


// One stored row against C <= 2 columns (decode), reading the row front to back. Per block the
// row's lanes are folded to [lo x4 | hi x4] and accumulated exactly as one lane pair of Tile
// does, so the result is bitwise the one a Tile gives for the same row and column.
template <int C, class Block>
void RowTimesColumns(const Block* row, int64_t blocks, const int8_t* xq, const float* xd, float* y,
                     int64_t y_col_stride) {
  const int64_t k = blocks * kQ8Block;
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i w = BlockValues(row[b]);
    const __m256i w_abs = _mm256_sign_epi8(w, w);
    const float dw = _cvtsh_ss(row[b].d);
    for (int c = 0; c < C; ++c) {
      const __m256i x = Load32(xq + c * k + b * kQ8Block);
      __m256i h = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w)), ones);
      h = _mm256_hadd_epi32(h, h);
      h = _mm256_hadd_epi32(h, h);
      acc[c] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_set1_ps(dw * xd[c * blocks + b]), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    y[c * y_col_stride] =
        _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1)));
  }
}

template <class Block>
void Rows(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t blocks, const int8_t* xq,
          const float* xd, int64_t cols, float* y, int64_t y_row_stride, int64_t y_col_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const auto* row = reinterpret_cast<const Block*>(w + r * row_bytes);
    if (cols == 1) {
      RowTimesColumns<1>(row, blocks, xq, xd, y + r * y_row_stride, y_col_stride);
    } else {
      RowTimesColumns<2>(row, blocks, xq, xd, y + r * y_row_stride, y_col_stride);
    }
  }
}

// A group's 4 rows are read side by side, which the hardware prefetchers follow poorly at
// these short row lengths; the next group's rows (contiguous after these) are fetched ahead.
template <class Stored, class Block>
void Direct(const uint8_t* w, size_t row_bytes, int64_t rows, int64_t blocks, const int8_t* xq,
            const float* xd, int64_t cols, float* y, int64_t y_row_stride, int64_t y_col_stride) {
  const size_t group_bytes = kGroupRows * row_bytes;
  for (int64_t r0 = 0; r0 < rows; r0 += kGroupRows) {
    const uint8_t* next = w + (r0 + kGroupRows) * row_bytes;
    const size_t ahead = r0 + 2 * kGroupRows <= rows ? group_bytes : 0;
    for (size_t off = 0; off < ahead; off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T0);
    Stored src = StoredGroup<Stored, Block>(w, row_bytes, r0, rows);
    const int valid = static_cast<int>(std::min<int64_t>(kGroupRows, rows - r0));
    GroupTimesColumns(src, blocks, xq, xd, cols, y + r0 * y_row_stride, y_row_stride, y_col_stride,
                      valid);
  }
}

void PackWeightRows(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                    QuantPanel& panel) {
  const int64_t blocks = k / kQ8Block;
  const int64_t groups = (rows + kGroupRows - 1) / kGroupRows;
  panel.rows = rows;
  panel.k = k;
  panel.small = type == DType::kQ4_0;
  panel.w.resize(groups * k * kGroupRows);
  panel.abs.resize(panel.small ? 0 : groups * k * kGroupRows);
  panel.corr.resize(panel.small ? groups * blocks * 2 * kGroupRows : 0);
  panel.d.resize(groups * blocks * kGroupRows);
  if (type == DType::kQ8_0) {
    Pack<BlockQ8_0>(w, row_bytes, rows, blocks, panel);
  } else {
    Pack<BlockQ4_0>(w, row_bytes, rows, blocks, panel);
  }
}

void QuantGemm(const QuantPanel& panel, const int8_t* xq, const float* xd, int64_t cols, float* y,
               int64_t y_row_stride, int64_t y_col_stride) {
  const int64_t k = panel.k, blocks = k / kQ8Block;
  for (int64_t g = 0; g * kGroupRows < panel.rows; ++g) {
    const int valid = static_cast<int>(std::min<int64_t>(kGroupRows, panel.rows - g * kGroupRows));
    float* yg = y + g * kGroupRows * y_row_stride;
    if (panel.small) {
      PanelSmallRows src;
      src.w = panel.w.data() + g * k * kGroupRows;
      src.corr = panel.corr.data() + g * blocks * 2 * kGroupRows;
      src.d = panel.d.data() + g * blocks * kGroupRows;
      GroupTimesColumns(src, blocks, xq, xd, cols, yg, y_row_stride, y_col_stride, valid);
    } else {
      PanelRows src;
      src.w = panel.w.data() + g * k * kGroupRows;
      src.w_abs = panel.abs.data() + g * k * kGroupRows;
      src.d = panel.d.data() + g * blocks * kGroupRows;
      GroupTimesColumns(src, blocks, xq, xd, cols, yg, y_row_stride, y_col_stride, valid);
    }
  }
}

}  // namespace

void QuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                 const int8_t* xq, const float* xd, int64_t cols, float* y, int64_t y_row_stride,
                 int64_t y_col_stride, QuantPanel& panel) {
  if (IsKQuant(type)) {
    KQuantMatMul(type, w, row_bytes, rows, k, xq, xd, cols, y, y_row_stride, y_col_stride);
  } else if (cols > kDirectMaxCols) {
    PackWeightRows(type, w, row_bytes, rows, k, panel);
    QuantGemm(panel, xq, xd, cols, y, y_row_stride, y_col_stride);
  } else if (cols <= 2 && type == DType::kQ8_0) {
    // q8_0 rows are long enough that reading 4 side by side outruns the prefetchers; q4_0's
    // unpacking is better shared by 4 rows.
    Rows<BlockQ8_0>(w, row_bytes, rows, k / kQ8Block, xq, xd, cols, y, y_row_stride, y_col_stride);
  } else if (type == DType::kQ8_0) {
    Direct<StoredRows<BlockQ8_0>, BlockQ8_0>(w, row_bytes, rows, k / kQ8Block, xq, xd, cols, y, y_row_stride,
                                    y_col_stride);
  } else {
    Direct<StoredRows<BlockQ4_0>, BlockQ4_0>(w, row_bytes, rows, k / kQ8Block, xq, xd, cols, y, y_row_stride,
                                    y_col_stride);
  }
}

#else  // scalar: one (row, column) at a time, the same for every column count

void QuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                 const int8_t* xq, const float* xd, int64_t cols, float* y, int64_t y_row_stride,
                 int64_t y_col_stride, QuantPanel&) {
  if (IsKQuant(type)) {
    KQuantMatMul(type, w, row_bytes, rows, k, xq, xd, cols, y, y_row_stride, y_col_stride);
    return;
  }
  const int64_t blocks = k / kQ8Block;
  std::vector<float> row(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {  // q * d_w per value; d_w applied below
      DequantizeRow(type, w + r * row_bytes + b * RowBytes(type, kQ8Block),
                    row.data() + b * kQ8Block, kQ8Block);
    }
    for (int64_t c = 0; c < cols; ++c) {
      float sum = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        float dot = 0;
        for (int i = 0; i < kQ8Block; ++i)
          dot += row[b * kQ8Block + i] * xq[c * k + b * kQ8Block + i];
        sum += dot * xd[c * blocks + b];
      }
      y[r * y_row_stride + c * y_col_stride] = sum;
    }
  }
}

#endif

}  // namespace latentserve::kernels::cpu
