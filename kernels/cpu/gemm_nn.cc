// GemmNN (simd.h): an f32 product of row-major matrices as register-blocked outer products. A
// block of kRows rows of C and two vectors of columns stays in registers while k streams by:
// each step loads two vectors of a row of B, broadcasts one element of A per row and adds
// 2 * kRows FMAs, so there is no horizontal sum (which dominates dot-product tiles at the short
// k of KDA's chunks). Each element of C is one FMA chain over p = 0..k-1 in order, whatever the
// blocking and instruction set. AVX-512 where the CPU has it (chosen at run time; the build
// stays x86-64-v3), else AVX2, else scalar.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/simd.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LS_GEMM_SIMD 1
#define LS_AVX512 __attribute__((target("avx512f,avx512vl")))
#endif

namespace latentserve::kernels::cpu {
namespace {

constexpr int kRows = 6;  // rows of C per register block

struct Operands {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t k;
};

#ifdef LS_GEMM_SIMD
// AVX-512: 32 columns per block (the last block masked).
template <int R>
LS_AVX512 void BlockAvx512(const Operands& o, int64_t i0, int64_t j0, __mmask16 first, __mmask16 second) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const float* a = o.a + i0 * o.lda;
  const float* b = o.b + j0;
  for (int64_t p = 0; p < o.k; ++p) {
    const __m512 b0 = _mm512_maskz_loadu_ps(first, b + p * o.ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(second, b + p * o.ldb + 16);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * o.lda + p]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(o.c + (i0 + r) * o.ldc + j0, first, acc[r][0]);
    _mm512_mask_storeu_ps(o.c + (i0 + r) * o.ldc + j0 + 16, second, acc[r][1]);
  }
}

LS_AVX512 void GemmAvx512(const Operands& o, int64_t m, int64_t n) {
  for (int64_t j0 = 0; j0 < n; j0 += 32) {
    const int64_t width = std::min<int64_t>(32, n - j0);
    const auto first = static_cast<__mmask16>(width >= 16 ? 0xffff : (1u << width) - 1);
    const auto second = static_cast<__mmask16>(width <= 16 ? 0 : width == 32 ? 0xffff : (1u << (width - 16)) - 1);
    int64_t i0 = 0;
    for (; i0 + kRows <= m; i0 += kRows) BlockAvx512<kRows>(o, i0, j0, first, second);
    switch (m - i0) {
      case 5: BlockAvx512<5>(o, i0, j0, first, second); break;
      case 4: BlockAvx512<4>(o, i0, j0, first, second); break;
      case 3: BlockAvx512<3>(o, i0, j0, first, second); break;
      case 2: BlockAvx512<2>(o, i0, j0, first, second); break;
      case 1: BlockAvx512<1>(o, i0, j0, first, second); break;
      default: break;
    }
  }
}

// AVX2: 16 columns per block (the last block through lane masks).
template <int R>
void BlockAvx2(const Operands& o, int64_t i0, int64_t j0, __m256i first, __m256i second) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* a = o.a + i0 * o.lda;
  const float* b = o.b + j0;
  for (int64_t p = 0; p < o.k; ++p) {
    const __m256 b0 = _mm256_maskload_ps(b + p * o.ldb, first);
    const __m256 b1 = _mm256_maskload_ps(b + p * o.ldb + 8, second);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * o.lda + p);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_maskstore_ps(o.c + (i0 + r) * o.ldc + j0, first, acc[r][0]);
    _mm256_maskstore_ps(o.c + (i0 + r) * o.ldc + j0 + 8, second, acc[r][1]);
  }
}

// All-ones in the first `lanes` of 8 int32 lanes (clamped to 0..8).
inline __m256i LaneMask(int64_t lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(lanes, 0, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void GemmAvx2(const Operands& o, int64_t m, int64_t n) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, n - j0);
    const __m256i first = LaneMask(width), second = LaneMask(width - 8);
    int64_t i0 = 0;
    for (; i0 + kRows <= m; i0 += kRows) BlockAvx2<kRows>(o, i0, j0, first, second);
    switch (m - i0) {
      case 5: BlockAvx2<5>(o, i0, j0, first, second); break;
      case 4: BlockAvx2<4>(o, i0, j0, first, second); break;
      case 3: BlockAvx2<3>(o, i0, j0, first, second); break;
      case 2: BlockAvx2<2>(o, i0, j0, first, second); break;
      case 1: BlockAvx2<1>(o, i0, j0, first, second); break;
      default: break;
    }
  }
}

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return has;
}
#endif

}  // namespace

void GemmNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
            int64_t k) {
  const Operands o{a, lda, b, ldb, c, ldc, k};
#ifdef LS_GEMM_SIMD
  if (HasAvx512()) {
    GemmAvx512(o, m, n);
  } else {
    GemmAvx2(o, m, n);
  }
#else
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0;
      for (int64_t p = 0; p < k; ++p) sum = std::fma(a[i * lda + p], b[p * ldb + j], sum);
      c[i * ldc + j] = sum;
    }
  }
#endif
}

}  // namespace latentserve::kernels::cpu
