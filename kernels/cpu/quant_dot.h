// Integer matmuls for q8_0 / q4_0 weights, as ggml computes them on the CPU: the f32
// activations are rounded once per matmul to 8-bit blocks of 32 (a per-block f32 scale
// d = max|x| / 127, q = round(x / d)), and each weight block meets each activation block in an
// exact integer dot (AVX2 maddubs + madd) scaled by d_w * d_x.
//
// Decode (1-2 tokens, q8_0) reads each stored row front to back, up to 8 tokens read 4 stored
// rows side by side, more tokens first repack the rows into a panel; all three add the same
// per-block terms in the same order, so a token's result is bitwise the same however many
// tokens share the matmul (prefill then decode equals a longer prefill).
//
// This is not the f32 product: against the CUDA backend (f32 / f16 activations) expect the
// rounding of the activations, NMSE ~1e-5.
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"

namespace latentserve::kernels::cpu {

constexpr int64_t kQ8Block = 32;  // values per activation / weight block

// Weight types whose matmuls run on quantised activations (all others keep f32 activations).
inline bool UsesQ8Activations(DType weights) {
  return weights == DType::kQ8_0 || weights == DType::kQ4_0 || IsKQuant(weights);
}

// Activation columns rounded to 8-bit blocks. Layout: qs [cols][k] (column c's values at
// qs + c * k), d [cols][k / 32].
struct Q8Activations {
  int64_t k = 0, cols = 0;
  std::vector<int8_t> qs;
  std::vector<float> d;
  void Resize(int64_t k_, int64_t cols_) {
    k = k_;
    cols = cols_;
    qs.resize(cols * k);
    d.resize(cols * (k / kQ8Block));
  }
  int8_t* col_qs(int64_t c) { return qs.data() + c * k; }
  float* col_d(int64_t c) { return d.data() + c * (k / kQ8Block); }
  const int8_t* col_qs(int64_t c) const { return qs.data() + c * k; }
  const float* col_d(int64_t c) const { return d.data() + c * (k / kQ8Block); }
};

// Rounds `cols` columns of k values (column c at x + c * x_stride; k % 32 == 0) into qs
// [cols][k] and d [cols][k / 32].
void QuantizeActivations(const float* x, int64_t x_stride, int64_t k, int64_t cols, int8_t* qs,
                         float* d);
// The same for a matmul with `weights`: K-quant weights take ggml's q8_K rounding instead
// (one scale per 256 values, d = -max / 127 with max the value of largest magnitude,
// q = min(127, round(x * -127 / max)); d is written to all 8 of the super-block's 32-blocks),
// which is what llama.cpp multiplies them with. k % 256 == 0 for K-quants.
void QuantizeActivations(DType weights, const float* x, int64_t x_stride, int64_t k, int64_t cols,
                         int8_t* qs, float* d);
// The q8_K rounding alone (kquant_dot.cc).
void QuantizeActivationsQ8K(const float* x, int64_t x_stride, int64_t k, int64_t cols, int8_t* qs, float* d);
inline void QuantizeActivations(DType weights, const float* x, int64_t x_stride, int64_t k, int64_t cols,
                                Q8Activations& out) {
  out.Resize(k, cols);
  QuantizeActivations(weights, x, x_stride, k, cols, out.qs.data(), out.d.data());
}

// Weight rows repacked for the many-column tiles, in groups of 4 rows. Per group and block:
// the 4 rows' 32 signed values (q4_0 nibbles become q - 8), their magnitudes, and the 4 rows'
// f32 scales. Layout: w, abs [groups][k / 32][4][32]; d [groups][k / 32][4]. Reused across
// calls as scratch.
// q4_0 panels (small = true) keep no magnitudes but corr [groups][k / 32][2][4]: 128 * the sum
// of each row's values over elements 0..15 and 16..31 of the block.
struct QuantPanel {
  int64_t rows = 0, k = 0;
  bool small = false;
  std::vector<int8_t> w, abs;
  std::vector<int32_t> corr;
  std::vector<float> d;
};

// Up to this many columns the tiles read the stored rows in place; beyond, the rows are
// repacked into a QuantPanel first (the unpacking is then paid once, not per column tile).
constexpr int64_t kDirectMaxCols = 8;

// y[r * y_row_stride + c * y_col_stride] = dot(stored row r, column c) for r < rows, c < cols:
// rows of a q8_0 / q4_0 / K-quant matrix (row r at w + r * row_bytes, k values) against quantised columns
// xq [cols][k], xd [cols][k / 32] (Q8Activations' layout). `panel` is scratch.
void QuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k,
                 const int8_t* xq, const float* xd, int64_t cols, float* y, int64_t y_row_stride,
                 int64_t y_col_stride, QuantPanel& panel);

// The K-quant case of QuantMatMul (kquant_dot.cc): the columns must come from
// QuantizeActivations(K-quant type, ...) (one scale per 256 values). Per super-block and
// column, each 32 (q4_K / q5_K) or 16 (q6_K) weight values meet the activations in an exact
// integer dot weighted by their integer sub-block scale; the super-block's sum is scaled once by
// d_w * d_x, and q4_K / q5_K subtract dmin * d_x * sum over sub-blocks of m * (sum of the
// activations). A (row, column) result does not depend on how many columns share the call.
// What the K-quant kernels derive from one set of q8_K columns, computed once and shared by
// every matmul part (and thread) that meets them. Layouts: sums [cols][k / 32] (each 32-block's
// sum: the q4_K / q5_K min terms); the same sums and the scales regrouped by super-block,
// column-contiguous: sums_super [k / 256][cols][8], d_super [k / 256][cols].
struct KQuantColumns {
  int64_t k = 0, cols = 0;
  std::vector<int16_t> sums, sums_super;
  std::vector<float> d_super;
};
void PrepareKQuantColumns(const int8_t* xq, const float* xd, int64_t k, int64_t cols, KQuantColumns& out);

// `prepared`: PrepareKQuantColumns of these columns, or null to derive them here.
void KQuantMatMul(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t k, const int8_t* xq,
                  const float* xd, int64_t cols, float* y, int64_t y_row_stride, int64_t y_col_stride,
                  const KQuantColumns* prepared = nullptr);

// Where the CPU has AVX-512 (F, BW, VL, VNNI), KQuantMatMul takes AVX-512 integer steps with
// bitwise the same results as its AVX2 ones; false forces the AVX2 kernels (tests compare the
// two). Process-wide; default true.
void AllowKQuantAvx512(bool allowed);

}  // namespace latentserve::kernels::cpu
