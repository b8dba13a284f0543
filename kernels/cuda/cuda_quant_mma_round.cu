// Activations as the f16 B fragments of the batched decode products (quant_mma.h,
// cuda_matmul_mma.cu), once per input (HalfFragmentsKernel) or per expert from the routed rows
// (GroupedFragmentsKernel, with the SwiGLU of the gate and up products folded in for the down
// product). A thread writes one lane's 16 bytes: 8 values of one column's block.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/quant_mma.h"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Lane (g, t)'s fragment of a block whose values 4t .. 4t + 3 are `lo` and 16 + 4t .. are `hi`.
__device__ __forceinline__ int4 Fragment(float4 lo, float4 hi) {
  return make_int4(static_cast<int>(PackHalf2(lo.x, lo.z)), static_cast<int>(PackHalf2(lo.y, lo.w)),
                   static_cast<int>(PackHalf2(hi.x, hi.z)), static_cast<int>(PackHalf2(hi.y, hi.w)));
}

// What thread i = (kb * tiles + tile) * 32 + lane of a fragment kernel writes: the lane's 16
// bytes of 8-column tile `tile` in block kb, column `col` (of the tiles), values `first` ..
// first + 3 and first + 16 .. first + 19 of its row.
struct FragmentLane {
  int tile, col;
  int64_t first;
};

__device__ __forceinline__ FragmentLane LaneOf(int64_t i, int tiles) {
  const int lane = static_cast<int>(i % 32), tile = static_cast<int>(i / 32 % tiles);
  return {tile, tile * 8 + lane / 4, i / 32 / tiles * 32 + 4 * (lane % 4)};
}

// x [m][k]'s fragments.
__global__ void HalfFragmentsKernel(const float* x, int64_t k, int m, int tiles, int4* out) {
  AllowDependents();
  WaitForPredecessor();
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= k / 32 * tiles * 32) return;
  const FragmentLane at = LaneOf(i, tiles);
  float4 lo = make_float4(0, 0, 0, 0), hi = lo;
  if (at.col < m) {
    const float* row = x + at.col * k + at.first;
    lo = *reinterpret_cast<const float4*>(row);
    hi = *reinterpret_cast<const float4*>(row + 16);
  }
  out[i] = Fragment(lo, hi);
}

// Expert blockIdx.y's fragments (fragment_stride bytes after the previous expert's): with `up`
// null, row r of the expert is x's row of its token (row_slot / top_k); else silu(gate) * up of
// the padded [expert][tiles * 8][k] products. The tiles past an expert's rows are skipped (the
// product reads none of them); the columns of its last tile past its rows are zero.
__global__ void GroupedFragmentsKernel(const float* x, const float* up, int64_t k, const int32_t* counts,
                                       const int32_t* first_row, const int32_t* row_slot, int top_k, int tiles,
                                       size_t fragment_stride, uint8_t* out) {
  AllowDependents();
  WaitForPredecessor();
  const int e = static_cast<int>(blockIdx.y), rows = counts[e];
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= k / 32 * tiles * 32) return;
  const FragmentLane lane = LaneOf(i, tiles);
  if (lane.tile * 8 >= rows) return;
  const int col = lane.col;
  const int64_t first = lane.first;
  float4 lo = make_float4(0, 0, 0, 0), hi = lo;
  if (col < rows && up == nullptr) {
    const float* at = x + int64_t{row_slot[first_row[e] + col] / top_k} * k + first;
    lo = *reinterpret_cast<const float4*>(at);
    hi = *reinterpret_cast<const float4*>(at + 16);
  } else if (col < rows) {
    const int64_t at = (int64_t{e} * tiles * 8 + col) * k + first;
    auto swiglu = [](float4 g, float4 u) {  // the CPU's and the grouped GEMM's SwiGLU
      auto one = [](float gate, float up_value) { return gate / (1.0f + expf(-gate)) * up_value; };
      return make_float4(one(g.x, u.x), one(g.y, u.y), one(g.z, u.z), one(g.w, u.w));
    };
    lo = swiglu(*reinterpret_cast<const float4*>(x + at), *reinterpret_cast<const float4*>(up + at));
    hi = swiglu(*reinterpret_cast<const float4*>(x + at + 16), *reinterpret_cast<const float4*>(up + at + 16));
  }
  reinterpret_cast<int4*>(out + e * fragment_stride)[i] = Fragment(lo, hi);
}

}  // namespace

size_t QuantMmaFragmentBytes(int64_t k, int64_t m) {
  return static_cast<size_t>(k) * static_cast<size_t>(QuantMmaTiles(m) * 8) * sizeof(__half);
}

void LaunchHalfFragments(cudaStream_t stream, const float* x, int64_t k, int64_t m, void* out) {
  const int tiles = static_cast<int>(QuantMmaTiles(m));
  const int64_t threads = k / 32 * tiles * 32;
  CUDA_OK(LaunchDependent(HalfFragmentsKernel, dim3(static_cast<unsigned>((threads + kThreads - 1) / kThreads)),
                          dim3(kThreads), 0, stream, x, k, static_cast<int>(m), tiles, static_cast<int4*>(out)));
}

size_t GroupedFragmentBytes(int64_t k, const QuantMmaGroups& groups) {
  return static_cast<size_t>(groups.experts) * QuantMmaFragmentBytes(k, groups.x_tiles * 8);
}

void LaunchGroupedFragments(cudaStream_t stream, const float* x, const float* up, int64_t k,
                            const QuantMmaGroups& groups, void* out) {
  const int64_t threads = k / 32 * groups.x_tiles * 32;
  CUDA_OK(LaunchDependent(GroupedFragmentsKernel,
                          dim3(static_cast<unsigned>((threads + kThreads - 1) / kThreads),
                               static_cast<unsigned>(groups.experts)),
                          dim3(kThreads), 0, stream, x, up, k, groups.counts, groups.first_row, groups.row_slot,
                          groups.top_k, groups.x_tiles, QuantMmaFragmentBytes(k, groups.x_tiles * 8),
                          static_cast<uint8_t*>(out)));
}

}  // namespace latentserve::kernels::cuda
