// Products of q4_0 / q8_0 weights with a few activation columns (9..64: a batched decode step)
// on the f16 tensor cores (cuda_matmul_mma.cu). Each weight byte is read from DRAM once and
// dequantised in registers; the path it replaces dequantised the weights to f16 in memory for
// cuBLAS, moving ~8x their bytes.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "common/dtype.h"

namespace latentserve::kernels::cuda {

constexpr int64_t kQuantMmaMinColumns = 9;
constexpr int64_t kQuantMmaMaxColumns = 64;

// 8-column tiles of m activation columns (the MMA's n8).
constexpr int64_t QuantMmaTiles(int64_t m) { return (m + 7) / 8; }

// Bytes of x [m][k] as the products' activation fragments: f16, m rounded up to whole 8-column
// tiles. For block kb (32 values) and tile i, lane l's 16 bytes at ((kb * tiles + i) * 32 + l) * 16
// hold column 8 i + l / 4's values 4u, 4u + 2, 4u + 1, 4u + 3, then the same plus 16 (u = l % 4):
// the B fragments of the block's two mma.m16n8k16 (cuda_matmul_mma.cu puts the weights' values
// in the same places). Columns past m are zero.
size_t QuantMmaFragmentBytes(int64_t k, int64_t m);

// x (f32 [m][k], k a multiple of 32, 16-byte aligned) rounded to f16 into `out`
// (QuantMmaFragmentBytes). Several products of one x can share it (Backend::RoundActivations).
// Launched dependent.
void LaunchHalfFragments(cudaStream_t stream, const float* x, int64_t k, int64_t m, void* out);

struct QuantMmaPlan {
  int x_tiles = 0;       // 8-column tiles of the activations
  int row_tiles = 0;     // CTAs along the weight rows (128 rows each, every part's)
  int k_slices = 1;      // reduction splits: CTAs of one row tile along the reduction
  int slice_runs = 0;    // runs of 8 blocks of 32 values per split
  size_t partial_bytes = 0;  // f32 partial sums of the splits (0 when not split)
};

// Whether this path takes the product: q4_0 or q8_0 rows, k a multiple of 256 (16-byte aligned
// 8-block runs), 16-byte aligned weights, kQuantMmaMinColumns <= m <= kQuantMmaMaxColumns.
bool QuantMmaApplies(DType type, const void* w, size_t row_bytes, int64_t k, int64_t m);

// One product of several that share x (a layer's projections of one input): y [m][n] f32 =
// x [m][k] . w [n][k]^T.
struct QuantMmaPart {
  const uint8_t* w = nullptr;
  int64_t n = 0;
  float* y = nullptr;
};
constexpr int kMaxQuantMmaParts = 4;

QuantMmaPlan PlanQuantMma(int64_t k, absl::Span<const QuantMmaPart> parts, int64_t m, int sms);

// Every part's product (weights of one type and row size) from x's fragments, in one launch.
// Split reductions: `partials` holds plan.partial_bytes and `tickets` plan.row_tiles counters at
// 0 (left at 0); the last CTA of a row tile to finish sums the splits in their order, so a
// product is the same on every run. Launched dependent (dependent_launch.cuh).
void LaunchQuantMma(cudaStream_t stream, const QuantMmaPlan& plan, DType type, absl::Span<const QuantMmaPart> parts,
                    size_t row_bytes, int64_t k, const void* fragments, int64_t m, float* partials, int* tickets);

// Grouped products (the routed experts of a batched decode step): expert e multiplies its own
// rows (the sorted rows first_row[e] .. + counts[e], at most x_tiles * 8) by its own weights.
struct QuantMmaGroups {
  const int32_t* counts = nullptr;     // [experts] device: rows of each expert
  const int32_t* first_row = nullptr;  // [experts] device: each expert's first sorted row
  const int32_t* row_slot = nullptr;   // [sorted rows] device: slot (token * top_k + j) of each
  int top_k = 1;
  int experts = 0;
  int x_tiles = 0;  // 8-row tiles each expert has room for: ceil(tokens / 8), at most 8
};

// Bytes of every expert's fragments (QuantMmaFragmentBytes(k, x_tiles * 8) each).
size_t GroupedFragmentBytes(int64_t k, const QuantMmaGroups& groups);

// Each expert's rows as fragments into `out` (GroupedFragmentBytes): with `up` null, x
// [tokens][k]'s row of the token of each sorted row; else silu(x) * up, both
// [experts][x_tiles * 8][k] (the padded outputs of the gate and up products).
void LaunchGroupedFragments(cudaStream_t stream, const float* x, const float* up, int64_t k,
                            const QuantMmaGroups& groups, void* out);

// Every expert's rows times its weights (w: [experts][n][k] stored rows). to_slots: y [slots][n],
// each sorted row written to its slot's row; else y [experts][x_tiles * 8][n].
void LaunchGroupedQuantMma(cudaStream_t stream, const QuantMmaGroups& groups, DType type, const uint8_t* w,
                           size_t row_bytes, int64_t k, int64_t n, const void* fragments, bool to_slots, float* y);

// LATENTSERVE_CUDA_QUANT_MMA=0 turns this path off (the before/after of one binary).
bool QuantMmaEnabled();

}  // namespace latentserve::kernels::cuda
