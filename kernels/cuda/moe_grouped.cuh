// Shared pieces of the grouped MoE GEMM kernels (cuda_moe_grouped.cu: mma.sync, sm_90;
// cuda_moe_wgmma.cu and cuda_moe_predequant.cu: wgmma, sm_90a): launch parameters, loads and dequantisation of stored
// weight blocks to 16-bit pairs, cp.async helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/dtype.h"
#include "kernels/cuda/dequant.cuh"  // Scaled

namespace latentserve::kernels::cuda::moe {

// Sorted rows per M-tile of the device tile list (every kernel's CTA covers one).
constexpr int kTileRows = 128;

template <DType W>
using ComputeType = std::conditional_t<W == DType::kBF16, __nv_bfloat16, __half>;

// One grouped GEMM launch. Rows of A and of the output are expert-sorted rows.
struct GroupedGemmParams {
  const void* a;               // compute type: [rows, k] sorted rows, or [tokens, k] when a_by_token
  bool a_by_token;             // sorted row r reads a's row row_slot[r] / top_k
  const uint8_t* w0;           // gate (or down) weights [experts][n][k], stored type
  const uint8_t* w1;           // up weights (same layout) for the SwiGLU form; else null
  size_t w_row_bytes;          // bytes of one stored weight row (k elements)
  size_t w_expert_bytes;       // n * w_row_bytes
  int k;                       // reduction length, a multiple of 32
  int n;                       // output columns (weight rows per expert), a multiple of 32
  const int2* tiles;           // [tile_count] (expert, first sorted row)
  const int32_t* tile_count;   // device scalar
  const int32_t* first_row;    // [experts + 1] first sorted row of each expert
  const int32_t* row_slot;     // [rows] slot of each sorted row (output row of the down form)
  int top_k;                   // slots per token
  void* out;                   // SwiGLU: compute type [rows, n]; down: f32 [slots, n]
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitAll() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

template <typename T>
__device__ __forceinline__ uint32_t Pack2(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&bits, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &h, 4);
  }
  return bits;
}

__device__ __forceinline__ uint32_t Load2x16(const uint16_t* p) {  // 4 bytes at a 2-byte aligned address
  return static_cast<uint32_t>(__ldg(p)) | (static_cast<uint32_t>(__ldg(p + 1)) << 16);
}

// One 32-element block of a stored weight row, as loaded from global memory (registers), and
// its conversion to 16 packed pairs of the compute type.
template <DType W>
struct RawBlock;

template <>
struct RawBlock<DType::kQ4_0> {  // 18 bytes: f16 scale, 16 bytes of nibbles (low: 0..15, high: 16..31)
  uint32_t scale = 0;
  uint32_t q[4] = {0, 0, 0, 0};
  __device__ __forceinline__ void Load(const uint8_t* block) {
    const auto* h = reinterpret_cast<const uint16_t*>(block);
    scale = __ldg(h);
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = Load2x16(h + 1 + 2 * i);
  }
  // A nibble n becomes the f16 1024 + n by its bit pattern (0x6400 | n); minus 1032 is n - 8
  // exactly, and one rounding of (n - 8) * d, the same as converting the f32 product.
  __device__ __forceinline__ void Dequant(uint32_t (&out)[16]) const {
    const __half2 d = __half2half2(__ushort_as_half(static_cast<unsigned short>(scale)));
    const __half2 offset = __float2half2_rn(1032.0f);
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // bytes 2i, 2i+1: low nibbles are elements 2i, 2i+1; high ones 16+2i, 17+2i
      const uint32_t pair = __byte_perm(q[i / 2], 0, i % 2 == 0 ? 0x4140 : 0x4342);  // byte 2i at bit 0, 2i+1 at bit 16
      out[i] = Scaled(((pair & 0x000f000fu) | 0x64006400u), offset, d);
      out[8 + i] = Scaled((((pair >> 4) & 0x000f000fu) | 0x64006400u), offset, d);
    }
  }
};

