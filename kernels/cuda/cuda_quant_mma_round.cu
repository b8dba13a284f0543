// Activations rounded for the int8 tensor-core products (quant_mma.h, cuda_matmul_mma.cu): 8-bit
// blocks of 32 by q8_0's rule, laid out in mma.m16n8k32's A-fragment order, once per input
// (RoundFragmentsKernel) or per expert from the routed rows (RoundGroupedKernel, with the SwiGLU
// of the gate and up products folded in for the down product).
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/quant_mma.h"
#include "kernels/cuda/row_pipeline.cuh"

namespace latentserve::kernels::cuda {
namespace {

// The rounding kernels give each 32-value block (one column's block kb) to 8 lanes of a warp,
// 4 consecutive values a lane (one float4 in, one 32-bit word of 4 int8 out: the 4 values share a
// register of the fragment); a warp rounds 4 blocks. kGroupLanes-lane groups reduce max|x|.
constexpr int kGroupLanes = 8;

// Values 4u .. 4u + 3 (u = lane % 8) of block kb of column `col` rounded into the fragment
// layout (q: values, d: scales; m_tiles column tiles). Every lane of the warp calls it (the
// reduction shuffles over the whole warp).
__device__ __forceinline__ void RoundIntoFragments(float4 v, int64_t kb, int col, int m_tiles, int lane, int8_t* q,
                                                   float* d) {
  float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
  for (int offset = kGroupLanes / 2; offset > 0; offset >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
  }
  const Q8Rounding rounding = Q8RoundingOf(amax);
  const int u = lane % kGroupLanes, tile = col / 16, r = col % 16, g = r % 8;
  const int reg = (u / 4) * 2 + r / 8, t = u % 4;  // values 4u.. sit in register reg of lane 4g + t
  *reinterpret_cast<uint32_t*>(q + ((kb * m_tiles + tile) * 32 + g * 4 + t) * 16 + reg * 4) = rounding.Word(v);
  if (u == 0) d[kb * m_tiles * 16 + col] = rounding.scale;
}

// Activations [m][k] f32 -> 8-bit blocks in m16n8k32 A-fragment order: for block kb and
// 16-column tile i, lane l's 16 bytes at ((kb * m_tiles + i) * 32 + l) * 16 hold (PTX's layout)
// column g = l / 4 and g + 8, values 4 (l % 4) .. +3 and 16 + 4 (l % 4) .. +3. Scales
// [kb][m_tiles * 16]. Columns m .. m_tiles * 16 - 1 are zero.
__global__ void RoundFragmentsKernel(const float* x, int64_t k, int m, int m_tiles, int8_t* q, float* d) {
  AllowDependents();
  WaitForPredecessor();
  const int m_pad = m_tiles * 16, lane = threadIdx.x % 32;
  // Blocks column by column (k / 32 is a multiple of 8, so a warp's 4 blocks share a column).
  const int64_t b = (blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32) * (32 / kGroupLanes) + lane / kGroupLanes;
  if (b >= k / 32 * m_pad) return;  // whole warps
  const int col = static_cast<int>(b / (k / 32));
  const int64_t kb = b % (k / 32);
  float4 v = make_float4(0, 0, 0, 0);
  if (col < m) v = *reinterpret_cast<const float4*>(x + col * k + kb * 32 + 4 * (lane % kGroupLanes));
  RoundIntoFragments(v, kb, col, m_tiles, lane, q, d);
}

// Each expert's rows rounded into its own fragment block (fragment_stride bytes apart): with
// `up` null, row r of expert e is x's row of its token (row_slot / top_k); else silu(gate) * up
// of the padded [expert][m_tiles * 16][k] products. Blocks column by column, 4 to a warp (one
// column: k / 32 is a multiple of 8); the columns past an expert's rows are skipped (their
// products are never stored).
__global__ void RoundGroupedKernel(const float* x, const float* up, int64_t k, const int32_t* counts,
                                   const int32_t* first_row, const int32_t* row_slot, int top_k, int m_tiles,
                                   size_t fragment_stride, uint8_t* out) {
  AllowDependents();
  WaitForPredecessor();
  const int m_pad = m_tiles * 16, lane = threadIdx.x % 32, e = static_cast<int>(blockIdx.y);
  const int64_t b = (blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32) * (32 / kGroupLanes) + lane / kGroupLanes;
  const int col = static_cast<int>(b / (k / 32));
  if (col >= m_pad || col >= counts[e]) return;  // whole warps
  const int64_t kb = b % (k / 32), first = kb * 32 + 4 * (lane % kGroupLanes);
  float4 v;
  if (up == nullptr) {
    v = *reinterpret_cast<const float4*>(x + int64_t{row_slot[first_row[e] + col] / top_k} * k + first);
  } else {
    const int64_t at = (int64_t{e} * m_pad + col) * k + first;
    const float4 g = *reinterpret_cast<const float4*>(x + at), u = *reinterpret_cast<const float4*>(up + at);
    auto swiglu = [](float gate, float up_value) {  // the CPU's and the grouped GEMM's SwiGLU
      return gate / (1.0f + expf(-gate)) * up_value;
    };
    v = make_float4(swiglu(g.x, u.x), swiglu(g.y, u.y), swiglu(g.z, u.z), swiglu(g.w, u.w));
  }
  auto* q = reinterpret_cast<int8_t*>(out + e * fragment_stride);
  RoundIntoFragments(v, kb, col, m_tiles, lane, q, ScalesOf(q, k, m_tiles));
}

}  // namespace

size_t QuantMmaRoundedBytes(int64_t k, int64_t m) {
  const size_t m_pad = static_cast<size_t>((m + 15) / 16 * 16);
  return static_cast<size_t>(k) * m_pad + static_cast<size_t>(k / 32) * m_pad * 4;
}

void LaunchRoundFragments(cudaStream_t stream, const float* x, int64_t k, int64_t m, void* out) {
  const int m_tiles = static_cast<int>((m + 15) / 16);
  auto* q = static_cast<int8_t*>(out);
  float* d = ScalesOf(q, k, m_tiles);
  constexpr int kRoundWarps = 8;
  const int64_t warps = k / 32 * m_tiles * 16 / (32 / kGroupLanes);
  CUDA_OK(LaunchDependent(RoundFragmentsKernel, dim3(static_cast<unsigned>((warps + kRoundWarps - 1) / kRoundWarps)),
                          dim3(kRoundWarps * 32), 0, stream, x, k, static_cast<int>(m), m_tiles, q, d));
}

size_t GroupedRoundedBytes(int64_t k, const QuantMmaGroups& groups) {
  return static_cast<size_t>(groups.experts) * QuantMmaRoundedBytes(k, groups.m_tiles * 16);
}

void LaunchRoundGrouped(cudaStream_t stream, const float* x, const float* up, int64_t k, const QuantMmaGroups& groups,
                        void* out) {
  constexpr int kRoundWarps = 8;
  const int64_t warps = k / 32 * groups.m_tiles * 16 / (32 / kGroupLanes);
  CUDA_OK(LaunchDependent(RoundGroupedKernel,
                          dim3(static_cast<unsigned>((warps + kRoundWarps - 1) / kRoundWarps),
                               static_cast<unsigned>(groups.experts)),
                          dim3(kRoundWarps * 32), 0, stream, x, up, k, groups.counts, groups.first_row, groups.row_slot,
                          groups.top_k, groups.m_tiles, QuantMmaRoundedBytes(k, groups.m_tiles * 16),
                          static_cast<uint8_t*>(out)));
}

}  // namespace latentserve::kernels::cuda
