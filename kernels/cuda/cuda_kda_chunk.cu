// KDA prefill in the chunked (WY) form on the GPU: the same function as the token recurrence
// in cuda_kda.cu and as kernels/cpu/kda.cc, computed 64 tokens at a time.
//
// Per head, a chunk of C tokens starting from state S0 ([key c][value j]), with
// G_t = sum_{s<=t} g_s per key channel (so every e^{G_t - G_j}, j <= t, is <= 1):
//   A_tj = k_t . (e^{G_t - G_j} * k_j)  (j < t),   B_tj = q_t . (e^{G_t - G_j} * k_j) / sqrt(Dk)  (j <= t)
//   (I + diag(beta) A) X = diag(beta) Y   solved by forward substitution for
//     W = X(Y = e^{G} * k)  and  U = X(Y = v)                              [C x Dk] each
//   U' = U - W S0                        (the chunk's true delta-rule updates u_t)
//   O  = (e^{G} * q / sqrt(Dk)) S0 + B U'
//   S1 = e^{G_last} * S0 + (e^{G_last - G} * k)^T U'
// Kernel 1 (prepare) is parallel over (chunk, head) and writes W, U, the decayed queries and
// keys, B and e^{G_last} to a workspace. Kernel 2 (state pass) walks the chunks of each
// sequence in order, one block per (head, 32 value columns), with the state slice in shared
// memory. Both are f32 FFMA (no tensor cores yet), so they agree with the CPU to f32 rounding.
// The pair factors e^{G_t - G_j} are taken one exponent per (pair, channel): no reference
// point can overflow, whatever the gates.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"

namespace latentserve::kernels::cuda {
namespace {

struct KdaChunkTraits {
  static constexpr int kDk = 128;         // key = value head dimension this path is built for
  static constexpr int kChunk = 64;       // tokens per chunk
  static constexpr int kThreads = 256;    // both kernels
  static constexpr int kColumns = 32;     // value columns per state-pass block
  static constexpr int kColumnBlocks = kDk / kColumns;
  static constexpr int kRowStride = kDk + 1;  // token-major [C][Dk] tiles in kernel 1: column walks hit distinct banks
  static constexpr int kAStride = kChunk + 4;  // A rows, read as float4 by the solve
  static constexpr int kBStride = kChunk + 1;  // B rows, read down columns when transposed
  static constexpr int kStateStride = kColumns + 4;  // state slice rows [Dk][kColumns], float4 aligned
  // Workspace per (chunk, head), in floats. The first four parts are copied to shared memory
  // in this order as one block by the state pass.
  static constexpr int kWt = 0;                        // [Dk][C]  W^T
  static constexpr int kQgt = kWt + kDk * kChunk;      // [Dk][C]  (e^{G} * q / sqrt(Dk))^T
  static constexpr int kKl = kQgt + kDk * kChunk;      // [C][Dk]  e^{G_last - G} * k
  static constexpr int kBt = kKl + kChunk * kDk;       // [C][C]   B^T (zero above the diagonal of B)
  static constexpr int kU = kBt + kChunk * kChunk;     // [C][Dk]  U
  static constexpr int kGl = kU + kChunk * kDk;        // [Dk]     e^{G_last}
  static constexpr int kFloats = kGl + kDk;
  static constexpr size_t kPrepareSmem =
      (3 * kChunk * kRowStride + kChunk * kAStride + kChunk * kBStride + kChunk) * sizeof(float);
  static constexpr size_t kStateSmem =
      (kDk * kStateStride + kBt + kChunk * kChunk + kChunk * kColumns + kDk) * sizeof(float);
  // Workspace budget per pass: longer batches run in several passes, the state carried
  // through the sequences' state tensors.
  static constexpr size_t kPassBytes = size_t{1} << 30;
};
using Traits = KdaChunkTraits;

struct KdaChunk {
  int64_t first_token;  // batch column of the chunk's first token
  int32_t tokens;       // 1..kChunk
  int32_t unused;
};
struct KdaRun {  // one sequence's consecutive chunks within a pass
  int32_t first_chunk;  // index into the pass's chunks
  int32_t chunks;
  float* state;  // [Dk (key), Dk (value), H]
};

constexpr float kLog2e = 1.4426950408889634f;

// Kernel 1: one block per (chunk, head).
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkPrepareKernel(const float* q, const float* k,
                                                                         const float* v, const float* g,
                                                                         const float* beta, const KdaChunk* chunks,
                                                                         int64_t heads, float scale, float* work) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, RS = Traits::kRowStride;
  extern __shared__ float4 prepare_smem[];
  float* gs = reinterpret_cast<float*>(prepare_smem);  // [C][RS] cumulative decay, log2 units
  float* ks = gs + C * RS;                             // [C][RS]
  float* qs = ks + C * RS;                             // [C][RS]
  float* as = qs + C * RS;                             // [C][kAStride] A, strictly lower part valid
  float* bs = as + C * Traits::kAStride;               // [C][kBStride] B, lower part valid
  float* betas = bs + C * Traits::kBStride;            // [C]
  const KdaChunk chunk = chunks[blockIdx.x];
  const int64_t h = blockIdx.y;
  const int tid = threadIdx.x;
  float* ws = work + (static_cast<int64_t>(blockIdx.x) * heads + h) * Traits::kFloats;
  const int64_t row0 = (chunk.first_token * heads + h) * Dk;  // token t of this head at row0 + t * heads * Dk
  const int64_t token_stride = heads * Dk;

