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
#include <atomic>

#include "kernels/cpu/kquant_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// GCC 12's AVX-512 headers fill unused lanes from _mm512_undefined_*, which -Wmaybe-uninitialized
// reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

inline float HorizontalSum(__m256 v) {  // the AVX2 kernel's order
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

template <bool kSigned, int C>
LS_AVX512 void RowTimesColumns(const Decoded* row, int64_t supers, const Columns& x, int64_t c0, float* y,
                               int64_t y_col_stride) {
  __m256 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
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
    const int64_t b = s * kBlocksPerSuper;
    alignas(32) float dx[8] = {};
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      dx[c] = x.d[(c0 + c) * x.blocks + b];
      const __m256i lanes = _mm256_add_epi32(_mm512_castsi512_si256(sums[c]), _mm512_extracti64x4_epi64(sums[c], 1));
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(block.d * dx[c]), acc[c]);
    }
    if (!kSigned) {
      const __m128i mins = _mm_load_si128(reinterpret_cast<const __m128i*>(block.mins));
      __m128i m[8];
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        m[c] = c < C ? _mm_madd_epi16(mins, _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                 x.sums + (c0 + c) * x.blocks + b)))
                     : _mm_setzero_si128();
      }
      const __m128i low = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
      const __m128i high = _mm_hadd_epi32(_mm_hadd_epi32(m[4], m[5]), _mm_hadd_epi32(m[6], m[7]));
      min_acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(block.dmin), _mm256_load_ps(dx)),
                                _mm256_cvtepi32_ps(_mm256_set_m128i(high, low)), min_acc);
    }
  }
  alignas(32) float mins[8];
  _mm256_store_ps(mins, min_acc);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) y[c * y_col_stride] = HorizontalSum(acc[c]) - mins[c];
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
