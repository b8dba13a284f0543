// Vectorised row kernels shared by the CPU ops (AVX2 + FMA + F16C, the x86-64-v3 baseline
// the build targets; scalar fallbacks elsewhere).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace latentserve::kernels::cpu {

// dot(row of `type`, x) over k values, without materialising the row in f32.
float RowDot(DType type, const uint8_t* row, const float* x, int64_t k);
// row of `type` -> f32 (k values).
void DequantizeRowFast(DType type, const uint8_t* row, float* out, int64_t k);
// y[r * y_row_stride + c * y_col_stride] = dot(w + r * k, x + c * x_stride) for r < rows,
// c < cols: a register-blocked f32 GEMM tile (3 rows x 4 columns at a time).
void GemmTile(const float* w, int64_t rows, int64_t k, const float* x, int64_t x_stride, int64_t cols, float* y,
              int64_t y_row_stride, int64_t y_col_stride);

}  // namespace latentserve::kernels::cpu