  // Tokens past the chunk's end are zero (g = 0 keeps G flat), so they add nothing anywhere.
  for (int i = tid; i < C * Dk; i += Traits::kThreads) {
    const int t = i / Dk, c = i % Dk;
    const bool real = t < chunk.tokens;
    const int64_t at = row0 + t * token_stride + c;
    ks[t * RS + c] = real ? k[at] : 0.0f;
    qs[t * RS + c] = real ? q[at] : 0.0f;
    gs[t * RS + c] = real ? g[at] * kLog2e : 0.0f;
  }
  if (tid < C) betas[tid] = tid < chunk.tokens ? beta[(chunk.first_token + tid) * heads + h] : 0.0f;
  __syncthreads();
  if (tid < Dk) {
    float run = 0;
    for (int t = 0; t < C; ++t) {
      run += gs[t * RS + tid];
      gs[t * RS + tid] = run;
    }
  }
  __syncthreads();

  constexpr int kPairTiles = (C / 4) * (C / 4 + 1) / 2;  // 4x4 tiles on or below the diagonal
  if (tid < kPairTiles) {
    // A and B, one 4x4 tile of (t, j) pairs per thread, one exponent per pair and channel.
    int ti = 0, tj = tid;
    while (tj > ti) {
      tj -= ti + 1;
      ++ti;
    }
    float acc_a[4][4] = {}, acc_b[4][4] = {};
    for (int c = 0; c < Dk; ++c) {
      float gt[4], kt[4], qt[4], gj[4], kj[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        gt[r] = gs[(4 * ti + r) * RS + c];
        kt[r] = ks[(4 * ti + r) * RS + c];
        qt[r] = qs[(4 * ti + r) * RS + c];
        gj[r] = gs[(4 * tj + r) * RS + c];
        kj[r] = ks[(4 * tj + r) * RS + c];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          // Pairs above the diagonal (only in diagonal tiles) are dropped: exponent -inf.
          const float exponent = 4 * tj + s <= 4 * ti + r ? gt[r] - gj[s] : -INFINITY;
          const float decayed = exp2f(exponent) * kj[s];
          acc_a[r][s] = fmaf(kt[r], decayed, acc_a[r][s]);
          acc_b[r][s] = fmaf(qt[r], decayed, acc_b[r][s]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int t = 4 * ti + r, j = 4 * tj + s;
        as[t * Traits::kAStride + j] = acc_a[r][s];
        bs[t * Traits::kBStride + j] = acc_b[r][s] * scale;
      }
    }
  } else {
    // The other warps write the decayed queries and keys the state pass needs.
    const int helper = tid - 160, helpers = Traits::kThreads - 160;
    if (helper >= 0) {
      const int last = chunk.tokens - 1;
      for (int i = helper; i < Dk * C; i += helpers) {
        const int c = i / C, t = i % C;
        ws[Traits::kQgt + i] = exp2f(gs[t * RS + c]) * qs[t * RS + c] * scale;
      }
      for (int i = helper; i < C * Dk; i += helpers) {
        const int t = i / Dk, c = i % Dk;
        ws[Traits::kKl + i] = exp2f(gs[last * RS + c] - gs[t * RS + c]) * ks[t * RS + c];
      }
      for (int c = helper; c < Dk; c += helpers) ws[Traits::kGl + c] = exp2f(gs[last * RS + c]);
    }
  }
  __syncthreads();

  // B^T, zero above B's diagonal.
  for (int i = tid; i < C * C; i += Traits::kThreads) {
    const int s = i / C, t = i % C;
    ws[Traits::kBt + i] = s <= t ? bs[t * Traits::kBStride + s] : 0.0f;
  }
  // Forward substitution, one column of [e^G * k | v] per thread: columns are independent.
  const int col = tid;
  const bool key_side = col < Dk;
  float x[C];
#pragma unroll
  for (int t = 0; t < C; ++t) {
    float y;
    if (key_side) {
      y = exp2f(gs[t * RS + col]) * ks[t * RS + col];
    } else {
      y = t < chunk.tokens ? v[row0 + t * token_stride + (col - Dk)] : 0.0f;
    }
    const float* a_row = as + t * Traits::kAStride;
#pragma unroll
    for (int j4 = 0; j4 < t; j4 += 4) {
      const float4 a4 = *reinterpret_cast<const float4*>(a_row + j4);
      y = fmaf(-a4.x, x[j4], y);
      if (j4 + 1 < t) y = fmaf(-a4.y, x[j4 + 1], y);
      if (j4 + 2 < t) y = fmaf(-a4.z, x[j4 + 2], y);
      if (j4 + 3 < t) y = fmaf(-a4.w, x[j4 + 3], y);
    }
    x[t] = betas[t] * y;
    if (!key_side) ws[Traits::kU + t * Dk + (col - Dk)] = x[t];
  }
  if (key_side) {
    float4* w_row = reinterpret_cast<float4*>(ws + Traits::kWt + col * C);
#pragma unroll
    for (int t = 0; t < C; t += 4) w_row[t / 4] = make_float4(x[t], x[t + 1], x[t + 2], x[t + 3]);
  }
}

__device__ __forceinline__ void CopyAsync16(void* smem, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
}
__device__ __forceinline__ void CopyAsyncWaitAll() {
  asm volatile("cp.async.commit_group;\n" ::);
  asm volatile("cp.async.wait_group 0;\n" ::);
}

// Kernel 2: one block per (head, kColumns value columns, run); walks the run's chunks in order.
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkStateKernel(const KdaChunk* chunks, const KdaRun* runs,
                                                                       const float* work, int64_t heads, float* out) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, J = Traits::kColumns, SS = Traits::kStateStride;
  extern __shared__ float4 state_smem[];
  float* ss = reinterpret_cast<float*>(state_smem);  // [Dk][SS] state slice S[c][j]
  float* parts = ss + Dk * SS;                        // W^T, Qg^T, Kl, B^T: the workspace's layout
  float* wt = parts + Traits::kWt;
  float* qgt = parts + Traits::kQgt;
  float* kl = parts + Traits::kKl;
  float* bt = parts + Traits::kBt;
  float* us = parts + Traits::kU;  // [C][J] U's columns of this block, then U' in place
  float* gl = us + C * J;          // [Dk]
  const KdaRun run = runs[blockIdx.y];
  const int64_t h = blockIdx.x / Traits::kColumnBlocks;
  const int column0 = (blockIdx.x % Traits::kColumnBlocks) * J;
  const int tid = threadIdx.x;
  float* state = run.state + h * Dk * Dk + static_cast<int64_t>(column0) * Dk;  // S[v][k], v = column0 + j
  for (int i = tid; i < J * Dk; i += Traits::kThreads) {
    const int j = i / Dk, c = i % Dk;
    ss[c * SS + j] = state[j * Dk + c];
  }
  // Products W S and Qg S: rows 2 * rg, 2 * rg + 1 and columns 4 * cg.. of the [C][J] results;
  // the state update: keys 4 * rg.. and the same columns.
  const int rg = tid / 8, cg = tid % 8;
  for (int chunk_index = 0; chunk_index < run.chunks; ++chunk_index) {
    const KdaChunk chunk = chunks[run.first_chunk + chunk_index];
    const float* ws = work + (static_cast<int64_t>(run.first_chunk + chunk_index) * heads + h) * Traits::kFloats;
    __syncthreads();  // the previous chunk is done with every buffer
    for (int i = tid; i < Traits::kU / 4; i += Traits::kThreads) CopyAsync16(parts + 4 * i, ws + 4 * i);
    for (int i = tid; i < C * J / 4; i += Traits::kThreads) {
      const int t = i / (J / 4), j4 = (i % (J / 4)) * 4;
      CopyAsync16(us + t * J + j4, ws + Traits::kU + t * Dk + column0 + j4);
    }
    for (int i = tid; i < Dk / 4; i += Traits::kThreads) CopyAsync16(gl + 4 * i, ws + Traits::kGl + 4 * i);
    CopyAsyncWaitAll();
    __syncthreads();

    float p[2][4] = {}, o[2][4] = {};
    for (int c = 0; c < Dk; ++c) {
      const float2 w2 = *reinterpret_cast<const float2*>(wt + c * C + 2 * rg);
      const float2 q2 = *reinterpret_cast<const float2*>(qgt + c * C + 2 * rg);
      const float4 s4 = *reinterpret_cast<const float4*>(ss + c * SS + 4 * cg);
      const float s[4] = {s4.x, s4.y, s4.z, s4.w};
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        p[0][jj] = fmaf(w2.x, s[jj], p[0][jj]);
        p[1][jj] = fmaf(w2.y, s[jj], p[1][jj]);
        o[0][jj] = fmaf(q2.x, s[jj], o[0][jj]);
        o[1][jj] = fmaf(q2.y, s[jj], o[1][jj]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float4* u4 = reinterpret_cast<float4*>(us + (2 * rg + r) * J + 4 * cg);
      const float4 u = *u4;
      *u4 = make_float4(u.x - p[r][0], u.y - p[r][1], u.z - p[r][2], u.w - p[r][3]);
    }
    __syncthreads();  // U' complete; every read of the old state done

    // O = Qg S0 + B U' (B is zero above its diagonal, so s stops at the thread's last row).
    for (int s = 0; s <= 2 * rg + 1; ++s) {
      const float2 b2 = *reinterpret_cast<const float2*>(bt + s * C + 2 * rg);
      const float4 u4 = *reinterpret_cast<const float4*>(us + s * J + 4 * cg);
      const float u[4] = {u4.x, u4.y, u4.z, u4.w};
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        o[0][jj] = fmaf(b2.x, u[jj], o[0][jj]);
        o[1][jj] = fmaf(b2.y, u[jj], o[1][jj]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int t = 2 * rg + r;
      if (t < chunk.tokens) {
        float* dst = out + ((chunk.first_token + t) * heads + h) * Dk + column0 + 4 * cg;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) dst[jj] = o[r][jj];
      }
    }

    // S1 = e^{G_last} * S0 + Kl^T U' on this thread's 4 keys x 4 columns.
    float acc[4][4] = {};
    for (int t = 0; t < C; ++t) {
      const float4 k4 = *reinterpret_cast<const float4*>(kl + t * Dk + 4 * rg);
      const float4 u4 = *reinterpret_cast<const float4*>(us + t * J + 4 * cg);
      const float kk[4] = {k4.x, k4.y, k4.z, k4.w}, u[4] = {u4.x, u4.y, u4.z, u4.w};
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(kk[a], u[b], acc[a][b]);
      }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int c = 4 * rg + a;
      float4* s4 = reinterpret_cast<float4*>(ss + c * SS + 4 * cg);
      const float4 s = *s4;
      const float decay = gl[c];
      *s4 = make_float4(fmaf(decay, s.x, acc[a][0]), fmaf(decay, s.y, acc[a][1]), fmaf(decay, s.z, acc[a][2]),
                        fmaf(decay, s.w, acc[a][3]));
    }
  }
  __syncthreads();
  for (int i = tid; i < J * Dk; i += Traits::kThreads) {
    const int j = i / Dk, c = i % Dk;
    state[j * Dk + c] = ss[c * SS + j];
  }
}

static_assert(Traits::kThreads == (Traits::kDk / 4) * (Traits::kColumns / 4), "state update: one 4x4 tile per thread");
static_assert(Traits::kThreads == (Traits::kChunk / 2) * (Traits::kColumns / 4), "products: one 2x4 tile per thread");
static_assert(Traits::kThreads == 2 * Traits::kDk, "solve: one column of [e^G k | v] per thread");
static_assert((Traits::kChunk / 4) * (Traits::kChunk / 4 + 1) / 2 <= 160, "pair tiles fit the first five warps");

}  // namespace

