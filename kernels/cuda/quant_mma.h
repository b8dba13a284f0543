// Products of q4_0 / q8_0 weights with a few activation columns (9..64: a batched decode step)
// on the int8 tensor cores (cuda_matmul_mma.cu). Each weight byte is read from DRAM once; the
// path it replaces dequantised the weights to f16 for cuBLAS, moving ~8x their bytes.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "absl/types/span.h"
#include "common/dtype.h"

namespace latentserve::kernels::cuda {

constexpr int64_t kQuantMmaMinColumns = 9;
constexpr int64_t kQuantMmaMaxColumns = 64;

// Bytes of x [m][k] rounded for the product (RoundFragments' layout): 8-bit values in the
// MMA's fragment order for m rounded up to 16 columns, then an f32 scale per block and column.
size_t QuantMmaRoundedBytes(int64_t k, int64_t m);

// The scales of a rounded copy (that layout): after its k * m_tiles * 16 values.
template <typename Byte>
__host__ __device__ inline auto ScalesOf(Byte* fragments, int64_t k, int m_tiles) {
  using Float = std::conditional_t<std::is_const_v<Byte>, const float, float>;
  return reinterpret_cast<Float*>(fragments + k * m_tiles * 16);
}

// x (f32 [m][k], k a multiple of 32) rounded into `out` (QuantMmaRoundedBytes): 8-bit blocks of
// 32 by q8_0's rule (as RoundActivations and the CPU backend round). Several products of one x
// can share it (Backend::RoundActivations). Launched dependent.
void LaunchRoundFragments(cudaStream_t stream, const float* x, int64_t k, int64_t m, void* out);

struct QuantMmaPlan {
  int m_tiles = 0;       // 16-column tiles of the activations
  int row_tiles = 0;     // CTAs along the weight rows (64 rows each, every part's)
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

// Every part's product (weights of one type and row size) from x's rounded copy `fragments`, in
// one launch. Split reductions: `partials` holds plan.partial_bytes and `tickets`
// plan.row_tiles counters at 0 (left at 0); the last CTA of a row tile to finish sums the splits
// in their order, so a product is the same on every run. Launched dependent
// (dependent_launch.cuh).
void LaunchQuantMma(cudaStream_t stream, const QuantMmaPlan& plan, DType type, absl::Span<const QuantMmaPart> parts,
                    size_t row_bytes, int64_t k, const void* fragments, int64_t m, float* partials, int* tickets);

// Grouped products (the routed experts of a batched decode step): expert e multiplies its own
// rows (the sorted rows first_row[e] .. + counts[e], at most m_tiles * 16) by its own weights.
struct QuantMmaGroups {
  const int32_t* counts = nullptr;     // [experts] device: rows of each expert
  const int32_t* first_row = nullptr;  // [experts] device: each expert's first sorted row
  const int32_t* row_slot = nullptr;   // [sorted rows] device: slot (token * top_k + j) of each
  int top_k = 1;
  int experts = 0;
  int m_tiles = 0;  // 16-row tiles each expert has room for: ceil(tokens / 16), at most 4
};

// Bytes of every expert's rounded rows (QuantMmaRoundedBytes(k, m_tiles * 16) each).
size_t GroupedRoundedBytes(int64_t k, const QuantMmaGroups& groups);

// Each expert's rows rounded into `out` (GroupedRoundedBytes): with `up` null, x [tokens][k]'s
// row of the token of each sorted row; else silu(x) * up, both [experts][m_tiles * 16][k] (the
// padded outputs of the gate and up products).
void LaunchRoundGrouped(cudaStream_t stream, const float* x, const float* up, int64_t k, const QuantMmaGroups& groups,
                        void* out);

// Every expert's rows times its weights (w: [experts][n][k] stored rows). to_slots: y [slots][n],
// each sorted row written to its slot's row; else y [experts][m_tiles * 16][n].
void LaunchGroupedQuantMma(cudaStream_t stream, const QuantMmaGroups& groups, DType type, const uint8_t* w,
                           size_t row_bytes, int64_t k, int64_t n, const void* fragments, bool to_slots, float* y);

// LATENTSERVE_CUDA_QUANT_MMA=0 turns this path off (the before/after of one binary).
bool QuantMmaEnabled();

}  // namespace latentserve::kernels::cuda
