// The paged MLA decode on Hopper: bytes of the latent cache at the rate HBM gives them.
//
// One CTA per (key range, sequence), one per multiprocessor. A producer warp streams the range's
// 64-row tiles straight from their pages into shared memory by TMA: nine 64 x 64 boxes per tile
// (128-byte swizzle) through a ring of 22 box slots (176 KB, 2.4 tiles), each slot with a "full"
// and an "empty" mbarrier, so the next tile's boxes are in flight while one is computed and a
// box goes back to the producer as soon as its last read is done. One consumer warpgroup
// computes, per tile, in the transposed form that keeps 16 or 32 query heads unpadded (wgmma's
// M is 64: keys and value dimensions take that side, the heads are N):
//   S^T [64 keys x H]  = rows [64 x 576] . Q^T          wgmma m64nHk16, both from shared memory
//   online softmax per head (a column): max over the warpgroup's four warps through shared memory
//   O^T [512 x H]     += rows[:, 0:512]^T . P^T          wgmma m64nHk16, A from registers
//                                                       (ldmatrix.trans of the same tile), P^T
//                                                       from shared memory
// O^T stays in registers (eight 64-row blocks x H/2 floats per thread) for the whole range; the
// range then writes its unnormalised output with its max and sum per head, and the sequence's
// CTAs merge the ranges before they exit (mla_decode_merge.cuh: a ticket per sequence, each CTA
// a slice of the output), or, where the host cannot promise that its CTAs are resident
// together, the mma.sync file's merge kernel does. A sequence of one range writes its output
// directly. Rows of a last tile past the range's end are never
// used: their scores are set to -inf and their values zeroed in registers (a page's unwritten
// rows may hold anything, NaN included).
#include <cuda.h>

#include <atomic>
#include <cstddef>

#include "kernels/cuda/cuda_mla_decode.h"
#include "kernels/cuda/cuda_mla_decode_stats.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/mla_decode_merge.cuh"
#include "kernels/cuda/wgmma_tma.cuh"

namespace latentserve::kernels::cuda {
namespace {

using sm90::BarrierExpect;
using sm90::BarrierInit;
using sm90::BarrierWait;
using sm90::Descriptor;
using sm90::FenceOperands;
using sm90::LdMatrixX4Trans;
using sm90::PackHalf2;
using sm90::SwizzledOffset;
using sm90::TmaLoad2d;

constexpr int kBlocks = kMlaDecodeWidth / 64;       // 64-column boxes per row (9)
constexpr int kValueBlocks = kMlaDecodeValue / 64;  // of which values (8)
constexpr uint32_t kBlockBytes = kMlaDecodeTile * 128;  // one box: 64 rows x 128 bytes
constexpr int kSlots = 22;                               // boxes in the ring (2.4 tiles)
constexpr int kConsumers = 128;                          // one warpgroup
constexpr int kThreads = kConsumers + 32;                // + the producer warp

// Shared memory, from a 1,024-byte aligned base: the ring of boxes, Q (nine [H][64] swizzled
// blocks), P^T twice ([H][64 keys] swizzled), the warps' per-head maxima and sums, mbarriers.
template <int kHeads>
struct Layout {
  static constexpr uint32_t kHeadBlock = kHeads * 128;
  static constexpr uint32_t kQ = kSlots * kBlockBytes;
  static constexpr uint32_t kP = kQ + kBlocks * kHeadBlock;
  static constexpr uint32_t kMax = kP + 2 * kHeadBlock;  // [4 warps][32] floats
  static constexpr uint32_t kSum = kMax + 4 * 32 * 4;
  static constexpr uint32_t kBars = kSum + 4 * 32 * 4;   // full[slot], then empty[slot]
  static constexpr uint32_t kBytes = kBars + 2 * kSlots * 8 + 1024;
  static_assert(kBytes <= 227 * 1024, "shared memory of one CTA");
};

#ifdef LATENTSERVE_WGMMA
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaWaitAll() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void ConsumerBarrier() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }
__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// d [64 x N] += A [64 x 16] . B [16 x N], f16 in, f32 accumulators; d[4j + c]: row
// 16 warp + lane/4 (+8 for c >= 2), column 8j + 2 (lane % 4) + c % 2.
// SS: A and B K-major in shared memory (descriptors).
__device__ __forceinline__ void WgmmaSS(float (&d)[16], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15},"
      " %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}
__device__ __forceinline__ void WgmmaSS(float (&d)[8], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(a), "l"(b), "r"(1));
}
// RS: A from registers (this warp's 16 rows as mma.sync A fragments), B K-major in shared memory.
__device__ __forceinline__ void WgmmaRS(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15},"
      " {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
