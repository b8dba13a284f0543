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

// ln x for 8 floats x > 0 (Cephes' logf polynomial on the mantissa in [sqrt(1/2), sqrt(2)),
// within 2 ulp of logf for normal x; denormals and 0 are treated as the smallest normal).
inline __m256 Log8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x00800000)));
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  // m in [0.5, 1): below sqrt(1/2) take 2m - 1 and e - 1, else m - 1.
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
  m = _mm256_add_ps(_mm256_sub_ps(m, _mm256_set1_ps(1.0f)), _mm256_and_ps(small, m));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 p = _mm256_set1_ps(7.0376836292e-2f);
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.1514610310e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.1676998740e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.2420140846e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.4249322787e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.6668057665e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(2.0000714765e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-2.4999993993e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(3.3333331174e-1f));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, m), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(m, y));
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
// y[i] = scale * softplus(x[i] + bias[i]) = scale * ln(1 + e^{x[i] + bias[i]}) (the argument
// itself above 20), within a few ulp of log1pf(expf(.)).
void SoftplusRow(const float* x, const float* bias, float scale, float* y, int64_t n);
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
// c[i * ldc + j] = sum_p a[i * lda + p] * b[p * ldb + j] for i < m, j < n: row-major A (m x k)
// times row-major B (k x n), each element one FMA chain over p in order (gemm_nn.cc), so the
// result is bitwise the same on every instruction set and blocking.
void GemmNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
            int64_t k);

}  // namespace latentserve::kernels::cpu
