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
// Kernel 1 (prepare, here) is parallel over (chunk, head) and writes W, U, the decayed queries and
// keys, B (f16) and e^{G_last} (f32) to a workspace. Kernel 2 (state pass, cuda_kda_chunk_state.cu) walks the chunks
// of each sequence in order, one block per (head, 32 value columns), the state slice in
// registers and shared memory, the next chunk's tiles loading while the current one computes.
// Both move more bytes than they compute on (an 8192-token layer of 32 heads reads 0.5 GB of
// q, k, v, g and passes 0.3 GB of workspace), hence the f16 workspace.
//
// Products run on the tensor cores as mma.sync m16n8k8 TF32 (operands rounded to 10-bit
// mantissas, f32 accumulation); the state, the gates' sums and the forward substitution stay
// f32. A and B factorise per 16-row sub-chunk relative to its first row r, as
// (k_t e^{G_t - G_r}) . (k_j e^{G_r - G_j}): both factors are <= 1 for earlier sub-chunks, and
// within the sub-chunk bounded by its decay; a channel decaying past 2^-100 inside a
// sub-chunk (gates below about -4.6 per token: e^-69 over 15 steps) takes e^{G_t - G_j}
// there one exponent per pair, so no gate can overflow anything.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kda_chunk.cuh"

namespace latentserve::kernels::cuda {
namespace kda_chunk {
namespace {

// Kernel 1: one block per (chunk, head).
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkPrepareKernel(const float* q, const float* k,
                                                                         const float* v, const float* g,
                                                                         const float* beta, const KdaChunk* chunks,
                                                                         int64_t heads, float scale, uint8_t* work) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, RS = Traits::kRow, PS = Traits::kPairRow;
  constexpr int L = Traits::kSubChunk, kSubChunks = C / L, kMaskWords = Dk / 32;
  extern __shared__ float4 prepare_smem[];
  float* gs = reinterpret_cast<float*>(prepare_smem);  // [C][RS] G, log2 units
  float* ks = gs + C * RS;      // [C][RS] k
  float* qs = ks + C * RS;      // [C][RS] q
  float* vs = qs + C * RS;      // [C][RS] v
  float* as = vs + C * RS;      // [C][PS] A, strictly lower part valid
  float* bs = as + C * PS;      // [C][PS] B, lower part valid
  float* betas = bs + C * PS;   // [C]
  int* deep = reinterpret_cast<int*>(betas + C);  // [kSubChunks][Dk] deep channels of each sub-chunk
  unsigned* deep_masks = reinterpret_cast<unsigned*>(deep + kSubChunks * Dk);  // [kSubChunks][kMaskWords]
  const KdaChunk chunk = chunks[blockIdx.x];
  const int64_t h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int fg = lane / 4, fi = lane % 4;  // fragment row group and index
  uint8_t* chunk_work = work + (static_cast<int64_t>(blockIdx.x) * heads + h) * Traits::kBytes;
  __half* ws = reinterpret_cast<__half*>(chunk_work);
  const int64_t row0 = (chunk.first_token * heads + h) * Dk;  // token t of this head at row0 + t * heads * Dk
  const int64_t token_stride = heads * Dk;

  // Tokens past the chunk's end are zero (g = 0 keeps G flat), so they add nothing anywhere.
  for (int i = tid; i < C * Dk / 4; i += Traits::kThreads) {
    const int t = i / (Dk / 4), c = (i % (Dk / 4)) * 4;
    const bool real = t < chunk.tokens;
    const int64_t at = real ? row0 + t * token_stride + c : row0;
    CopyAsync16OrZero(ks + t * RS + c, k + at, real);
    CopyAsync16OrZero(qs + t * RS + c, q + at, real);
    CopyAsync16OrZero(gs + t * RS + c, g + at, real);
    CopyAsync16OrZero(vs + t * RS + c, v + at, real);
  }
  CopyAsyncCommit();
  if (tid < C) betas[tid] = tid < chunk.tokens ? beta[(chunk.first_token + tid) * heads + h] : 0.0f;
  CopyAsyncWaitAll();
  __syncthreads();

  // One thread per channel: the cumulative gate, and whether each sub-chunk decays too far
  // for its factorised products (then its pairs take one exponent each, below).
  bool deep_in[kSubChunks] = {};
  if (tid < Dk) {
    float run = 0;
    for (int t = 0; t < C; ++t) {
      run += gs[t * RS + tid] * kLog2e;
      gs[t * RS + tid] = run;
    }
#pragma unroll
    for (int s = 0; s < kSubChunks; ++s) {
      deep_in[s] = gs[s * L * RS + tid] - gs[(s * L + L - 1) * RS + tid] > Traits::kFactorisedLog2;
    }
  }
#pragma unroll
  for (int s = 0; s < kSubChunks; ++s) {
    const unsigned ballot = __ballot_sync(0xffffffffu, deep_in[s]);
    if (tid < Dk && lane == 0) deep_masks[s * kMaskWords + warp] = ballot;
  }
  __syncthreads();
  unsigned any_deep = 0;
  for (int w = 0; w < kSubChunks * kMaskWords; ++w) any_deep |= deep_masks[w];
#pragma unroll
  for (int s = 0; s < kSubChunks; ++s) {
    if (tid < Dk && deep_in[s]) {
      int before = __popc(deep_masks[s * kMaskWords + warp] & ((1u << lane) - 1));
      for (int w = 0; w < warp; ++w) before += __popc(deep_masks[s * kMaskWords + w]);
      deep[s * Dk + before] = tid;
    }
  }