__device__ __forceinline__ void WgmmaRS(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
#endif

template <int kHeads>
__global__ void __launch_bounds__(kThreads, 1)
    MlaDecodeWgmmaKernel(const __grid_constant__ CUtensorMap pool_map, const MlaDecodeWgmmaArgs a) {
#ifdef LATENTSERVE_WGMMA
  using L = Layout<kHeads>;
  constexpr int kAcc = kHeads / 2;  // accumulator floats per thread and 64-row block
  constexpr int kJ = kHeads / 8;    // 8-head column groups
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* sbase = smem_raw + (base - raw);  // the same bytes, generic addressing
  float* s_max = reinterpret_cast<float*>(sbase + L::kMax);
  float* s_sum = reinterpret_cast<float*>(sbase + L::kSum);
  const uint32_t full = base + L::kBars, empty = full + kSlots * 8;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // Launched as a programmatic dependent: until WaitForPredecessor() it may overlap the kernel
  // before it, so it only prepares what reads nothing that kernels write (the mbarriers, the
  // tensor map). The plan, positions, Q and every cache row are read after the wait. (The rows
  // of earlier steps, all but the current position's, could be loaded before it; not done:
  // nothing in this launch promises that the kernels which wrote them have finished by then.)
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&pool_map)) : "memory");
    for (int i = 0; i < kSlots; ++i) {
      BarrierInit(full + 8 * i, 1);
      BarrierInit(empty + 8 * i, kConsumers);  // every consumer thread arrives
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  AllowDependents();  // what follows may be placed as CTAs finish; it waits for all of them
  WaitForPredecessor();

  const MlaDecodeSeq seq = a.seqs[blockIdx.y];
  const int64_t keys = MlaDecodeVisibleKeys(seq, a.positions, blockIdx.y);
  const int64_t split_keys = MlaDecodeSplitKeys(keys, seq.ranges);
  const int64_t begin = int64_t{blockIdx.x} * split_keys;
  if (begin >= keys) return;  // this sequence needs fewer ranges than the grid has
  const int64_t end = min(keys, begin + split_keys);
  const int tiles = static_cast<int>((end - begin + kMlaDecodeTile - 1) / kMlaDecodeTile);
  const int split = seq.first_split + static_cast<int>(blockIdx.x);

  if (warp == kConsumers / 32) {
    // Producer: box g = 9 t + b (tile t, columns 64 b..) into slot g % kSlots as soon as the
    // consumers have released the box that slot held before.
    if (lane == 0) {
      const int32_t* table = a.tables + seq.table_offset;
      const int64_t pt = a.page_tokens;
      int slot = 0;
      uint32_t round = 0;  // how many times the ring has wrapped
      for (int t = 0; t < tiles; ++t) {
        const int64_t first = begin + int64_t{t} * kMlaDecodeTile;  // a tile never crosses a page
        const int row = static_cast<int>(int64_t{table[first / pt]} * pt + first % pt);
        for (int b = 0; b < kBlocks; ++b) {
          if (round > 0) BarrierWait(empty + 8 * slot, (round - 1) & 1);
          BarrierExpect(full + 8 * slot, kBlockBytes);
          TmaLoad2d(base + slot * kBlockBytes, &pool_map, b * 64, row, full + 8 * slot);
          if (++slot == kSlots) slot = 0, ++round;
        }
      }
    }
    return;
  }

  // Consumers. Q^T as wgmma's B: nine [H][64] blocks, pre-scaled, f16, swizzled.
  {
    // 16-byte loads, all of a thread's in flight at once (the first tile is landing meanwhile).
    constexpr int kLoads = kHeads * kMlaDecodeWidth / 4 / kConsumers;
    const float4* q = reinterpret_cast<const float4*>(a.q + seq.token * kHeads * kMlaDecodeWidth);
    float4 v[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) v[k] = q[tid + k * kConsumers];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int i = 4 * (tid + k * kConsumers), h = i / kMlaDecodeWidth, e = i % kMlaDecodeWidth;
      *reinterpret_cast<uint2*>(sbase + L::kQ + (e / 64) * L::kHeadBlock + SwizzledOffset(h, (e % 64) / 8) +
                                (e % 8) * 2) =
          make_uint2(PackHalf2(v[k].x * a.scale_log2, v[k].y * a.scale_log2),
                     PackHalf2(v[k].z * a.scale_log2, v[k].w * a.scale_log2));
    }
  }
  FenceProxyAsync();
  ConsumerBarrier();

  // This thread's heads: 8j + 2 (lane % 4) + e, the same columns in S^T and O^T.
  float m_run[kJ][2], l_run[kJ][2];