template <>
struct RawBlock<DType::kQ8_0> {  // 34 bytes: f16 scale, 32 int8
  uint32_t scale = 0;
  uint32_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  __device__ __forceinline__ void Load(const uint8_t* block) {
    const auto* h = reinterpret_cast<const uint16_t*>(block);
    scale = __ldg(h);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = Load2x16(h + 1 + 2 * i);
  }
  // An int8 b with its sign bit flipped is b + 128; as the low byte under 0x64 it is the f16
  // 1152 + b, minus 1152 exactly b; then one rounding of b * d.
  __device__ __forceinline__ void Dequant(uint32_t (&out)[16]) const {
    const __half2 d = __half2half2(__ushort_as_half(static_cast<unsigned short>(scale)));
    const __half2 offset = __float2half2_rn(1152.0f);
#pragma unroll
    for (int i = 0; i < 16; ++i) {  // bytes 2i, 2i+1
      out[i] = Scaled(__byte_perm(q[i / 2] ^ 0x80808080u, 0x64646464u, i % 2 == 0 ? 0x4140 : 0x4342), offset, d);
    }
  }
};

template <DType W>
struct RawBlock16 {  // f16 / bf16: 64 bytes, already the compute type
  uint4 v[4] = {};
  __device__ __forceinline__ void Load(const uint8_t* block) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = __ldg(reinterpret_cast<const uint4*>(block) + i);
  }
  __device__ __forceinline__ void Dequant(uint32_t (&out)[16]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[4 * i] = v[i].x;
      out[4 * i + 1] = v[i].y;
      out[4 * i + 2] = v[i].z;
      out[4 * i + 3] = v[i].w;
    }
  }
};
template <>
struct RawBlock<DType::kF16> : RawBlock16<DType::kF16> {};
template <>
struct RawBlock<DType::kBF16> : RawBlock16<DType::kBF16> {};

__host__ __device__ constexpr size_t BlockBytes(DType w) {
  return w == DType::kQ4_0 ? 18 : w == DType::kQ8_0 ? 34 : 64;  // 32 elements
}

// Element offset in A of row r of the CTA's tile, -1 past the tile's rows.
__device__ __forceinline__ int ActivationOffset(const GroupedGemmParams& p, int row0, int rows, int r) {
  if (r >= rows) return -1;
  return (p.a_by_token ? p.row_slot[row0 + r] / p.top_k : row0 + r) * p.k;
}

// The stored row behind row b_row of the CTA's weight tile (null past the expert's n rows).
// SwiGLU form: the tile is made of groups of kGroup rows, each kGroup / 2 gate rows then the
// same up rows (so the thread holding a gate output also holds its up output); the tile's
// outputs start at n0. Otherwise row b_row is output n0 + b_row.
template <bool kSwiGlu, int kGroup>
__device__ __forceinline__ const uint8_t* WeightRow(const GroupedGemmParams& p, int expert, int n0, int b_row) {
  int w_out;
  const uint8_t* w_base;
  if constexpr (kSwiGlu) {
    w_out = n0 + (b_row / kGroup) * (kGroup / 2) + b_row % (kGroup / 2);
    w_base = (b_row % kGroup) < kGroup / 2 ? p.w0 : p.w1;
  } else {
    w_out = n0 + b_row;
    w_base = p.w0;
  }
  return w_out < p.n ? w_base + expert * p.w_expert_bytes + static_cast<size_t>(w_out) * p.w_row_bytes : nullptr;
}

// The wgmma form of the grouped GEMM (cuda_moe_wgmma.cu, built for sm_90a): CTAs of 128 rows
// x 128 weight rows like the mma.sync kernels, same parameters and outputs.
void LaunchGroupedGemmWgmma(bool swiglu, DType w, const GroupedGemmParams& p, int max_tiles, cudaStream_t stream);

// The form with the weights dequantised ahead of a wgmma GEMM (cuda_moe_predequant.cu, sm_90a;
// LATENTSERVE_CUDA_MOE_TILE=predequant): what it needs beyond the GEMM parameters.
struct PredequantWork {
  void* workspace;                   // 16-bit weights of one pass's experts (q4_0 / q8_0 weights)
  size_t workspace_bytes;            // PredequantWorkspaceBytes
  const int32_t* expert_first_tile;  // [experts + 1] first tile-list entry of each expert, then the count
  int64_t experts;
  int64_t max_tiles;                 // bound on the tile list
  int64_t slots;                     // routed (token, slot) pairs: rows of the GEMMs
};
// Workspace for both stages: each stage's weights of as many experts as the budget
// (LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB, default 2560) holds; 0 when both read in place.
size_t PredequantWorkspaceBytes(DType gate, DType down, int64_t experts, int64_t hidden, int64_t ffn);
void LaunchGroupedGemmPredequant(bool swiglu, DType w, const GroupedGemmParams& p, const PredequantWork& work,
                                 cudaStream_t stream);

}  // namespace latentserve::kernels::cuda::moe
