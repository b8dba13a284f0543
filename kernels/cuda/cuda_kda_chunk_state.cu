// The state pass of the chunked KDA prefill (see cuda_kda_chunk.cu for the whole method).
#include "kernels/cuda/kda_chunk.cuh"

namespace latentserve::kernels::cuda::kda_chunk {
namespace {

// Kernel 2: one block per (head, kColumns value columns, run); walks the run's chunks in order.
// Warp w keeps state rows (keys) 16 w.. 16 w + 15 of the slice in registers as mma
// accumulators; shared memory holds a copy for the products that read the whole state.
// Chunk i + 1's tiles load (cp.async) into the other stage while chunk i computes.
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkStateKernel(const KdaChunk* chunks, const KdaRun* runs,
                                                                       const uint8_t* work, int64_t heads, float* out) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, J = Traits::kColumns, CS = Traits::kColRow;
  constexpr int RH = Traits::kRowH, PH = Traits::kPairRowH, UH = Traits::kColRowH;
  extern __shared__ float4 state_smem[];
  float* ss = reinterpret_cast<float*>(state_smem);  // [Dk][CS] state slice S[c][j]
  float* us = ss + Dk * CS;                           // [C][CS] U' of the current chunk
  uint8_t* stages = reinterpret_cast<uint8_t*>(us + C * CS);
  const KdaRun run = runs[blockIdx.y];
  const int64_t h = blockIdx.x / Traits::kColumnBlocks;
  const int column0 = (blockIdx.x % Traits::kColumnBlocks) * J;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int fg = lane / 4, fi = lane % 4;  // fragment row group and index
  float* state = run.state + h * Dk * Dk + static_cast<int64_t>(column0) * Dk;  // S[v][k], v = column0 + j
  auto load_stage = [&](int index) {
    const uint8_t* src = work + (static_cast<int64_t>(run.first_chunk + index) * heads + h) * Traits::kBytes;
    uint8_t* stage = stages + (index % 2) * Traits::kStageBytes;
    CopyRowsAsync(stage + Traits::kStageW, RH * 2, src + Traits::kW * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageQg, RH * 2, src + Traits::kQg * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageKl, RH * 2, src + Traits::kKl * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageB, PH * 2, src + Traits::kB * 2, C * 2, C, C * 2, tid);
    CopyRowsAsync(stage + Traits::kStageU, UH * 2, src + (Traits::kU + column0) * 2, Dk * 2, C, J * 2, tid);
    CopyRowsAsync(stage + Traits::kStageGl, Dk * 4, src + Traits::kGlByte, Dk * 4, 1, Dk * 4, tid);
    CopyAsyncCommit();
  };
  load_stage(0);

  // The state slice: warp w's rows as accumulators (4 column tiles of 8), and in ss.
  float s_acc[4][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 16 * warp + fg + (e >= 2 ? 8 : 0), j = 8 * nt + 2 * fi + (e & 1);
      s_acc[nt][e] = state[j * Dk + c];
      ss[c * CS + j] = s_acc[nt][e];
    }
  }

  // Products W S and Qg S: warp w takes row tile w % 4 and column tiles 2 (w / 4), +1.
  const int pm = warp % 4, pn = 2 * (warp / 4);
  for (int index = 0; index < run.chunks; ++index) {
    const KdaChunk chunk = chunks[run.first_chunk + index];
    const uint8_t* stage = stages + (index % 2) * Traits::kStageBytes;
    const __half* wm = reinterpret_cast<const __half*>(stage + Traits::kStageW);
    const __half* qg = reinterpret_cast<const __half*>(stage + Traits::kStageQg);
    const __half* kl = reinterpret_cast<const __half*>(stage + Traits::kStageKl);
    const __half* bm = reinterpret_cast<const __half*>(stage + Traits::kStageB);
    const __half* um = reinterpret_cast<const __half*>(stage + Traits::kStageU);
    const float* gl = reinterpret_cast<const float*>(stage + Traits::kStageGl);
    CopyAsyncWaitAll();
    __syncthreads();  // this chunk's stage and the state copy are visible; the other stage is free
    if (index + 1 < run.chunks) load_stage(index + 1);

    float p[2][4] = {}, o[2][4] = {};
#pragma unroll 4
    for (int k0 = 0; k0 < Dk; k0 += 8) {
      const FragA fw = LoadA(wm, RH, 16 * pm, k0, lane);
      const FragA fq = LoadA(qg, RH, 16 * pm, k0, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const FragB fs = LoadB(ss, CS, k0, 8 * (pn + n), lane);
        MmaTf32(p[n], fw, fs);
        MmaTf32(o[n], fq, fs);
      }
    }
    // U' = U - W S.
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = 16 * pm + fg + (e >= 2 ? 8 : 0), j = 8 * (pn + n) + 2 * fi + (e & 1);
        us[r * CS + j] = __half2float(um[r * UH + j]) - p[n][e];
      }
    }
    __syncthreads();  // U' complete; the state copy is no longer read

    // O = Qg S0 + B U': B is zero above its diagonal, so k stops after the row tile.
    for (int k0 = 0; k0 < 16 * (pm + 1); k0 += 8) {
      const FragA fb = LoadA(bm, PH, 16 * pm, k0, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) MmaTf32(o[n], fb, LoadB(us, CS, k0, 8 * (pn + n), lane));
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int j = column0 + 8 * (pn + n) + 2 * fi;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = 16 * pm + fg + 8 * half;
        if (t < chunk.tokens) {
          float* dst = out + ((chunk.first_token + t) * heads + h) * Dk + j;
          dst[0] = o[n][2 * half];
          dst[1] = o[n][2 * half + 1];
        }
      }
    }

    // S1 = e^{G_last} S0 + Kl^T U' on this warp's 16 keys.
    const float decay_lo = gl[16 * warp + fg], decay_hi = gl[16 * warp + fg + 8];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s_acc[nt][0] *= decay_lo;
      s_acc[nt][1] *= decay_lo;
      s_acc[nt][2] *= decay_hi;
      s_acc[nt][3] *= decay_hi;
    }
#pragma unroll
    for (int k0 = 0; k0 < C; k0 += 8) {
      const FragA fk = LoadAT(kl, RH, 16 * warp, k0, lane);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) MmaTf32(s_acc[nt], fk, LoadB(us, CS, k0, 8 * nt, lane));
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int c = 16 * warp + fg, j = 8 * nt + 2 * fi;
      ss[c * CS + j] = s_acc[nt][0];
      ss[c * CS + j + 1] = s_acc[nt][1];
      ss[(c + 8) * CS + j] = s_acc[nt][2];
      ss[(c + 8) * CS + j + 1] = s_acc[nt][3];
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 16 * warp + fg + (e >= 2 ? 8 : 0), j = 8 * nt + 2 * fi + (e & 1);
      state[j * Dk + c] = s_acc[nt][e];
    }
  }
}

}  // namespace

cudaError_t LaunchState(dim3 grid, cudaStream_t stream, const KdaChunk* chunks, const KdaRun* runs,
                        const uint8_t* work, int64_t heads, float* out) {
  const cudaError_t e = cudaFuncSetAttribute(KdaChunkStateKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Traits::kStateSmem));
  if (e != cudaSuccess) return e;
  KdaChunkStateKernel<<<grid, Traits::kThreads, Traits::kStateSmem, stream>>>(chunks, runs, work, heads, out);
  return cudaGetLastError();
}

}  // namespace latentserve::kernels::cuda::kda_chunk
