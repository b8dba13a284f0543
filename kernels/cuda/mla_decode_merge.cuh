// The ranges of a sequence merged inside the Hopper decode kernel (cuda_mla_decode_wgmma.cu),
// by all of the sequence's CTAs together, in place of a second kernel.
//
// Each CTA writes its range's unnormalised output, max and sum (the layouts of
// MlaDecodeWgmmaArgs), then arrives at the sequence's ticket and waits until all R ranges
// have arrived; CTA r then merges the r-th of R equal slices of the sequence's flattened
// [heads][512] output:  out = sum_r 2^(m_r - M) O_r / sum_r 2^(m_r - M) l_r.
// Why not the last CTA alone: at a 128K context and batch 1 the ranges are ~128, 8 MiB of
// partial outputs, far more than one SM reads in the ~16 us this is meant to save.
// Waiting is safe only while every CTA with a range of a sequence of several ranges can be
// resident at once (the host checks: those CTAs number at most the multiprocessors, one CTA
// each); CTAs that never wait (single ranges, empty grid slots) always finish.
// The ticket counts R arrivals, then R departures; the last departure sets it back to 0, so
// the next call (and every replay of a recorded step) finds it at 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_mla_decode.h"

namespace latentserve::kernels::cuda::mla_merge {

__device__ __forceinline__ int LoadAcquire(const int* address) {
  int value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(address) : "memory");
  return value;
}

// Called by one thread after every thread of the CTA's merging group has written its partial
// output, run __threadfence() and met it at a barrier. Returns when all `ranges` have arrived.
__device__ __forceinline__ void ArriveAndWait(int* ticket, int ranges) {
  __threadfence();
  atomicAdd(ticket, 1);
  while (LoadAcquire(ticket) < ranges) __nanosleep(64);
  // Departure: nobody reads the ticket once all R have left the loop above.
  if (atomicAdd(ticket, 1) == 2 * ranges - 1) atomicExch(ticket, 0);
  __threadfence();
}

// Slice `range` of `ranges` of the flattened [kHeads][512] output: whole 4-float quads.
__host__ __device__ __forceinline__ int SliceFloats(int heads, int ranges) {
  const int per = (heads * kMlaDecodeValue + ranges - 1) / ranges;
  return (per + 3) / 4 * 4;
}

// Merges this CTA's slice into out_token ([kHeads][512], the token's output). Threads
// tid < kThreadsMerging take part and meet at `sync` (a barrier over exactly them) between
// phases; `scratch`: 16-byte aligned shared memory for the weights ([slice heads][ranges]) and
// the range groups' sums (at most 32 KB of float4 sums and ~13 KB of weights for ranges >= 2).
template <int kHeads, int kThreadsMerging, typename Sync>
__device__ __forceinline__ void MergeSlice(const float* partial, const float* partial_max, const float* partial_sum,
                                           int first_split, int range, int ranges, float* out_token,
                                           unsigned char* scratch, int tid, Sync sync) {
  constexpr int kTotal = kHeads * kMlaDecodeValue;
  const int floats = SliceFloats(kHeads, ranges);
  const int begin = range * floats;
  if (begin >= kTotal) return;  // the whole CTA (more ranges than quads of output)
  const int end = min(kTotal, begin + floats);
  const int head0 = begin / kMlaDecodeValue, heads = (end - 1) / kMlaDecodeValue - head0 + 1;
  // Weights [slice head][range] = 2^(m_r - M) / sum_r 2^(m_r - M) l_r, max and sum read once.
  float* weight = reinterpret_cast<float*>(scratch);
  const int warp = tid / 32, lane = tid % 32;
  for (int h = warp; h < heads; h += kThreadsMerging / 32) {
    const int head = head0 + h;
    float m = -INFINITY, l = 0.0f;
    for (int r = lane; r < ranges; r += 32) {
      const int64_t i = int64_t{first_split + r} * kHeads + head;
      const float mr = __ldcg(partial_max + i), lr = __ldcg(partial_sum + i);
      const float mm = fmaxf(m, mr);  // mr is finite: a range has a visible key
      l = l * exp2f(m - mm) + lr * exp2f(mr - mm);
      m = mm;
      weight[h * ranges + r] = mr;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffff, m, offset), lo = __shfl_xor_sync(0xffffffff, l, offset);
      const float mm = fmaxf(m, mo);
      l = (m == -INFINITY ? 0.0f : l * exp2f(m - mm)) + (mo == -INFINITY ? 0.0f : lo * exp2f(mo - mm));
      m = mm;
    }
    const float inv = 1.0f / l;
    __syncwarp();
    for (int r = lane; r < ranges; r += 32) weight[h * ranges + r] = exp2f(weight[h * ranges + r] - m) * inv;
  }
  sync();
  // Quads of the slice x groups of ranges: each (quad, group) sums every groups-th range; the
  // groups' sums meet in shared memory.
  const int quads = (end - begin) / 4;
  const int groups = quads < kThreadsMerging ? kThreadsMerging / quads : 1;
  float4* sums = reinterpret_cast<float4*>(scratch + (heads * ranges * 4 + 15) / 16 * 16);
  for (int item = tid; item < quads * groups; item += kThreadsMerging) {
    const int q = item % quads, g = item / quads;
    const int e = begin + 4 * q;
    const float* w = weight + (e / kMlaDecodeValue - head0) * ranges;
    const float* src = partial + int64_t{first_split} * kTotal + e;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
    for (int r = g; r < ranges; r += groups) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(src + int64_t{r} * kTotal));
      const float wr = w[r];
      acc.x += wr * v.x, acc.y += wr * v.y, acc.z += wr * v.z, acc.w += wr * v.w;
    }
    sums[g * quads + q] = acc;
  }
  sync();
  for (int q = tid; q < quads; q += kThreadsMerging) {
    float4 x = sums[q];
    for (int g = 1; g < groups; ++g) {
      const float4 y = sums[g * quads + q];
      x.x += y.x, x.y += y.y, x.z += y.z, x.w += y.w;
    }
    float* dst = out_token + begin + 4 * q;
    dst[0] = x.x, dst[1] = x.y, dst[2] = x.z, dst[3] = x.w;
  }
}

}  // namespace latentserve::kernels::cuda::mla_merge
