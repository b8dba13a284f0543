// Vectorised row kernels shared by the CPU ops (AVX2 + FMA + F16C, the x86-64-v3 baseline
// the build targets; scalar fallbacks elsewhere).
#pragma once

#include <cstdint>

#include "common/dtype.h"

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace latentserve::kernels::cpu {

#if defined(__AVX2__) && defined(__FMA__)
// e^x for 8 floats: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' degree-7 polynomial
// (within 2 ulp of expf), times 2^n built in the exponent bits. Below -87.3 the result is 0
// (expf would give a denormal), above 88 it saturates to e^88.
inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n)));
}
#endif

// While alive, this thread's float operations flush denormal results and inputs to zero
// (MXCSR FTZ + DAZ; restored on exit). KDA multiplies keys decayed by up to e^{-60} with small
// state entries: the denormal products each cost a microcode assist, which made the chunked
// prefill's f32 tiles ~3x slower on the bench model (Sapphire Rapids). Values below 1.2e-38
// are far under every tolerance that compares these results.
class ScopedFlushDenormals {
 public:
#if defined(__SSE__)
  ScopedFlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~ScopedFlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// y[i] = e^{x[i]} for i < n (Exp8 where available, expf for the tail and elsewhere).
void ExpRow(const float* x, float* y, int64_t n);
// y[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^{-gate[i]}) * up[i] (y may alias either).
void SiluMulRow(const float* gate, const float* up, float* y, int64_t n);

// dot(row of `type`, x) over k values, without materialising the row in f32.
float RowDot(DType type, const uint8_t* row, const float* x, int64_t k);
// row of `type` -> f32 (k values).
void DequantizeRowFast(DType type, const uint8_t* row, float* out, int64_t k);
// y[r * y_row_stride + c * y_col_stride] = dot(w + r * k, x + c * x_stride) for r < rows,
// c < cols: a register-blocked f32 GEMM tile (3 rows x 4 columns at a time).
void GemmTile(const float* w, int64_t rows, int64_t k, const float* x, int64_t x_stride, int64_t cols, float* y,
              int64_t y_row_stride, int64_t y_col_stride);

}  // namespace latentserve::kernels::cpu
