// The MLA prefill flash kernel, warp-specialised (sm_90a): a CTA of three warpgroups takes 128
// queries of one head. Warpgroup 0 is the producer: one of its threads issues every TMA load
// (queries once, then keys and values a tile at a time into kStages ring buffers, each buffer
// with a "full" mbarrier counted in bytes and an "empty" one the consumers arrive on), and the
// warpgroup gives its registers to the others (setmaxnreg). Warpgroups 1 and 2 each own 64
// queries and run on their own: per 64-key tile j, S = Q K^T as 12 wgmma m64n64k16 with both
// operands in shared memory, the online softmax on the accumulators (base 2; queries
// pre-scaled by scale * log2 e), then O += P Vt^T as 4 wgmma m64n128k16 (P in registers). S of
// tile j + 1 is issued before the softmax of tile j, and P V of tile j runs on through the next
// iteration. Nothing ties the two consumers to each other (no CTA-wide barrier per tile, as
// cuda_mla_flash_wgmma.cu has): one's softmax runs while the other's products keep the tensor
// cores busy. Same inputs and results as the other flash kernels; the op tests run all of them.
#include "kernels/cuda/cuda_mla_flash.h"
#include "kernels/cuda/wgmma_tma.cuh"

namespace latentserve::kernels::cuda {
namespace {

using namespace sm90;  // NOLINT: the kernel reads as the PTX it issues

constexpr int kBlockQ = 128;  // two consumer warpgroups x 64 rows
constexpr int kThreads = 384;  // producer + two consumers
constexpr int kQBytes = kBlockQ * kMlaQk * 2;  // 48 KiB
constexpr int kConsumerThreads = 256;

constexpr int kBlockK = 64;
constexpr int kKBytes = kBlockK * kMlaQk * 2;  // 24 KiB a stage
constexpr int kVBytes = kMlaV * kBlockK * 2;   // 16 KiB a stage
constexpr int kStages = 4;
constexpr int kBarriers = 1 + 4 * kStages;  // q; keys full / empty; values full / empty
constexpr size_t kSmemBytes = kQBytes + kStages * (kKBytes + kVBytes) + 1024 + 8 * kBarriers;

// S (m64 x 64) = this warpgroup's queries (registers, mma.sync A fragments) . a key tile
// (shared memory). Register-sourced: both warpgroups reading Q from shared memory as well would
// add 48 KiB of shared-memory reads a tile (measured: 68% of the bf16 rate against 75%).
#ifdef LATENTSERVE_WGMMA
__device__ __forceinline__ void ScoreTile(float (&s)[kBlockK / 2], const uint32_t (&q)[kMlaQk / 16][4],
                                          uint32_t keys) {
#pragma unroll
  for (int kk = 0; kk < kMlaQk / 16; ++kk) {
    WgmmaRS_N64(s, q[kk], Descriptor(keys + (kk / 4) * (kBlockK * 128) + (kk % 4) * 32), kk > 0 ? 1 : 0);
  }
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    MlaFlashWsKernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                     const __grid_constant__ CUtensorMap map_rope, const __grid_constant__ CUtensorMap map_vt,
                     const MlaFlashArgs a) {
#ifdef LATENTSERVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const uint32_t s_q = base, s_k = base + kQBytes, s_v = s_k + kStages * kKBytes;
  const uint32_t bar_q = s_v + kStages * kVBytes;
  const uint32_t k_full = bar_q + 8, k_empty = k_full + 8 * kStages;
  const uint32_t v_full = k_empty + 8 * kStages, v_empty = v_full + 8 * kStages;
  const int tid = threadIdx.x, warpgroup = tid / 128;
  const int head = static_cast<int>(blockIdx.y);
  const int64_t t0 = (int64_t{gridDim.x} - 1 - blockIdx.x) * kBlockQ;  // longest tiles first
  const int64_t last_query = min(t0 + kBlockQ, a.n) - 1;
  const int64_t key_end = min(a.keys, a.first_position + last_query + 1);
  const int tiles = static_cast<int>((key_end + kBlockK - 1) / kBlockK);

  if (tid == 0) {
    BarrierInit(bar_q, 1);
    for (int i = 0; i < kStages; ++i) {
      BarrierInit(k_full + 8 * i, 1);
      BarrierInit(v_full + 8 * i, 1);
      BarrierInit(k_empty + 8 * i, kConsumerThreads);
      BarrierInit(v_empty + 8 * i, kConsumerThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warpgroup == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (tid != 0) return;
    BarrierExpect(bar_q, kQBytes);
    for (int b = 0; b < kMlaQk / 64; ++b) {
      TmaLoad3d(s_q + b * (kBlockQ * 128), &map_q, b * 64, head, static_cast<int>(t0), bar_q);
    }
    for (int tile = 0; tile < tiles; ++tile) {
      const int stage = tile % kStages;
      const uint32_t phase = ((tile / kStages) + 1) & 1;  // the previous use's release
      const int key = tile * kBlockK;
      if (tile >= kStages) BarrierWait(k_empty + 8 * stage, phase);
      const uint32_t keys = s_k + stage * kKBytes;
      BarrierExpect(k_full + 8 * stage, kKBytes);
      TmaLoad2d(keys, &map_k, head * kMlaNope, key, k_full + 8 * stage);
      TmaLoad2d(keys + kBlockK * 128, &map_k, head * kMlaNope + 64, key, k_full + 8 * stage);
      TmaLoad2d(keys + 2 * kBlockK * 128, &map_rope, static_cast<int>(a.rope_col), key, k_full + 8 * stage);
      if (tile >= kStages) BarrierWait(v_empty + 8 * stage, phase);
      BarrierExpect(v_full + 8 * stage, kVBytes);
      for (int box = 0; box < kBlockK / 64; ++box) {
        TmaLoad2d(s_v + stage * kVBytes + box * (kMlaV * 128), &map_vt, key + box * 64, head * kMlaV,
                  v_full + 8 * stage);
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int consumer = warpgroup - 1, warp = (tid / 32) % 4, lane = tid % 32;
  const int row_in_block = consumer * 64 + warp * 16 + lane / 4;

  auto issue_scores = [&](float (&s)[kBlockK / 2], const uint32_t (&q)[kMlaQk / 16][4], int tile) {
    const int stage = tile % kStages;
    const uint32_t keys = s_k + stage * kKBytes;
    BarrierWait(k_full + 8 * stage, (tile / kStages) & 1);
    // Zeroed first so the compiler cannot give these accumulators the registers of a live copy
    // of them (it sees the asm read them; the tensor cores write them later, asynchronously).
#pragma unroll
    for (int i = 0; i < kBlockK / 2; ++i) s[i] = 0.0f;
    FenceOperands(s);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    ScoreTile(s, q, keys);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  };
  BarrierWait(bar_q, 0);
  uint32_t q[kMlaQk / 16][4];
#pragma unroll
  for (int kk = 0; kk < kMlaQk / 16; ++kk) {
    const int r = consumer * 64 + warp * 16 + (lane & 15), c = 2 * kk + (lane >> 4);
    LdMatrixX4(q[kk], s_q + (c / 8) * (kBlockQ * 128) + SwizzledOffset(r, c % 8));
  }

  float o[kMlaV / 2];
#pragma unroll
  for (int i = 0; i < kMlaV / 2; ++i) o[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int64_t row_position0 = a.first_position + t0 + row_in_block;
  float s[kBlockK / 2], s_next[kBlockK / 2];
  issue_scores(s, q, 0);
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  FenceOperands(s);
  BarrierArrive(k_empty);

  for (int tile = 0; tile < tiles; ++tile) {
    if (tile + 1 < tiles) issue_scores(s_next, q, tile + 1);  // runs during this tile's softmax

    const int64_t key0 = int64_t{tile} * kBlockK;
    if (key0 + kBlockK - 1 > a.first_position + t0 || key0 + kBlockK > a.keys) {
#pragma unroll
      for (int i = 0; i < kBlockK / 2; ++i) {
        const int64_t key = key0 + (i / 4) * 8 + 2 * (lane & 3) + (i & 1);
        const int64_t position = row_position0 + ((i >> 1) & 1) * 8;
        if (key > position || key >= a.keys) s[i] = -INFINITY;
      }
    }
    float correction[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) m = fmaxf(m, fmaxf(s[j * 4 + 2 * half], s[j * 4 + 2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
      correction[half] = exp2f(row_max[half] - m);
      row_max[half] = m;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) {
        s[j * 4 + 2 * half] = exp2f(s[j * 4 + 2 * half] - m);
        s[j * 4 + 2 * half + 1] = exp2f(s[j * 4 + 2 * half + 1] - m);
        sum += s[j * 4 + 2 * half] + s[j * 4 + 2 * half + 1];
      }
      row_sum[half] = row_sum[half] * correction[half] + sum;
    }
    uint32_t p[kBlockK / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      p[kk][0] = PackHalf2(s[(2 * kk) * 4 + 0], s[(2 * kk) * 4 + 1]);
      p[kk][1] = PackHalf2(s[(2 * kk) * 4 + 2], s[(2 * kk) * 4 + 3]);
      p[kk][2] = PackHalf2(s[(2 * kk + 1) * 4 + 0], s[(2 * kk + 1) * 4 + 1]);
      p[kk][3] = PackHalf2(s[(2 * kk + 1) * 4 + 2], s[(2 * kk + 1) * 4 + 3]);
    }
    // S of the next tile and P V of the previous one are done: their buffers go back.
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    FenceOperands(o);
    FenceOperands(s_next);
    if (tile + 1 < tiles) BarrierArrive(k_empty + 8 * ((tile + 1) % kStages));
    if (tile > 0) BarrierArrive(v_empty + 8 * ((tile - 1) % kStages));
#pragma unroll
    for (int i = 0; i < kBlockK / 2; ++i) s[i] = s_next[i];
#pragma unroll
    for (int j = 0; j < kMlaV / 8; ++j) {
      o[j * 4 + 0] *= correction[0];
      o[j * 4 + 1] *= correction[0];
      o[j * 4 + 2] *= correction[1];
      o[j * 4 + 3] *= correction[1];
    }
    FenceOperands(o);
    const int stage = tile % kStages;
    BarrierWait(v_full + 8 * stage, (tile / kStages) & 1);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    const uint32_t values = s_v + stage * kVBytes;
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      WgmmaRS_N128(o, p[kk], Descriptor(values + (kk / 4) * (kMlaV * 128) + (kk % 4) * 32), 1);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");  // runs on into the next tile
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  FenceOperands(o);

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = row_sum[half];
    l += __shfl_xor_sync(0xffffffff, l, 1);
    l += __shfl_xor_sync(0xffffffff, l, 2);
    const float inv = 1.0f / l;
    const int64_t t = t0 + row_in_block + half * 8;
    if (t >= a.n) continue;
    float* dst = a.out + (t * a.heads + head) * kMlaV + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < kMlaV / 8; ++j) {
      *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j * 4 + 2 * half] * inv, o[j * 4 + 2 * half + 1] * inv);
    }
  }
#else
  __trap();  // not reached: this file is compiled for sm_90a only (kernels/cuda/CMakeLists.txt)
#endif
}

}  // namespace

cudaError_t LaunchMlaFlashWs(const MlaFlashArgs& args, cudaStream_t stream) {
  CUtensorMap maps[4];
  cudaError_t e = EncodeMlaFlashMaps(args, kBlockQ, kBlockK, maps);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(MlaFlashWsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes));
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((args.n + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(args.heads));
  MlaFlashWsKernel<<<grid, kThreads, kSmemBytes, stream>>>(maps[0], maps[1], maps[2], maps[3], args);
  return cudaGetLastError();
}

}  // namespace latentserve::kernels::cuda