#pragma unroll
  for (int j = 0; j < kJ; ++j) m_run[j][0] = m_run[j][1] = -INFINITY, l_run[j][0] = l_run[j][1] = 0.0f;
  float o[kValueBlocks][kAcc];
#pragma unroll
  for (int mb = 0; mb < kValueBlocks; ++mb)
#pragma unroll
    for (int i = 0; i < kAcc; ++i) o[mb][i] = 0.0f;
  const int r0 = 16 * warp + lane / 4;  // this thread's key rows r0, r0 + 8 in S^T

  const int mat = lane / 8;  // ldmatrix: the 8x8 matrix this lane addresses
  int first_slot = 0;        // the ring slot of the current tile's first box
  uint32_t first_round = 0;  // and how often the ring had wrapped by then
  for (int t = 0; t < tiles; ++t) {
    // Box b of this tile: slot[b], filled for the round[b]-th time (mbarrier phase parity).
    int slot[kBlocks];
    uint32_t parity[kBlocks];
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
      const bool wrapped = first_slot + b >= kSlots;
      slot[b] = wrapped ? first_slot + b - kSlots : first_slot + b;
      parity[b] = (first_round + (wrapped ? 1 : 0)) & 1;
    }
    first_round += first_slot + kBlocks >= kSlots ? 1 : 0;
    first_slot = first_slot + kBlocks >= kSlots ? first_slot + kBlocks - kSlots : first_slot + kBlocks;
    const int valid = static_cast<int>(min(int64_t{kMlaDecodeTile}, end - begin - int64_t{t} * kMlaDecodeTile));

    // S^T = rows . Q^T. (Waiting for each box just before its MMAs would put a spin loop
    // between them, and ptxas then serialises every wgmma.)
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) BarrierWait(full + 8 * slot[b], parity[b]);
    float s[kAcc];
#pragma unroll
    for (int i = 0; i < kAcc; ++i) s[i] = 0.0f;
    FenceOperands(s);
    WgmmaFence();
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        WgmmaSS(s, Descriptor(base + slot[b] * kBlockBytes + ks * 32),
                Descriptor(base + L::kQ + b * L::kHeadBlock + ks * 32));
      }
    }
    WgmmaCommit();
    WgmmaWaitAll();
    FenceOperands(s);
    BarrierArrive(empty + 8 * slot[kBlocks - 1]);  // the last box holds no values

    // Online softmax per head: the tile's max over the four warps' rows.
#pragma unroll
    for (int i = 0; i < kAcc; ++i) s[i] = (i % 4 < 2 ? r0 : r0 + 8) < valid ? s[i] : -INFINITY;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      float mx[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mx[e] = fmaxf(s[4 * j + e], s[4 * j + 2 + e]);
        for (int offset = 4; offset < 32; offset <<= 1) mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], offset));
      }
      if (lane < 4) *reinterpret_cast<float2*>(&s_max[warp * 32 + 8 * j + 2 * lane]) = make_float2(mx[0], mx[1]);
    }
    ConsumerBarrier();
    float correction[kJ][2];
    const uint32_t p_at = L::kP + (t & 1) * L::kHeadBlock;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int h = 8 * j + 2 * (lane % 4);
      float2 tile_max = *reinterpret_cast<const float2*>(&s_max[h]);