bool CudaBackend::KdaChunkedAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      const Tensor& beta, absl::Span<const SeqSlice> seqs,
                                      absl::Span<const KdaStateView> states, const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  if (dk != Traits::kDk) return false;
  // Chunks of every sequence, split into passes whose workspace fits the budget.
  const size_t chunk_bytes = static_cast<size_t>(heads) * Traits::kFloats * sizeof(float);
  const int64_t pass_chunks = std::max<int64_t>(1, static_cast<int64_t>(Traits::kPassBytes / chunk_bytes));
  struct Pass {
    std::vector<KdaChunk> chunks;
    std::vector<KdaRun> runs;
  };
  std::vector<Pass> passes(1);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t t0 = 0; t0 < seqs[s].token_count; t0 += Traits::kChunk) {
      if (static_cast<int64_t>(passes.back().chunks.size()) == pass_chunks) passes.emplace_back();
      Pass& pass = passes.back();
      if (t0 == 0 || pass.chunks.empty()) {
        pass.runs.push_back({static_cast<int32_t>(pass.chunks.size()), 0, DevF32(states[s].recurrent)});
      }
      const int64_t tokens = std::min<int64_t>(Traits::kChunk, seqs[s].token_count - t0);
      pass.chunks.push_back({seqs[s].first_token + t0, static_cast<int32_t>(tokens), 0});
      ++pass.runs.back().chunks;
    }
  }
  if (passes.front().chunks.empty()) return true;
  // One upload for every pass: chunks then runs, pass after pass.
  std::vector<uint8_t> host;
  std::vector<size_t> chunk_at, run_at;
  for (const Pass& pass : passes) {
    chunk_at.push_back(host.size());
    host.resize(host.size() + pass.chunks.size() * sizeof(KdaChunk));
    std::memcpy(host.data() + chunk_at.back(), pass.chunks.data(), pass.chunks.size() * sizeof(KdaChunk));
    run_at.push_back(host.size());
    host.resize(host.size() + pass.runs.size() * sizeof(KdaRun));
    std::memcpy(host.data() + run_at.back(), pass.runs.data(), pass.runs.size() * sizeof(KdaRun));
  }
  auto* device = static_cast<uint8_t*>(UploadScratch(3, host.data(), host.size()));
  size_t most_chunks = 0;
  for (const Pass& pass : passes) most_chunks = std::max(most_chunks, pass.chunks.size());
  auto* work = static_cast<float*>(Scratch(kKdaWorkspaceSlot, most_chunks * chunk_bytes));

  static bool configured = false;
  if (!configured) {
    CUDA_OK(cudaFuncSetAttribute(KdaChunkPrepareKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Traits::kPrepareSmem)));
    CUDA_OK(cudaFuncSetAttribute(KdaChunkStateKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Traits::kStateSmem)));
    configured = true;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (size_t i = 0; i < passes.size(); ++i) {
    const auto* chunks = reinterpret_cast<const KdaChunk*>(device + chunk_at[i]);
    const auto* runs = reinterpret_cast<const KdaRun*>(device + run_at[i]);
    const dim3 prepare_grid(static_cast<unsigned>(passes[i].chunks.size()), static_cast<unsigned>(heads));
    KdaChunkPrepareKernel<<<prepare_grid, Traits::kThreads, Traits::kPrepareSmem, stream_>>>(
        DevF32(q), DevF32(k), DevF32(v), DevF32(g), DevF32(beta), chunks, heads, scale, work);
    LAUNCH_OK();
    const dim3 state_grid(static_cast<unsigned>(heads * Traits::kColumnBlocks), static_cast<unsigned>(passes[i].runs.size()));
    KdaChunkStateKernel<<<state_grid, Traits::kThreads, Traits::kStateSmem, stream_>>>(chunks, runs, work, heads,
                                                                                      DevF32(out));
    LAUNCH_OK();
  }
  return true;
}

}  // namespace latentserve::kernels::cuda
