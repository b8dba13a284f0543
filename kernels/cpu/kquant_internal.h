// Internal to the K-quant CPU kernels (kquant_dot.cc, kquant_dot_avx512.cc): a super-block
// unpacked for the integer dot, the activation columns of one call, and the AVX-512 entry.
#pragma once

#include <cstdint>

#include "kernels/cpu/quant_dot.h"

namespace latentserve::kernels::cpu::kquant {

constexpr int64_t kBlocksPerSuper = kSuperBlock / kQ8Block;  // 32-blocks per super-block

// One super-block of one stored row, unpacked once and then met by every activation column.
// values: element order, q4_K / q5_K q (0..31), q6_K |q - 32|; signs (q6_K only): q - 32, the
// sign source of _mm256_sign_epi8. scales: q4_K / q5_K one per 32 values (0..7), q6_K one per
// 16 (0..15); mins: q4_K / q5_K one per 32 values.
struct alignas(32) Decoded {
  int8_t values[kSuperBlock];
  int8_t signs[kSuperBlock];
  int16_t scales[16];
  int16_t mins[8];
  float d, dmin;
};

// Activation columns of one call: values [cols][k], scales [cols][k / 32] (one per super-block,
// repeated), sums [cols][k / 32] (int16 sum of each 32-block, the min terms of q4_K / q5_K).
// d_super [supers][cols] and sums_super [supers][cols][8]: the same scales and block sums
// grouped by super-block, column-contiguous (the AVX-512 kernel loads 8 columns' at once).
struct Columns {
  const int8_t* q;
  const float* d;
  const int16_t* sums;
  int64_t k, blocks;
  const float* d_super;
  const int16_t* sums_super;
  int64_t cols;
};

// Whether this CPU runs the AVX-512 (F, BW, VL, VNNI) kernels and they are allowed (see
// AllowKQuantAvx512 in quant_dot.h).
bool UseAvx512();

// Columns to group per row in the AVX-512 kernels (two AVX2 groups of 4: the 32 zmm registers
// hold 8 columns' integer sums and float accumulators).
constexpr int kAvx512ColumnGroup = 8;

// y[c * y_col_stride] for `group` (1..8) columns starting at c0 against one decoded row, with
// AVX-512 integer steps: bitwise the result of the AVX2 kernel in kquant_dot.cc (the same
// integer sum per AVX2 lane and super-block, then the same float operations in the same order).
void RowTimesGroupAvx512(bool is_signed, const Decoded* row, int64_t supers, const Columns& x, int64_t c0,
                         int64_t group, float* y, int64_t y_col_stride);

}  // namespace latentserve::kernels::cpu::kquant
