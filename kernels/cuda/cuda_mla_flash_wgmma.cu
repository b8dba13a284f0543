// The MLA prefill flash kernel on Hopper's warpgroup instructions (sm_90a): a CTA of two
// warpgroups takes 128 queries of one head (64 each) and walks 64-key tiles of the causal
// range. Per tile j: S = Q K^T as 12 wgmma m64n64k16 (queries in registers, keys in shared
// memory), the online softmax on the accumulators (base 2; queries pre-scaled by
// scale * log2 e), then O += P Vt^T as 4 wgmma m64n128k16 (P in registers). The tensor cores
// are kept busy across the softmax: S for tile j + 1 is issued before the softmax of tile j,
// and P V of tile j runs on through the next iteration's loads and softmax. Tiles arrive by
// TMA (keys two tiles ahead in 2 buffers, values one ahead in 3) in the 128-byte-swizzled
// K-major layout the wgmma descriptors name: rows of 64 halves (128 bytes), 16-byte chunk c
// of row r at c ^ (r % 8), 8-row groups 1,024 bytes apart, head dimensions past 64 in
// further such blocks. Same inputs and results as the mma.sync kernel (cuda_mla_prefill.cu);
// the op tests run both.
#include <cuda.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>

#include "kernels/cuda/cuda_mla_flash.h"
#include "kernels/cuda/wgmma_tma.cuh"

