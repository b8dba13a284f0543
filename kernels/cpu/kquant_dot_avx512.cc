// The K-quant row x column kernel with AVX-512 integer steps, chosen at run time (the build
// stays x86-64-v3; only the functions marked LS_AVX512 use AVX-512, so no inline function that
// another file shares is compiled for it).
//
// Per 64 weight bytes and column: one vpmaddubsw (u8 x s8 pairs, as the AVX2 kernel) and one
// vpdpwssd (the int16 pairs times their sub-block scales, added to int32 lanes): two
// instructions where the AVX2 kernel takes six. The 16 int32 lanes hold two 32-blocks; adding
// the upper 8 to the lower 8 gives exactly the AVX2 kernel's 8 lanes (lane i: bytes 4i..4i+3 of
// every 32-block, times its scale), and every float operation after that is the AVX2 kernel's.
// q6_K's signs (no vpsignb in AVX-512) negate the activation bytes under a mask of q - 32 < 0.
#include <algorithm>
#include <atomic>

#include "kernels/cpu/kquant_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// GCC 12's AVX-512 headers fill unused lanes from _mm512_undefined_*, which -W(maybe-)uninitialized
// reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#define LS_KQUANT_AVX512 1
#define LS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

namespace latentserve::kernels::cpu {
namespace {

std::atomic<bool> avx512_allowed{true};

}  // namespace

void AllowKQuantAvx512(bool allowed) { avx512_allowed.store(allowed, std::memory_order_relaxed); }

namespace kquant {

bool UseAvx512() {
#ifdef LS_KQUANT_AVX512
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return supported && avx512_allowed.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

#ifdef LS_KQUANT_AVX512
namespace {

// Which Decoded::scales entry each int16 pair lane of 64 bytes p takes: q4_K / q5_K one scale
// per 32 bytes (2p, 2p + 1), q6_K one per 16 (4p .. 4p + 3).
struct ScalePicks {
  alignas(64) int16_t lanes[2][4][32];
  constexpr ScalePicks() : lanes() {
    for (int p = 0; p < 4; ++p) {
      for (int l = 0; l < 32; ++l) {
        lanes[0][p][l] = static_cast<int16_t>(2 * p + l / 16);
        lanes[1][p][l] = static_cast<int16_t>(4 * p + l / 8);
      }
    }
  }
};
constexpr ScalePicks kScalePicks;

// Which of 8 per-column floats each lane of pair register q takes: 2q for lanes 0..7, 2q + 1 for
// lanes 8..15.
struct PairPicks {
  alignas(64) int32_t lanes[4][16];
  constexpr PairPicks() : lanes() {
    for (int q = 0; q < 4; ++q) {
      for (int l = 0; l < 16; ++l) lanes[q][l] = 2 * q + l / 8;
    }
  }
};
constexpr PairPicks kPairPicks;

// The float steps take two columns per zmm register (lanes 0..7: column 2q's AVX2 lanes, 8..15:
// column 2q + 1's); every lane sees the AVX2 kernel's operations on its own values.
template <bool kSigned, int C>
LS_AVX512 void RowTimesColumns(const Decoded* row, int64_t supers, const Columns& x, int64_t c0, float* y,
                               int64_t y_col_stride) {
  constexpr int kPairs = (C + 1) / 2;
  const __mmask8 live = static_cast<__mmask8>((1u << C) - 1);
  __m512 acc[kPairs];
#pragma GCC unroll 4
  for (int q = 0; q < kPairs; ++q) acc[q] = _mm512_setzero_ps();
  __m256 min_acc = _mm256_setzero_ps();  // lane c: column c's min terms (q4_K / q5_K)
  for (int64_t s = 0; s < supers; ++s) {
    const Decoded& block = row[s];
    const __m512i scales = _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(block.scales)));
    __m512i sums[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) sums[c] = _mm512_setzero_si512();
    const int8_t* xs = x.q + c0 * x.k + s * kSuperBlock;
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      const __m512i w = _mm512_loadu_si512(block.values + 64 * p);
      const __m512i scale = _mm512_permutexvar_epi16(_mm512_load_si512(kScalePicks.lanes[kSigned][p]), scales);
      __mmask64 negative = 0;
      if (kSigned) negative = _mm512_movepi8_mask(_mm512_loadu_si512(block.signs + 64 * p));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        __m512i xv = _mm512_loadu_si512(xs + c * x.k + 64 * p);
        if (kSigned) xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
        sums[c] = _mm512_dpwssd_epi32(sums[c], _mm512_maddubs_epi16(w, xv), scale);
      }
    }
    const __m256 dx = _mm256_maskz_loadu_ps(live, x.d_super + s * x.cols + c0);
    const __m512 d_dx = _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_set1_ps(block.d), dx));