#pragma unroll
      for (int w = 1; w < kConsumers / 32; ++w) {
        const float2 other = *reinterpret_cast<const float2*>(&s_max[w * 32 + h]);
        tile_max = make_float2(fmaxf(tile_max.x, other.x), fmaxf(tile_max.y, other.y));
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float new_max = fmaxf(m_run[j][e], e == 0 ? tile_max.x : tile_max.y);  // a tile has a visible key
        correction[j][e] = exp2f(m_run[j][e] - new_max);
        m_run[j][e] = new_max;
        const float p0 = exp2f(s[4 * j + e] - new_max), p1 = exp2f(s[4 * j + 2 + e] - new_max);
        l_run[j][e] = l_run[j][e] * correction[j][e] + p0 + p1;
        // P^T as wgmma's B: row = head, 64 keys of 2 bytes, swizzled.
        const int head = h + e;
        const uint32_t row = p_at + head * 128;
        *reinterpret_cast<__half*>(sbase + row + ((((r0 / 8) ^ (head & 7))) << 4) + (r0 % 8) * 2) = __float2half_rn(p0);
        *reinterpret_cast<__half*>(sbase + row + ((((r0 / 8 + 1) ^ (head & 7))) << 4) + (r0 % 8) * 2) =
            __float2half_rn(p1);
      }
    }
    FenceProxyAsync();
    ConsumerBarrier();

    // O^T = O^T * correction + V^T . P^T, one 64-dimension block (box) at a time: its V^T
    // fragments by ldmatrix.trans (then the box goes back to the producer), four k-steps of 16
    // keys. Two fragment buffers: the next block loads while the last one's MMAs run.
#pragma unroll
    for (int mb = 0; mb < kValueBlocks; ++mb)
#pragma unroll
      for (int j = 0; j < kJ; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) o[mb][4 * j + c] *= correction[j][c % 2];
    // Keys 16 kk + 2 (lane % 4) + {0, 1} (fragment registers 0, 1) and + 8 (registers 2, 3)
    // past the range's end are zeroed, without a branch (a divergent path before the MMAs
    // would serialise them).
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const int k0 = 16 * kk + 2 * (lane % 4);
      lo[kk] = (k0 < valid ? 0x0000ffffu : 0u) | (k0 + 1 < valid ? 0xffff0000u : 0u);
      hi[kk] = (k0 + 8 < valid ? 0x0000ffffu : 0u) | (k0 + 9 < valid ? 0xffff0000u : 0u);
    }
    uint32_t v[2][4][4];
#pragma unroll
    for (int mb = 0; mb < kValueBlocks; ++mb) {
      if (mb >= 2) asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // block mb - 2 done
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t(&f)[4] = v[mb & 1][kk];
        LdMatrixX4Trans(f, base + slot[mb] * kBlockBytes +
                               SwizzledOffset(16 * kk + lane % 8 + 8 * (mat >> 1), 2 * warp + (mat & 1)));
        f[0] &= lo[kk];
        f[1] &= lo[kk];
        f[2] &= hi[kk];
        f[3] &= hi[kk];
      }
      // Every thread arrives (one lane per warp would be a divergent path, which makes ptxas
      // serialise the MMAs).
      BarrierArrive(empty + 8 * slot[mb]);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) WgmmaRS(o[mb], v[mb & 1][kk], Descriptor(base + p_at + kk * 32));
      WgmmaCommit();
    }
    WgmmaWaitAll();
#pragma unroll
    for (int mb = 0; mb < kValueBlocks; ++mb) FenceOperands(o[mb]);
  }

  // The range's sums per head over the four warps' rows.
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      for (int offset = 4; offset < 32; offset <<= 1) l_run[j][e] += __shfl_xor_sync(0xffffffff, l_run[j][e], offset);
    }
    if (lane < 4) *reinterpret_cast<float2*>(&s_sum[warp * 32 + 8 * j + 2 * lane]) = make_float2(l_run[j][0], l_run[j][1]);
  }
  ConsumerBarrier();
  const int ranges = static_cast<int>((keys + split_keys - 1) / split_keys);  // the sequence's, this call
  float* out_token = a.out + seq.token * kHeads * kMlaDecodeValue;
  // O^T (rows value dimensions, columns heads) into dst [heads][512], each head's columns times
  // scale[j][c % 2].
  const auto write_o = [&](float* dst, const float (&scale)[kJ][2]) {
#pragma unroll
    for (int mb = 0; mb < kValueBlocks; ++mb) {
#pragma unroll
      for (int i = 0; i < kAcc; ++i) {
        const int j = i / 4, c = i % 4;
        const int dim = 64 * mb + r0 + (c >= 2 ? 8 : 0), head = 8 * j + 2 * (lane % 4) + c % 2;
        dst[head * kMlaDecodeValue + dim] = o[mb][i] * scale[j][c % 2];
      }
    }
  };
  if (a.tickets != nullptr && ranges == 1) {
    // The sequence's only range: its output, normalised, with no partials.
    float inv[kJ][2];
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int head = 8 * j + 2 * (lane % 4) + e;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kConsumers / 32; ++w) sum += s_sum[w * 32 + head];
        inv[j][e] = 1.0f / sum;
      }
    }
    write_o(out_token, inv);
    return;
  }

  // The range's output, unnormalised.
  float one[kJ][2];