  // A and B on the tensor cores, only the 16x8 tiles that touch the lower triangle; warp w
  // takes rows 16 (w / 2).. (sub-chunk m) and every other column tile. Relative to the
  // sub-chunk's first row r: A_tj = sum_c (k_t e^{G_t - G_r}) (k_j e^{G_r - G_j}); the row
  // factor is <= 1, and so is the column factor for earlier sub-chunks (j < r). Within the
  // sub-chunk (j >= r) the column factor is <= 2^kFactorisedLog2 except on deep channels,
  // which are left out here.
  {
    const int m = warp / 2, first_nt = warp % 2, tiles = m + 1;  // column tiles first_nt, +2, .. <= 2 m + 1
    const int r = m * L;
    const unsigned* sub_deep = deep_masks + m * kMaskWords;
    float acc_a[4][4] = {}, acc_b[4][4] = {};
#pragma unroll 2
    for (int k0 = 0; k0 < Dk; k0 += 8) {
      const int c_lo = k0 + fi, c_hi = c_lo + 4;
      const float ref_lo = gs[r * RS + c_lo], ref_hi = gs[r * RS + c_hi];
      const int t_lo = r + fg, t_hi = t_lo + 8;
      const float f00 = exp2f(gs[t_lo * RS + c_lo] - ref_lo), f10 = exp2f(gs[t_hi * RS + c_lo] - ref_lo);
      const float f01 = exp2f(gs[t_lo * RS + c_hi] - ref_hi), f11 = exp2f(gs[t_hi * RS + c_hi] - ref_hi);
      const FragA fk = {{ToTf32(ks[t_lo * RS + c_lo] * f00), ToTf32(ks[t_hi * RS + c_lo] * f10),
                         ToTf32(ks[t_lo * RS + c_hi] * f01), ToTf32(ks[t_hi * RS + c_hi] * f11)}};
      const FragA fq = {{ToTf32(qs[t_lo * RS + c_lo] * f00), ToTf32(qs[t_hi * RS + c_lo] * f10),
                         ToTf32(qs[t_lo * RS + c_hi] * f01), ToTf32(qs[t_hi * RS + c_hi] * f11)}};
      const bool deep_lo = (sub_deep[c_lo / 32] >> (c_lo % 32)) & 1u, deep_hi = (sub_deep[c_hi / 32] >> (c_hi % 32)) & 1u;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (i < tiles) {
          const int nt = first_nt + 2 * i, j = 8 * nt + fg;
          const bool diagonal = j >= r;
          const float b_lo = diagonal && deep_lo ? 0.0f : ks[j * RS + c_lo] * exp2f(ref_lo - gs[j * RS + c_lo]);
          const float b_hi = diagonal && deep_hi ? 0.0f : ks[j * RS + c_hi] * exp2f(ref_hi - gs[j * RS + c_hi]);
          const FragB fb = {{ToTf32(b_lo), ToTf32(b_hi)}};
          MmaTf32(acc_a[i], fk, fb);
          MmaTf32(acc_b[i], fq, fb);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (i < tiles) {
        const int row = r + fg, col = 8 * (first_nt + 2 * i) + 2 * fi;
        as[row * PS + col] = acc_a[i][0];
        as[row * PS + col + 1] = acc_a[i][1];
        as[(row + 8) * PS + col] = acc_a[i][2];
        as[(row + 8) * PS + col + 1] = acc_a[i][3];
        bs[row * PS + col] = acc_b[i][0] * scale;
        bs[row * PS + col + 1] = acc_b[i][1] * scale;
        bs[(row + 8) * PS + col] = acc_b[i][2] * scale;
        bs[(row + 8) * PS + col + 1] = acc_b[i][3] * scale;
      }
    }
  }
  __syncthreads();

  // Deep channels of a sub-chunk (gates below about -4.6 per token): its own pairs, one
  // exponent per pair and channel. Threads: 64 per sub-chunk, a row and 4 columns each.
  if (any_deep != 0) {
    const int s = tid / 64, t = s * L + (tid % 64) / 4, j0 = s * L + 4 * (tid % 4);
    int deep_count = 0;
    for (int w = 0; w < kMaskWords; ++w) deep_count += __popc(deep_masks[s * kMaskWords + w]);
    float sum_a[4] = {}, sum_b[4] = {};
    for (int d = 0; d < deep_count; ++d) {
      const int c = deep[s * Dk + d];
      const float gt = gs[t * RS + c], kt = ks[t * RS + c], qt = qs[t * RS + c];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = j0 + e;
        const float decayed = exp2f(j <= t ? gt - gs[j * RS + c] : -INFINITY) * ks[j * RS + c];
        sum_a[e] = fmaf(kt, decayed, sum_a[e]);
        sum_b[e] = fmaf(qt, decayed, sum_b[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      as[t * PS + j0 + e] += sum_a[e];
      bs[t * PS + j0 + e] += sum_b[e] * scale;
    }
    __syncthreads();
  }

  // Workspace: B (masked), decayed queries and keys, e^{G_last} (every exponent <= 0).
  for (int i = tid; i < C * C; i += Traits::kThreads) {
    const int t = i / C, s = i % C;
    ws[Traits::kB + i] = __float2half_rn(s <= t ? bs[t * PS + s] : 0.0f);
  }
  const float* glast = gs + (C - 1) * RS;  // flat past the chunk's end
  for (int i = tid; i < C * Dk; i += Traits::kThreads) {
    const int t = i / Dk, c = i % Dk;
    const float here = gs[t * RS + c];
    ws[Traits::kQg + i] = __float2half_rn(exp2f(here) * qs[t * RS + c] * scale);
    ws[Traits::kKl + i] = __float2half_rn(exp2f(glast[c] - here) * ks[t * RS + c]);
  }
  if (tid < Dk) reinterpret_cast<float*>(chunk_work + Traits::kGlByte)[tid] = exp2f(glast[tid]);

  // Forward substitution, one column of [e^G * k | v] per thread: columns are independent.
  // Four partial sums per row keep the dependent chain short.
  const int col = tid;
  const bool key_side = col < Dk;
  __half* x_out = ws + (key_side ? Traits::kW + col : Traits::kU + col - Dk);
  float x[C];
#pragma unroll
  for (int t = 0; t < C; ++t) {
    const float y = key_side ? exp2f(gs[t * RS + col]) * ks[t * RS + col] : vs[t * RS + col - Dk];
    const float* a_row = as + t * PS;
    float part[4] = {};
#pragma unroll
    for (int j4 = 0; j4 < t; j4 += 4) {
      const float4 a4 = *reinterpret_cast<const float4*>(a_row + j4);
      part[0] = fmaf(a4.x, x[j4], part[0]);
      if (j4 + 1 < t) part[1] = fmaf(a4.y, x[j4 + 1], part[1]);
      if (j4 + 2 < t) part[2] = fmaf(a4.z, x[j4 + 2], part[2]);
      if (j4 + 3 < t) part[3] = fmaf(a4.w, x[j4 + 3], part[3]);
    }
    x[t] = betas[t] * (y - ((part[0] + part[1]) + (part[2] + part[3])));
    x_out[t * Dk] = __float2half_rn(x[t]);
  }
}

}  // namespace

cudaError_t LaunchPrepare(dim3 grid, cudaStream_t stream, const float* q, const float* k, const float* v,
                          const float* g, const float* beta, const KdaChunk* chunks, int64_t heads, float scale,
                          uint8_t* work) {
  const cudaError_t e = cudaFuncSetAttribute(KdaChunkPrepareKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Traits::kPrepareSmem));
  if (e != cudaSuccess) return e;
  KdaChunkPrepareKernel<<<grid, Traits::kThreads, Traits::kPrepareSmem, stream>>>(q, k, v, g, beta, chunks, heads,
                                                                                  scale, work);
  return cudaGetLastError();
}

}  // namespace kda_chunk

using kda_chunk::KdaChunk;
using kda_chunk::KdaRun;
using kda_chunk::Traits;

bool CudaBackend::KdaChunkedAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      const Tensor& beta, absl::Span<const SeqSlice> seqs,
                                      absl::Span<const KdaStateView> states, const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  if (dk != Traits::kDk) return false;
  // The kernels copy 16-byte pieces of q, k, v and g (views at odd offsets take the recurrence).
  for (const Tensor* t : {&q, &k, &v, &g}) {
    if (reinterpret_cast<uintptr_t>(DevPtr(*t)) % 16 != 0) return false;
  }
  // Chunks of every sequence, split into passes whose workspace fits the budget.
  const size_t chunk_bytes = static_cast<size_t>(heads) * Traits::kBytes;
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
  auto* work = static_cast<uint8_t*>(Scratch(kKdaWorkspaceSlot, most_chunks * chunk_bytes));

  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (size_t i = 0; i < passes.size(); ++i) {
    const auto* chunks = reinterpret_cast<const KdaChunk*>(device + chunk_at[i]);
    const auto* runs = reinterpret_cast<const KdaRun*>(device + run_at[i]);
    const dim3 prepare_grid(static_cast<unsigned>(passes[i].chunks.size()), static_cast<unsigned>(heads));
    CUDA_OK(kda_chunk::LaunchPrepare(prepare_grid, stream_, DevF32(q), DevF32(k), DevF32(v), DevF32(g), DevF32(beta),
                                     chunks, heads, scale, work));
    const dim3 state_grid(static_cast<unsigned>(heads * Traits::kColumnBlocks), static_cast<unsigned>(passes[i].runs.size()));
    CUDA_OK(kda_chunk::LaunchState(state_grid, stream_, chunks, runs, work, heads, DevF32(out)));
  }
  return true;
}

}  // namespace latentserve::kernels::cuda