namespace latentserve::kernels::cuda {
namespace {

using namespace sm90;  // NOLINT: the kernel reads as the PTX it issues

constexpr int kBlockQ = 128;  // two warpgroups x 64 rows
constexpr int kBlockK = 64;
constexpr int kThreads = 256;
constexpr int kQBytes = kBlockQ * kMlaQk * 2;   // 48 KiB
constexpr int kKBytes = kBlockK * kMlaQk * 2;   // 24 KiB per stage
constexpr int kVBytes = kMlaV * kBlockK * 2;    // 16 KiB per stage
constexpr int kKStages = 2, kVStages = 3;
// Tiles, 1,024 bytes of alignment slack, and the mbarriers (queries, keys, values buffers).
constexpr size_t kSmemBytes = kQBytes + kKStages * kKBytes + kVStages * kVBytes + 1024 + 8 * (1 + kKStages + kVStages);

// Tiles are fetched by the tensor memory accelerator: one thread issues each tile as 64 x 64
// (or 64 x 128) boxes that land already 128-byte swizzled, completion on an mbarrier per
// buffer; no thread spends instructions on addresses or copies (a cp.async version of this
// kernel, every thread copying, ran at 44% of the bf16 GEMM rate against this one's 74%).
// Maps: q (192, H, n) boxes (64, 1, 128); k (H Pn, keys) boxes (64, 64); rope = the latent
// rows (L, keys_ld) boxes (64, 64); vt (keys_ld, H Dv) boxes (64, 128). Out of range: zeros.
// 2^x on the special-function unit alone: with flush-to-zero PTX needs no range fix-up around
// the SFU instruction (the plain exp2f, ex2.approx.f32, keeps denormal results and gets one),
// and a probability that small is a zero in f16 anyway.
__device__ __forceinline__ float Exp2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// kLean (the default): the loop with fewer instructions per tile (issue 9: nsight compute's
// issued-instruction count over the old loop's warp-tiles gives ~522 per warp and tile; the new loop's SASS, counted by hand,
// has ~336 on the path without masking or rescaling; bench-ops put it 2.4 to 6.6 points of the
// bf16 GEMM rate above the old loop in the same calls, docs/benchmarks.md): two score buffers that
// swap roles by unrolling the tile loop by two (no register copy of S per tile), exponentials on
// the SFU alone (Exp2Ftz), and O rescaled only when a row's running maximum moved (a warp vote;
// at long contexts it rarely does). !kLean: the loop as first written, kept for the same-run
// comparison (bench-ops --mla-kernels tma_base).
template <bool kLean>
__global__ void __launch_bounds__(kThreads, 1)
    MlaFlashTmaKernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                      const __grid_constant__ CUtensorMap map_rope, const __grid_constant__ CUtensorMap map_vt,
                      const MlaFlashArgs a) {
#ifdef LATENTSERVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const uint32_t s_q = base, s_k = base + kQBytes, s_v = s_k + kKStages * kKBytes;
  const uint32_t bars = s_v + kVStages * kVBytes;  // q, k[2], v[3]: 8 bytes each
  const uint32_t bar_q = bars, bar_k = bars + 8, bar_v = bars + 8 * (1 + kKStages);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = warp / 4;
  const int head = static_cast<int>(blockIdx.y);
  const int64_t t0 = (int64_t{gridDim.x} - 1 - blockIdx.x) * kBlockQ;  // longest tiles first
  const int64_t last_query = min(t0 + kBlockQ, a.n) - 1;
  const int64_t key_end = min(a.keys, a.first_position + last_query + 1);
  const int tiles = static_cast<int>((key_end + kBlockK - 1) / kBlockK);

  auto load_keys = [&](int tile) {
    const uint32_t dst = s_k + (tile % kKStages) * kKBytes, bar = bar_k + 8 * (tile % kKStages);
    BarrierExpect(bar, kKBytes);
    const int key = tile * kBlockK;
    TmaLoad2d(dst, &map_k, head * kMlaNope, key, bar);
    TmaLoad2d(dst + kBlockK * 128, &map_k, head * kMlaNope + 64, key, bar);
    TmaLoad2d(dst + 2 * kBlockK * 128, &map_rope, static_cast<int>(a.rope_col), key, bar);
  };
  auto load_values = [&](int tile) {
    const uint32_t bar = bar_v + 8 * (tile % kVStages);
    BarrierExpect(bar, kVBytes);
    TmaLoad2d(s_v + (tile % kVStages) * kVBytes, &map_vt, tile * kBlockK, head * kMlaV, bar);
  };
  if (tid == 0) {
    for (int i = 0; i < 1 + kKStages + kVStages; ++i) BarrierInit(bars + 8 * i, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (tid == 0) {
    BarrierExpect(bar_q, kQBytes);
    for (int b = 0; b < kMlaQk / 64; ++b) {
      TmaLoad3d(s_q + b * (kBlockQ * 128), &map_q, b * 64, head, static_cast<int>(t0), bar_q);
    }
    load_keys(0);
    load_values(0);
    if (tiles > 1) load_keys(1);
  }
  auto issue_scores = [&](float (&s)[kBlockK / 2], const uint32_t (&q)[kMlaQk / 16][4], int tile) {
    const uint32_t keys = s_k + (tile % kKStages) * kKBytes;
    BarrierWait(bar_k + 8 * (tile % kKStages), (tile / kKStages) & 1);
    // Zeroed first so the compiler cannot give these accumulators the registers of a live copy
    // of them (it sees the asm read them; the tensor cores write them later, asynchronously).
#pragma unroll
    for (int i = 0; i < kBlockK / 2; ++i) s[i] = 0.0f;
    FenceOperands(s);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < kMlaQk / 16; ++kk) {
      WgmmaRS_N64(s, q[kk], Descriptor(keys + (kk / 4) * (kBlockK * 128) + (kk % 4) * 32), kk > 0 ? 1 : 0);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  };
  BarrierWait(bar_q, 0);
  uint32_t q[kMlaQk / 16][4];
  const int row_in_block = group * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
  for (int kk = 0; kk < kMlaQk / 16; ++kk) {
    const int r = group * 64 + (warp % 4) * 16 + (lane & 15), c = 2 * kk + (lane >> 4);
    LdMatrixX4(q[kk], s_q + (c / 8) * (kBlockQ * 128) + SwizzledOffset(r, c % 8));
  }

  float o[kMlaV / 2];
#pragma unroll
  for (int i = 0; i < kMlaV / 2; ++i) o[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int64_t row_position0 = a.first_position + t0 + row_in_block;
  float s[kBlockK / 2], s_next[kBlockK / 2];
  uint32_t p[kBlockK / 16][4] = {};
  issue_scores(s, q, 0);
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  FenceOperands(s);

  // One tile: S of `tile` is in `s` (complete); S of tile + 1 is issued into `s_next` before
  // the softmax and P V of this tile is left running into the next call.
  auto step = [&](float (&s)[kBlockK / 2], float (&s_next)[kBlockK / 2], int tile) {
    // Every warpgroup is past S of this tile and P V of tile - 2: their buffers are free.
    __syncthreads();
    if (tid == 0) {
      if (tile + 2 < tiles) load_keys(tile + 2);
      if (tile + 1 < tiles) load_values(tile + 1);
    }
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
    bool moved = false;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) m = fmaxf(m, fmaxf(s[j * 4 + 2 * half], s[j * 4 + 2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
      moved |= m != row_max[half];
      correction[half] = kLean ? Exp2Ftz(row_max[half] - m) : exp2f(row_max[half] - m);
      row_max[half] = m;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) {
        float& x0 = s[j * 4 + 2 * half];
        float& x1 = s[j * 4 + 2 * half + 1];
        x0 = kLean ? Exp2Ftz(x0 - m) : exp2f(x0 - m);
        x1 = kLean ? Exp2Ftz(x1 - m) : exp2f(x1 - m);
        sum += x0 + x1;
      }
      row_sum[half] = row_sum[half] * correction[half] + sum;
    }
    // P of the previous tile is an operand of the P V still running until the wait below: its
    // registers stay P's (p lives across tiles, fenced after the wait) so that nothing else is
    // given them meanwhile (ptxas would serialise the wgmmas, C7513).
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    FenceOperands(p);
    FenceOperands(o);
    FenceOperands(s_next);
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      p[kk][0] = PackHalf2(s[(2 * kk) * 4 + 0], s[(2 * kk) * 4 + 1]);
      p[kk][1] = PackHalf2(s[(2 * kk) * 4 + 2], s[(2 * kk) * 4 + 3]);
      p[kk][2] = PackHalf2(s[(2 * kk + 1) * 4 + 0], s[(2 * kk + 1) * 4 + 1]);
      p[kk][3] = PackHalf2(s[(2 * kk + 1) * 4 + 2], s[(2 * kk + 1) * 4 + 3]);
    }
    if (!kLean || __any_sync(0xffffffff, moved)) {
#pragma unroll
      for (int j = 0; j < kMlaV / 8; ++j) {
        o[j * 4 + 0] *= correction[0];
        o[j * 4 + 1] *= correction[0];
        o[j * 4 + 2] *= correction[1];
        o[j * 4 + 3] *= correction[1];
      }
    }
    FenceOperands(o);
    BarrierWait(bar_v + 8 * (tile % kVStages), (tile / kVStages) & 1);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    const uint32_t values = s_v + (tile % kVStages) * kVBytes;
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) WgmmaRS_N128(o, p[kk], Descriptor(values + kk * 32), 1);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");  // runs on into the next tile
  };
  if (kLean) {
    int tile = 0;
    for (; tile + 1 < tiles; tile += 2) {
      step(s, s_next, tile);
      step(s_next, s, tile + 1);
    }
    if (tile < tiles) step(s, s_next, tile);
  } else {
    for (int tile = 0; tile < tiles; ++tile) {
      step(s, s_next, tile);
#pragma unroll
      for (int i = 0; i < kBlockK / 2; ++i) s[i] = s_next[i];
    }
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


}  // namespace latentserve::kernels::cuda

namespace latentserve::kernels::cuda {

cudaError_t LaunchMlaFlashTma(const MlaFlashArgs& args, MlaFlashVariant variant, cudaStream_t stream) {
  CUtensorMap maps[4];
  cudaError_t e = EncodeMlaFlashMaps(args, kBlockQ, kBlockK, maps);
  if (e != cudaSuccess) return e;
  auto* kernel = variant == MlaFlashVariant::kLean ? MlaFlashTmaKernel<true> : MlaFlashTmaKernel<false>;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes));
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((args.n + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(args.heads));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(maps[0], maps[1], maps[2], maps[3], args);
  return cudaGetLastError();
}

}  // namespace latentserve::kernels::cuda