#pragma unroll
  for (int j = 0; j < kJ; ++j) one[j][0] = one[j][1] = 1.0f;
  float* out = a.partial + int64_t{split} * kHeads * kMlaDecodeValue;
  write_o(out, one);
  if (warp == 0 && lane < 4) {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int head = 8 * j + 2 * lane + e;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kConsumers / 32; ++w) sum += s_sum[w * 32 + head];
        a.partial_max[int64_t{split} * kHeads + head] = m_run[j][e];
        a.partial_sum[int64_t{split} * kHeads + head] = sum;
      }
    }
  }
  if (a.tickets == nullptr) return;  // MergeRangesKernel merges

  // Every range of the sequence written: this CTA merges its slice of the output. The ring of
  // boxes is free (every box landed and was read) and holds the merge's scratch.
  __threadfence();
  ConsumerBarrier();
  if (tid == 0) mla_merge::ArriveAndWait(a.tickets + blockIdx.y, ranges);
  ConsumerBarrier();
  mla_merge::MergeSlice<kHeads, kConsumers>(a.partial, a.partial_max, a.partial_sum, seq.first_split,
                                            static_cast<int>(blockIdx.x), ranges, out_token, sbase, tid,
                                            [] { ConsumerBarrier(); });
#else
  __trap();  // built without sm_90a: never launched (the host selects the mma.sync kernel)
#endif
}

std::atomic<int64_t> launches{0};

}  // namespace

int64_t MlaDecodeWgmmaLaunches() { return launches.load(); }

size_t MlaDecodeWgmmaSmem(int heads) { return heads == 16 ? Layout<16>::kBytes : Layout<32>::kBytes; }

cudaError_t LaunchMlaDecodeWgmma(const MlaDecodeWgmmaArgs& a, cudaStream_t stream) {
  if ((a.heads != 16 && a.heads != 32) || a.page_tokens % kMlaDecodeTile != 0 || a.pool_rows >= (int64_t{1} << 31) ||
      a.row_bytes % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  // The pool's tensor map, kept while the same pool comes back (every layer of a step, every
  // step): encoding one is a driver call of a few microseconds.
  struct MapCache {
    const void* pool = nullptr;
    int64_t rows = 0, row_bytes = 0;
    CUtensorMap map;
  };
  thread_local MapCache cache;
  if (cache.pool != a.pool || cache.rows != a.pool_rows || cache.row_bytes != a.row_bytes) {
    const cuuint64_t dims[2] = {kMlaDecodeWidth, static_cast<cuuint64_t>(a.pool_rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(a.row_bytes)};
    const cuuint32_t box[2] = {64, kMlaDecodeTile};
    cache.pool = nullptr;
    if (const cudaError_t e = sm90::EncodeMap(&cache.map, a.pool, 2, dims, strides, box); e != cudaSuccess) return e;
    cache.pool = a.pool;
    cache.rows = a.pool_rows;
    cache.row_bytes = a.row_bytes;
  }
  auto kernel = a.heads == 16 ? MlaDecodeWgmmaKernel<16> : MlaDecodeWgmmaKernel<32>;
  const int smem = static_cast<int>(MlaDecodeWgmmaSmem(a.heads));
  if (const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      e != cudaSuccess) {
    return e;
  }
  const dim3 grid(static_cast<unsigned>(a.max_ranges), static_cast<unsigned>(a.batch));
  const cudaError_t e = LaunchDependent(kernel, grid, dim3(kThreads), static_cast<size_t>(smem), stream, cache.map, a);
  launches.fetch_add(1);
  return e;
}

}  // namespace latentserve::kernels::cuda