#pragma GCC unroll 4
    for (int q = 0; q < kPairs; ++q) {
      const __m512i even = sums[2 * q], odd = 2 * q + 1 < C ? sums[2 * q + 1] : _mm512_setzero_si512();
      // [even's lanes 0..7 + 8..15 | odd's lanes 0..7 + 8..15]: the AVX2 kernel's 8 lanes each.
      const __m512i lanes = _mm512_add_epi32(_mm512_shuffle_i64x2(even, odd, 0x44), _mm512_shuffle_i64x2(even, odd, 0xee));
      const __m512 scale = _mm512_permutexvar_ps(_mm512_load_si512(kPairPicks.lanes[q]), d_dx);
      acc[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), scale, acc[q]);
    }
    if (!kSigned) {
      // sum_j m_j * (block sum j) per column: 4 columns' 8 int16 sums per register, their
      // 4 int32 pair sums per 128-bit lane folded, then lane 0 of each 128-bit lane gathered.
      const __m512i mins = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(block.mins)));
      const int16_t* block_sums = x.sums_super + (s * x.cols + c0) * kBlocksPerSuper;
      __m512i half[2];
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const int columns = std::min(4, std::max(0, C - 4 * h));
        const auto lanes = static_cast<__mmask32>(columns == 4 ? 0xffffffffu : (1u << (8 * columns)) - 1);
        __m512i m = _mm512_madd_epi16(mins, _mm512_maskz_loadu_epi16(lanes, block_sums + 32 * h));
        m = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, _MM_PERM_BADC));
        half[h] = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, _MM_PERM_CDAB));
      }
      const __m512i gather = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
      const __m256i msum = _mm512_castsi512_si256(_mm512_permutex2var_epi32(half[0], gather, half[1]));
      min_acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(block.dmin), dx), _mm256_cvtepi32_ps(msum), min_acc);
    }
  }
  // Each column's 8 lanes summed in the AVX2 kernel's order (HorizontalSum: lanes i + (i + 4),
  // then adjacent pairs, then the two pair sums), both columns of a register at once.
  alignas(64) float totals[kPairs][16];
#pragma GCC unroll 4
  for (int q = 0; q < kPairs; ++q) {
    __m512 v = _mm512_add_ps(acc[q], _mm512_shuffle_f32x4(acc[q], acc[q], 0xb1));
    v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0xb1));
    v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0x4e));
    _mm512_store_ps(totals[q], v);
  }
  alignas(32) float mins[8];
  _mm256_store_ps(mins, min_acc);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) y[c * y_col_stride] = totals[c / 2][(c % 2) * 8] - mins[c];
}

template <bool kSigned>
LS_AVX512 void RowTimesGroup(const Decoded* row, int64_t supers, const Columns& x, int64_t c0, int64_t group,
                             float* y, int64_t y_col_stride) {
  switch (group) {
    case 8: RowTimesColumns<kSigned, 8>(row, supers, x, c0, y, y_col_stride); break;
    case 7: RowTimesColumns<kSigned, 7>(row, supers, x, c0, y, y_col_stride); break;
    case 6: RowTimesColumns<kSigned, 6>(row, supers, x, c0, y, y_col_stride); break;
    case 5: RowTimesColumns<kSigned, 5>(row, supers, x, c0, y, y_col_stride); break;
    case 4: RowTimesColumns<kSigned, 4>(row, supers, x, c0, y, y_col_stride); break;
    case 3: RowTimesColumns<kSigned, 3>(row, supers, x, c0, y, y_col_stride); break;
    case 2: RowTimesColumns<kSigned, 2>(row, supers, x, c0, y, y_col_stride); break;
    default: RowTimesColumns<kSigned, 1>(row, supers, x, c0, y, y_col_stride); break;
  }
}

}  // namespace

void RowTimesGroupAvx512(bool is_signed, const Decoded* row, int64_t supers, const Columns& x, int64_t c0,
                         int64_t group, float* y, int64_t y_col_stride) {
  if (is_signed) {
    RowTimesGroup<true>(row, supers, x, c0, group, y, y_col_stride);
  } else {
    RowTimesGroup<false>(row, supers, x, c0, group, y, y_col_stride);
  }
}
#endif

}  // namespace kquant
}  // namespace latentserve::kernels::cpu
