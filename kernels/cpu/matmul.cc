// Dense products: MatMul (weights of any dtype x f32 activations) and per-head HeadMatMul.
// q8_0 / q4_0 / K-quant weights: activations rounded to 8-bit blocks once per call, integer
// tiles over repacked row blocks (quant_dot.h; K-quants: kquant_dot.cc). Other types: weight rows dequantised once per block of
// rows and reused for every activation column, f32 tiles.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/simd.h"

namespace latentserve::kernels::cpu {

float Dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 lo = _mm256_castps256_ps128(acc), hi = _mm256_extractf128_ps(acc, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  sum = _mm_cvtss_f32(lo);
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(alpha);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] += alpha * x[i];
}

namespace {

constexpr int64_t kRowBlock = 16;     // weight rows dequantised together
constexpr int64_t kFusedMaxCols = 2;  // up to this many columns: dot on the stored rows directly

// y[n, m] = sum_k w[k, n] x[k, m] for rows [row_begin, row_end) of w.
// x column m starts at x + m * x_stride; y element (n, m) at y + m * y_stride + n.
void MatMulRows(DType wtype, const uint8_t* w, size_t w_row_bytes, int64_t k, int64_t row_begin,
                int64_t row_end, const float* x, int64_t x_stride, int64_t cols, float* y,
                int64_t y_stride, std::vector<float>& scratch) {
  if (cols <= kFusedMaxCols) {  // decode: every weight byte is read once, no f32 copy
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t m = 0; m < cols; ++m) y[m * y_stride + r] = RowDot(wtype, w + r * w_row_bytes, x + m * x_stride, k);
    }
    return;
  }
  scratch.resize(kRowBlock * k);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, row_end - r0);
    const float* wrows;
    if (wtype == DType::kF32) {
      wrows = reinterpret_cast<const float*>(w + r0 * w_row_bytes);
    } else {
      for (int64_t r = 0; r < rows; ++r) DequantizeRowFast(wtype, w + (r0 + r) * w_row_bytes, scratch.data() + r * k, k);
      wrows = scratch.data();
    }
    GemmTile(wrows, rows, k, x, x_stride, cols, y + r0, 1, y_stride);
  }
}

// The same product for q8_0 / q4_0 weights over activation columns already quantised.
// K-quant weights: `prepared` holds the columns' derived sums (PrepareKQuantColumns).
void QuantMatMulRows(DType wtype, const uint8_t* w, size_t w_row_bytes, int64_t k, int64_t row_begin,
                     int64_t row_end, const int8_t* xq, const float* xd, int64_t cols, float* y, int64_t y_stride,
                     QuantPanel& panel, const KQuantColumns* prepared) {
  if (IsKQuant(wtype)) {  // blocks its rows itself
    KQuantMatMul(wtype, w + row_begin * w_row_bytes, w_row_bytes, row_end - row_begin, k, xq, xd, cols,
                 y + row_begin, 1, y_stride, prepared);
    return;
  }
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, row_end - r0);
    QuantMatMul(wtype, w + r0 * w_row_bytes, w_row_bytes, rows, k, xq, xd, cols, y + r0, 1, y_stride, panel);
  }
}

}  // namespace

void CpuBackend::MatMul(const Tensor& w, const Tensor& x, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.rows(), m = x.rows();
  LS_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
  LS_CHECK(x.ne[0] == k && y.ne[0] == n && y.rows() == m);
  const uint8_t* wp = HostPtr(w);
  const size_t row_bytes = w.row_bytes();
  if (UsesQ8Activations(w.dtype)) {
    static thread_local Q8Activations caller_act;  // the workers below use the caller's
    Q8Activations& act = caller_act;
    act.Resize(k, m);
    pool_.ParallelFor(m, 16, [&](int64_t begin, int64_t end) {
      QuantizeActivations(w.dtype, F32(x) + begin * k, k, k, end - begin, act.col_qs(begin), act.col_d(begin));
    });
    static thread_local KQuantColumns caller_columns;  // once here, not once per part
    KQuantColumns& columns = caller_columns;            // the workers below use the caller's
    if (IsKQuant(w.dtype)) PrepareKQuantColumns(act.qs.data(), act.d.data(), k, m, columns);
    pool_.ParallelFor((n + kRowBlock - 1) / kRowBlock, 1, [&](int64_t begin, int64_t end) {
      static thread_local QuantPanel panel;
      QuantMatMulRows(w.dtype, wp, row_bytes, k, begin * kRowBlock, std::min(n, end * kRowBlock), act.qs.data(),
                      act.d.data(), m, F32(y), n, panel, &columns);
    });
    return;
  }
  pool_.ParallelFor((n + kRowBlock - 1) / kRowBlock, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    MatMulRows(w.dtype, wp, row_bytes, k, begin * kRowBlock, std::min(n, end * kRowBlock), F32(x), k, m,
               F32(y), n, scratch);
  });
}

void CpuBackend::HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.ne[1], heads = w.ne[2];
  const int64_t x_width = x.ne[0], tokens = x.ne[2];
  LS_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
  LS_CHECK(x_offset + k <= x_width && x.ne[1] == heads && y.ne[0] == n && y.ne[1] == heads &&
           y.ne[2] == tokens);
  const uint8_t* wp = HostPtr(w);
  const size_t row_bytes = w.row_bytes();
  if (UsesQ8Activations(w.dtype)) {
    pool_.ParallelFor(heads, 1, [&](int64_t begin, int64_t end) {
      static thread_local Q8Activations act;
      static thread_local QuantPanel panel;
      static thread_local KQuantColumns columns;
      for (int64_t h = begin; h < end; ++h) {
        QuantizeActivations(w.dtype, F32(x) + h * x_width + x_offset, heads * x_width, k, tokens, act);
        if (IsKQuant(w.dtype)) PrepareKQuantColumns(act.qs.data(), act.d.data(), k, tokens, columns);
        QuantMatMulRows(w.dtype, wp + h * n * row_bytes, row_bytes, k, 0, n, act.qs.data(), act.d.data(), tokens,
                        F32(y) + h * n, heads * n, panel, &columns);
      }
    });
    return;
  }
  pool_.ParallelFor(heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t h = begin; h < end; ++h) {
      MatMulRows(w.dtype, wp + h * n * row_bytes, row_bytes, k, 0, n, F32(x) + h * x_width + x_offset,
                 heads * x_width, tokens, F32(y) + h * n, heads * n, scratch);
    }
  });
}

}  // namespace latentserve::kernels::cpu
